"""The nudge outbox under pressure: Redis hangs through a stall burst three
times the outbox's bound. Nothing is evicted: the overflow stays in the
table, the worker says it is unready, and once Redis answers every nudge is
decided exactly once and none is dropped."""

from __future__ import annotations

import os
import time
from pathlib import Path

import orjson
import pytest
import redis

from models.events import Touchpoint
from stream.tools.kafka import read_topic
from stream.tools.simulator import SimMessage
from tests.integration.harness import (
    RedisHang,
    WorkerProcess,
    make_settings,
    send_messages,
    start_ready_worker,
    wait_for,
    worker_metric,
)

DEMO_MAP = Path(__file__).resolve().parents[2] / "deploy" / "local" / "demo-map.yaml"
BOUND = 40
# 60 s as the issue asks under JOURNEY_TEST_LONG (bench/soak.sh); 10 s in make test.
HANG_S = 60.0 if os.environ.get("JOURNEY_TEST_LONG") else 10.0


@pytest.mark.stack_fault
def test_a_stall_burst_past_the_outbox_bound_while_redis_hangs_loses_and_doubles_nothing(
    spawn: list[WorkerProcess], tmp_path: Path
) -> None:
    # The demo map with an outcome window just past the hang, so the outcomes
    # come within the test (a window that closes first leaves its nudge
    # undelivered: no outcome, and a rescan no longer puts it back).
    text = DEMO_MAP.read_text()
    short = text.replace("cooldown: 10m, window: 5m}", f"cooldown: 10m, window: {int(HANG_S) + 15}s}}")
    assert short != text
    map_path = tmp_path / "map.yaml"
    map_path.write_text(short)
    s = make_settings(
        tmp_path, partitions=2, map_path=map_path, nudge_outbox_max=BOUND, redis_timeout_s=0.3, view_ttl_s=0
    )
    w = start_ready_worker(s, tmp_path, spawn)
    customers = [f"burst-{i}" for i in range(3 * BOUND)]
    now = int(time.time() * 1000)
    with RedisHang():
        hung_at = time.monotonic()
        # An abandoned cart each, older than the map's 20 s stall: all due at once.
        send_messages(
            s,
            [
                SimMessage(c.encode(), Touchpoint(f"{c}-{i}", c, t, "web", now - ago).to_json())
                for c in customers
                for i, (t, ago) in enumerate([("page_view", 60_000), ("add_to_cart", 50_000)])
            ],
        )
        wait_for(
            "the outbox to spill",
            lambda: worker_metric(w, "journey_nudge_outbox_spills_total") > 0,
            timeout=60,
        )
        health = w.health() or {}
        assert health.get("ready") is False and health.get("unready_because"), health
        assert health["nudges"]["waiting"] <= BOUND
        time.sleep(max(0.0, HANG_S - (time.monotonic() - hung_at)))
    # Redis answers again: every cart reminder is decided, each once.
    r = redis.Redis.from_url(s.redis_url, decode_responses=True)

    def decided() -> dict[str, str]:
        out = {}
        for c in customers:
            keys = r.keys(f"{s.redis_prefix}{{{c}}}:nudge:*")
            if len(keys) == 1:
                out[c] = str(r.get(keys[0]))
        return out

    got = wait_for("every nudge decided", lambda: len(d := decided()) == len(customers) and d, timeout=120)
    assert all(v.startswith("done:") for v in got.values()), got
    assert worker_metric(w, "journey_nudge_outbox_spills_total") > 0
    # On the topics: one distinct nudge per customer (repeats share the id).
    records = [
        rec.value
        for topic in (s.nudges_topic, s.held_out_topic)
        for rec in read_topic(s, topic)
        if rec.value is not None
    ]
    by_customer: dict[str, set[str]] = {}
    for raw in records:
        body = orjson.loads(raw)
        by_customer.setdefault(body["customer_id"], set()).add(body["nudge_id"])
    assert set(by_customer) == set(customers)
    assert all(len(ids) == 1 for ids in by_customer.values())
    held_out = {c for c, v in got.items() if v == "done:held_out"}
    in_held_topic = {
        orjson.loads(rec.value)["customer_id"] for rec in read_topic(s, s.held_out_topic) if rec.value
    }
    assert held_out == in_held_topic
    wait_for("ready again", lambda: (w.health() or {}).get("ready") is True, timeout=60)
    # Each nudge that went out gets one outcome (its delivery record reached
    # the customer's state), and no other nudge does.
    sent_ids = {i for ids in by_customer.values() for i in ids}

    def outcomes() -> dict[str, int]:
        out: dict[str, int] = {}
        for rec in read_topic(s, s.outcomes_topic):
            if rec.value:
                nid = orjson.loads(rec.value)["nudge_id"]
                out[nid] = out.get(nid, 0) + 1
        return out

    got_outcomes = wait_for("the outcomes", lambda: set(o := outcomes()) == sent_ids and o, timeout=90)
    assert set(got_outcomes) <= sent_ids
