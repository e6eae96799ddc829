"""Identity stitching through the real broker: people who browse anonymously
on two devices and then log in end as one customer each, across partitions,
with duplicates and a SIGKILL in the middle; the guards refuse and audit;
erasure takes every id."""

from __future__ import annotations

import itertools
import random
import time
from collections import Counter
from pathlib import Path

import redis

from models import load_map
from models.events import Touchpoint
from stream.tools.kafka import ensure_topics, tracker_topics
from stream.tools.simulator import SimMessage
from tests.integration.harness import (
    WorkerProcess,
    dead_letters,
    fold_topic,
    make_settings,
    send_messages,
    start_ready_pair,
    stored_states,
    topic_records,
    wait_for,
    wait_processed,
    worker_metric,
)

DEMO_MAP = Path(__file__).resolve().parents[2] / "deploy" / "local" / "demo-map.yaml"
PEOPLE = 16
_ids = itertools.count()


def msg(cid: str, etype: str, ago_s: float, **props: object) -> SimMessage:
    ev = Touchpoint(
        f"{cid}-e{next(_ids)}", cid, etype, "web", int(time.time() * 1000 - ago_s * 1000), props or None
    )
    return SimMessage(cid.encode(), ev.to_json())


def test_people_on_two_devices_are_stitched_once_through_a_sigkill(
    spawn: list[WorkerProcess], tmp_path: Path
) -> None:
    jmap = load_map(DEMO_MAP)
    s = make_settings(tmp_path, partitions=4, map_path=DEMO_MAP, store="rocksdb://")
    ensure_topics(s, tracker_topics(s))
    a, b = start_ready_pair(s, tmp_path, spawn)

    # A random interleaving each run (the seed is in every failure message):
    # how much each person browses on each device, the order of everyone's
    # events across partitions, which are sent twice, and when the SIGKILL
    # comes. Each person's own events keep their order.
    seed = random.randrange(1_000_000)
    rng = random.Random(seed)

    def interleave(per_person: list[list[SimMessage]]) -> list[SimMessage]:
        queues = [list(q) for q in per_person if q]
        out: list[SimMessage] = []
        while queues:
            q = rng.choice(queues)
            out.append(q.pop(0))
            if not q:
                queues.remove(q)
        return out + rng.sample(out, len(out) // 10)  # a tenth sent twice

    # Phase 1: every person browses on two devices; device one abandons a
    # cart a minute ago (stalled, a cart reminder); the known id did too.
    people: list[list[SimMessage]] = []
    sent_events: dict[int, set[bytes]] = {}
    browse = [("page_view", 300), ("product_view", 200), ("search", 240), ("page_view", 250)]
    for i in range(PEOPLE):
        dev1 = [msg(f"dev1-{i}", t, ago) for t, ago in rng.sample(browse, rng.randint(1, 3))]
        dev2 = [msg(f"dev2-{i}", t, ago) for t, ago in rng.sample(browse, rng.randint(0, 3))]
        mine = [*dev1, msg(f"dev1-{i}", "add_to_cart", 60), *dev2, msg(f"user-{i}", "add_to_cart", 70)]
        people.append(mine)
        sent_events[i] = {m.value for m in mine}
    send_messages(s, interleave(people))
    wait_processed(s, [a, b])
    wait_for("the cart reminders", lambda: len(_nudges(s)) >= PEOPLE, timeout=90)

    # Phase 2: each logs in (identify with device one's id), then buys on
    # device two's session (the link on the event); one worker is killed
    # while this is under way and comes back on its own store.
    logins = [
        [
            msg(f"user-{i}", "identify", 30, previous_id=f"dev1-{i}"),
            msg(f"user-{i}", "purchase", 20, anonymous_id=f"dev2-{i}"),
        ]
        for i in range(PEOPLE)
    ]
    for i, pair in enumerate(logins):
        sent_events[i] |= {m.value for m in pair}
    second = interleave(logins)
    cut = rng.randrange(len(second) // 4, 3 * len(second) // 4)
    send_messages(s, second[:cut])
    a.kill()  # mid-login: links and merges in flight
    send_messages(s, second[cut:])
    a2 = WorkerProcess(s, tmp_path / "worker-a2.log", data_dir=s.data_dir / "worker-a").start()
    spawn.append(a2)
    a2.wait_ready()
    wait_for(
        "every person merged",
        lambda: all(len(st.ids) == 2 for c, st in stored_states(s).items() if c.startswith("user-")),
        timeout=120,
    )

    # Phase 3: device one comes back after the merge: re-keyed to the person.
    reviews = [msg(f"dev1-{i}", "review_written", 5) for i in range(PEOPLE)]
    for i, m in enumerate(reviews):
        sent_events[i].add(m.value)
    send_messages(s, reviews)
    workers = [a2, b]
    wait_processed(s, workers)
    wait_for(
        "the re-keyed reviews",
        lambda: all(
            st.type_counts.get("review_written") == 1
            for c, st in stored_states(s).items()
            if c.startswith("user-")
        ),
        timeout=90,
    )
    wait_processed(s, workers)

    states = stored_states(s)
    # The table is the plain fold of the topic, links and merges included.
    assert states == fold_topic(s, jmap), f"seed {seed}"
    for i in range(PEOPLE):
        person = states[f"user-{i}"]
        assert sorted(person.ids) == [f"dev1-{i}", f"dev2-{i}"] and person.known, f"seed {seed}"
        # every distinct event of the person's three ids, each once (duplicates and the kill aside)
        assert person.events == len(sent_events[i]), (seed, i, person)
        assert person.stage == "loyalty", f"seed {seed}"  # the review after a purchase (the map's moves)
        assert person.first_touch_at == min(states[f"user-{i}"].stages.values())
        for dev in ("dev1", "dev2"):
            assert states[f"{dev}-{i}"].merged_into == f"user-{i}"

    # Counted once: the gauges hold the people, no device.
    def gauge(stage: str) -> float:
        return sum(worker_metric(w, "journey_customers", stage=stage) for w in workers)

    assert sum(gauge(st.name) for st in jmap.stages) == PEOPLE
    assert gauge("loyalty") == PEOPLE

    # The audit: one merge record per anonymous id (ids repeat only as replays).
    merged = {r["merge_id"]: r for r in topic_records(s, s.identities_topic) if r["type"] == "merged"}
    assert len(merged) == 2 * PEOPLE
    assert {(r["anonymous_id"][:4], r["known_stage"] is not None) for r in merged.values()} <= {
        ("dev1", True),
        ("dev2", True),
    }

    # No nudge doubled: every cart reminder once, one per id at most, none
    # for a person after the merge (the open stall went with it).
    nudges = _nudges(s)
    assert len({n["nudge_id"] for n in nudges}) == len({(n["nudge_id"]) for n in nudges})
    per_customer = Counter((n["customer_id"], n["kind"]) for n in {n["nudge_id"]: n for n in nudges}.values())
    assert max(per_customer.values()) == 1

    # GET on a device answers with the person, and says so.
    body = wait_for("b's answer", lambda: (g := b.get("/customers/dev2-3"))[0] == 200 and g[1])
    assert body["customer_id"] == "user-3" and body["merged_from"] == "dev2-3"
    # from the other worker too (forwarded to the owner; 503 while a rebalance settles)
    other = wait_for("a2's answer", lambda: (g := a2.get("/customers/dev2-3"))[0] == 200 and g[1])
    assert other["customer_id"] == "user-3" and other["merged_from"] == "dev2-3"


def test_known_into_known_is_refused_and_audited_and_erasure_takes_every_id(
    spawn: list[WorkerProcess], tmp_path: Path
) -> None:
    s = make_settings(tmp_path, partitions=4, map_path=DEMO_MAP)
    ensure_topics(s, tracker_topics(s))
    a, b = start_ready_pair(s, tmp_path, spawn)
    send_messages(
        s,
        [
            msg("known-1", "identify", 100),
            msg("known-2", "page_view", 100),
            msg("anon-9", "add_to_cart", 90),
        ],
    )
    wait_processed(s, [a, b])
    send_messages(
        s,
        [
            msg("known-2", "identify", 50, previous_id="known-1"),  # refused: both known
            msg("known-2", "search", 40, anonymous_id="anon-9"),  # merged
        ],
    )
    wait_for(
        "the refusal audited",
        lambda: any(r["type"] == "refused" for r in topic_records(s, s.identities_topic)),
    )
    wait_processed(s, [a, b])
    refusals = [r for r in topic_records(s, s.identities_topic) if r["type"] == "refused"]
    (refused,) = refusals
    assert refused["anonymous_id"] == "known-1" and refused["known_id"] == "known-2"
    dead, _ = dead_letters(s)
    assert [reason for (_, reason) in dead] == ["merge_refused"]
    states = wait_for(
        "the merge", lambda: (st := stored_states(s)) and st["known-2"].ids == ("anon-9",) and st
    )
    assert states["known-1"].merged_into is None and states["known-1"].stage == "awareness"
    assert states["known-2"].stage == "cart"

    # Erasing the person erases every id merged into it: table, view, API.
    view = redis.Redis.from_url(s.redis_url, decode_responses=True)
    status = a.request("DELETE", "/customers/known-2", headers={"Content-Type": "application/json"})[0]
    assert status == 202
    wait_for(
        "both ids gone",
        lambda: all(w.get(f"/customers/{c}")[0] == 404 for w in (a, b) for c in ("known-2", "anon-9")),
    )
    wait_processed(s, [a, b])
    states = stored_states(s)
    assert "known-2" not in states and "anon-9" not in states and "known-1" in states
    assert not view.exists(f"{s.view_prefix}known-2") and not view.exists(f"{s.view_prefix}anon-9")
    erased = sorted(r["customer_id"] for r in topic_records(s, s.erasures_topic))
    assert erased == ["anon-9", "known-2"]


def _nudges(s: object) -> list[dict[str, object]]:
    from stream.settings import Settings

    assert isinstance(s, Settings)
    return [*topic_records(s, s.nudges_topic), *topic_records(s, s.held_out_topic)]
