"""Stalls, drift and nudges through the real broker and a real Redis.

The worker runs the demo map (a cart stalls after 20 s). Event times are set
in the past, so deadlines are already due when the events arrive (the clock
policy's backfill rule): no test sleeps through a threshold.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from models import load_map
from models.events import Touchpoint
from models.nudges import held_out
from stream.tools.kafka import ensure_topics, tracker_topics
from stream.tools.simulator import SimMessage
from tests.integration.harness import (
    RedisOutage,
    WorkerProcess,
    fold_topic,
    make_settings,
    send_messages,
    stored_states,
    topic_records,
    wait_for,
    wait_processed,
    worker_metric,
)

DEMO_MAP_PATH = Path(__file__).resolve().parents[2] / "deploy" / "local" / "demo-map.yaml"
DEMO = load_map(DEMO_MAP_PATH)
S = 1000
_ids = itertools.count()


def customer(prefix: str, *, in_holdout: bool = False) -> str:
    return next(c for i in itertools.count() if held_out(c := f"{prefix}-{i}", 0.10) == in_holdout)


def msg(cid: str, etype: str, ago_s: float, **props: Any) -> SimMessage:
    ev = Touchpoint(
        f"{cid}-e{next(_ids)}", cid, etype, "web", int(time.time() * 1000 - ago_s * S), props or None
    )
    return SimMessage(cid.encode(), ev.to_json())


def by_customer(records: list[dict[str, Any]], cid: str, **match: Any) -> list[dict[str, Any]]:
    return [r for r in records if r["customer_id"] == cid and all(r.get(k) == v for k, v in match.items())]


def test_stalls_nudges_and_drift_end_to_end(spawn: list[WorkerProcess], tmp_path: Path) -> None:
    settings = make_settings(tmp_path, map_path=DEMO_MAP_PATH, partitions=2)
    ensure_topics(settings, tracker_topics(settings))
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    spawn.append(worker)
    worker.wait_ready()

    abandoned = customer("abandoned")
    buyer = customer("buyer")
    twice = customer("twice")
    holdout = customer("holdout", in_holdout=True)
    risky = customer("risky")
    loyal = customer("loyal")
    send_messages(
        settings,
        [
            msg(abandoned, "page_view", 60),
            msg(abandoned, "add_to_cart", 50),  # due 30 s ago
            msg(buyer, "add_to_cart", 10),
            msg(buyer, "purchase", 5),  # bought before the 20 s threshold
            msg(twice, "add_to_cart", 40),
            msg(holdout, "add_to_cart", 40),
            # Bought, then complained, returned, rated low: at risk. Last seen
            # 7 minutes ago, past the demo map's 6 minutes: defected.
            msg(risky, "purchase", 8 * 60, order_value=30),
            msg(risky, "complaint", 7 * 60 + 30),
            msg(risky, "return_requested", 7 * 60 + 20),
            msg(risky, "feedback_submitted", 7 * 60, score=2),
            # A repeat buyer who refers a friend: loyalty.
            msg(loyal, "purchase", 50),
            msg(loyal, "referral_sent", 45),
            msg(loyal, "purchase", 40, order_value=120),
        ],
    )

    def stalls() -> list[dict[str, Any]]:
        return topic_records(settings, settings.stalls_topic)

    wait_for("stalls of the abandoned carts", lambda: len(by_customer(stalls(), abandoned)) >= 1)
    nudges = wait_for(
        "the cart reminders",
        lambda: (
            (n := topic_records(settings, settings.nudges_topic))
            and by_customer(n, abandoned)
            and by_customer(n, twice)
            and n
        ),
    )

    # Exactly one stall and one cart reminder for the abandoned cart.
    stall = by_customer(stalls(), abandoned, type="stall")
    assert len(stall) == 1 and stall[0]["stage"] == "cart" and stall[0]["threshold_seconds"] == 20
    reminder = by_customer(nudges, abandoned)
    assert len(reminder) == 1 and reminder[0]["kind"] == "cart_reminder"
    assert reminder[0]["reason"]["episode_id"] == stall[0]["episode_id"]
    # The buyer: neither.
    assert by_customer(stalls(), buyer) == [] and by_customer(nudges, buyer) == []

    # A second cart stall inside the cooldown: a stall, but no second reminder.
    send_messages(settings, [msg(twice, "purchase", 30), msg(twice, "add_to_cart", 25)])
    wait_for("the second stall", lambda: len(by_customer(stalls(), twice, type="stall")) == 2)
    wait_for(
        "the capped reminder counted",
        lambda: worker_metric(worker, "journey_nudges_total", kind="cart_reminder", outcome="capped") >= 1,
    )
    assert len(by_customer(topic_records(settings, settings.nudges_topic), twice)) == 1

    # Held out: recorded on the held-out topic, never on nudges.
    held = wait_for(
        "the held-out record", lambda: by_customer(topic_records(settings, settings.held_out_topic), holdout)
    )
    assert len(held) == 1 and held[0]["held_out"] is True
    assert by_customer(topic_records(settings, settings.nudges_topic), holdout) == []

    # At risk, then defected; the win-back offer went out.
    drift = wait_for(
        "the churn risk", lambda: by_customer(topic_records(settings, settings.drift_topic), risky)
    )
    assert len(drift) == 1 and drift[0]["score"] <= -30
    assert [s["signal"] for s in drift[0]["signals"]] == ["complaint", "return", "low_feedback"]
    assert by_customer(topic_records(settings, settings.nudges_topic), risky, kind="win_back")

    def stage_of(cid: str) -> str | None:
        status, body = worker.get(f"/customers/{cid}")
        return body["stage"] if status == 200 else None

    wait_for("the defection", lambda: stage_of(risky) == "defected")
    _, body = worker.get(f"/customers/{risky}")
    assert body["drift"]["at_risk"] is True and body["drift"]["score"] <= -30
    assert [s["signal"] for s in body["drift"]["signals"]][:3] == ["complaint", "return", "low_feedback"]

    # The repeat buyer with a referral is loyal, with a review request.
    assert stage_of(loyal) == "loyalty"
    wait_for(
        "the review request",
        lambda: by_customer(topic_records(settings, settings.nudges_topic), loyal, kind="review_request"),
    )

    # The table is the plain fold of the topic, clock records included.
    wait_processed(settings, [worker])
    assert stored_states(settings) == fold_topic(settings, DEMO)
    assert worker_metric(worker, "journey_stalls_total", stage="cart") >= 4
    assert worker_metric(worker, "journey_churn_risk_total") == 1
    health = worker.health()
    assert health is not None and health["nudges"]["redis"] == "up"
    # Nothing left waiting, nothing doubled.
    all_nudges = topic_records(settings, settings.nudges_topic)
    ids = [n["nudge_id"] for n in all_nudges]
    assert len(ids) == len(set(ids)), orjson.dumps(all_nudges)


def abandoned_carts(prefix: str, n: int, ago_s: float = 45) -> tuple[list[str], list[SimMessage]]:
    cids = [f"{prefix}-{i}" for i in range(n)]
    return cids, [msg(c, "add_to_cart", ago_s) for c in cids]


def per_customer_ids(records: list[dict[str, Any]], field: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for r in records:
        out.setdefault(r["customer_id"], set()).add(r[field])
    return out


def test_a_sigkill_during_a_burst_of_due_stalls_repeats_and_loses_none(
    spawn: list[WorkerProcess], tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, map_path=DEMO_MAP_PATH, partitions=2, store="rocksdb://")
    ensure_topics(settings, tracker_topics(settings))
    first = WorkerProcess(settings, tmp_path / "worker-1.log").start()
    spawn.append(first)
    first.wait_ready()
    cids, messages = abandoned_carts("burst", 3000)
    send_messages(settings, messages)
    # Kill it once stalls are coming out, mid-burst.
    wait_for("the first stalls", lambda: topic_records(settings, settings.stalls_topic), every=0.1)
    first.kill()
    second = WorkerProcess(
        settings, tmp_path / "worker-2.log", data_dir=settings.data_dir / "worker-1"
    ).start()
    spawn.append(second)
    second.wait_ready()

    def all_stalled() -> dict[str, set[str]] | None:
        got = per_customer_ids(by_type(topic_records(settings, settings.stalls_topic), "stall"), "episode_id")
        return got if len(got) == len(cids) else None

    episodes = wait_for("a stall for every cart", all_stalled, timeout=120)
    assert all(len(ids) == 1 for ids in episodes.values())  # one episode each, repeats share its id
    wait_for(
        "every nudge decided",
        lambda: (
            len(topic_records(settings, settings.nudges_topic))
            + len(topic_records(settings, settings.held_out_topic))
            >= len(cids)
        ),
        timeout=120,
    )
    nudged = per_customer_ids(topic_records(settings, settings.nudges_topic), "nudge_id")
    held = per_customer_ids(topic_records(settings, settings.held_out_topic), "nudge_id")
    assert all(len(ids) == 1 for ids in [*nudged.values(), *held.values()])  # at most one each, by id
    assert set(nudged) | set(held) == set(cids) and not set(nudged) & set(held)
    assert {c for c in cids if held_out(c, 0.10)} == set(held)
    wait_processed(settings, [second])
    assert stored_states(settings) == fold_topic(settings, DEMO)


def by_type(records: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get("type") == kind]


@pytest.mark.stack_fault
def test_redis_down_holds_nudges_and_tracking_goes_on(spawn: list[WorkerProcess], tmp_path: Path) -> None:
    settings = make_settings(tmp_path, map_path=DEMO_MAP_PATH, partitions=2)
    ensure_topics(settings, tracker_topics(settings))
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    spawn.append(worker)
    worker.wait_ready()
    cids, messages = abandoned_carts("outage", 200)
    with RedisOutage():
        send_messages(settings, messages)
        # Tracking goes on: every cart stalls while Redis is away.
        wait_for(
            "the stalls",
            lambda: len(by_type(topic_records(settings, settings.stalls_topic), "stall")) == len(cids),
        )
        health = wait_for(
            "the worker to say Redis is down",
            lambda: (h := worker.health()) and h["nudges"]["redis"] == "down" and h,
        )
        assert health["nudges"]["waiting"] > 0
        assert worker_metric(worker, "journey_nudge_gate_up") == 0
        assert topic_records(settings, settings.nudges_topic) == []
    # Back: every nudge goes out once, without a restart.
    wait_for(
        "the nudges after Redis came back",
        lambda: (
            len(topic_records(settings, settings.nudges_topic))
            + len(topic_records(settings, settings.held_out_topic))
            == len(cids)
        ),
        timeout=60,
    )
    nudged = per_customer_ids(topic_records(settings, settings.nudges_topic), "nudge_id")
    held = per_customer_ids(topic_records(settings, settings.held_out_topic), "nudge_id")
    assert set(nudged) | set(held) == set(cids)
    assert all(len(ids) == 1 for ids in [*nudged.values(), *held.values()])
    assert worker_metric(worker, "journey_nudge_gate_up") == 1
    health = worker.health()
    assert health is not None and health["nudges"] == {**health["nudges"], "redis": "up", "waiting": 0}
