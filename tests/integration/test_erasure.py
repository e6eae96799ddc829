"""DELETE /customers/{id}: no trace left in the table (after a restart too),
in Redis, or in the live counts; later events start a new journey."""

from __future__ import annotations

import time
from pathlib import Path

import redis

from models.events import Touchpoint
from stream.tools.kafka import ensure_topics, read_topic, tracker_topics
from stream.tools.simulator import SimMessage
from tests.integration.harness import (
    WorkerProcess,
    make_settings,
    send_messages,
    start_ready_pair,
    start_ready_worker,
    topic_records,
    wait_for,
    wait_processed,
    worker_metric,
)

DEMO_MAP = Path(__file__).resolve().parents[2] / "deploy" / "local" / "demo-map.yaml"


def msg(cid: str, eid: str, etype: str, ago_s: float) -> SimMessage:
    ev = Touchpoint(eid, cid, etype, "web", int(time.time() * 1000 - ago_s * 1000))
    return SimMessage(cid.encode(), ev.to_json())


def test_erasure_leaves_no_trace_and_a_new_journey_can_start(
    spawn: list[WorkerProcess], tmp_path: Path
) -> None:
    s = make_settings(tmp_path, partitions=4, map_path=DEMO_MAP, store="rocksdb://")
    ensure_topics(s, tracker_topics(s))
    a, b = start_ready_pair(s, tmp_path, spawn)
    gone, kept = "erase-me", "keep-me"
    # An abandoned cart each: stalls and cart reminders put keys in Redis.
    send_messages(
        s,
        [
            msg(c, f"{c}-{i}", t, ago)
            for c in (gone, kept)
            for i, (t, ago) in enumerate([("page_view", 60), ("add_to_cart", 50)])
        ],
    )
    r = redis.Redis.from_url(s.redis_url)
    wait_for("the reminders' keys in Redis", lambda: r.keys(f"{s.redis_prefix}{{{gone}}}:*"), timeout=60)
    wait_processed(s, [a, b])

    def total(stage: str) -> float:
        return sum(worker_metric(w, "journey_customers", stage=stage) for w in (a, b))

    assert total("cart") == 2
    view = redis.Redis.from_url(s.redis_url, decode_responses=True)
    for c in (gone, kept):
        wait_for(f"{c} in the serving view", lambda c=c: view.hget(f"{s.view_prefix}{c}", "stage") == "cart")
    status, body = a.request("DELETE", f"/customers/{gone}", headers={"Content-Type": "application/json"})[:2]
    assert status == 202 and body["customer_id"] == gone and body["status"] == "accepted"

    wait_for(
        "the erasure", lambda: a.get(f"/customers/{gone}")[0] == 404 and b.get(f"/customers/{gone}")[0] == 404
    )
    assert a.get(f"/customers/{kept}")[0] == 200
    # The changelog's last word on the customer is a tombstone.
    last = [rec for rec in read_topic(s, s.changelog_topic) if rec.key == gone.encode()][-1]
    assert last.value is None
    # Redis: none of the customer's keys; the other customer's stay.
    wait_for("the Redis keys to go", lambda: not r.keys(f"{s.redis_prefix}{{{gone}}}:*"))
    assert r.keys(f"{s.redis_prefix}{{{kept}}}:*")
    # The serving view: the customer's hash goes, the other's stays.
    wait_for("the serving view to forget", lambda: not view.exists(f"{s.view_prefix}{gone}"))
    assert view.hget(f"{s.view_prefix}{kept}", "stage") == "cart"
    # Live counts: the customer is no longer counted.
    assert total("cart") == 1
    erased = topic_records(s, s.erasures_topic)
    assert [(e["type"], e["customer_id"], e["erasure_id"]) for e in erased] == [
        ("erased", gone, body["erasure_id"])
    ]

    # After a restart of both workers the customer is still gone.
    a.stop()
    b.stop()
    c = WorkerProcess(s, tmp_path / "worker-c.log", data_dir=s.data_dir / "worker-a").start()
    spawn.append(c)
    c.wait_ready()
    assert c.get(f"/customers/{gone}")[0] == 404
    assert c.get(f"/customers/{kept}")[0] == 200

    # A later event for the same id starts a new journey.
    send_messages(s, [msg(gone, f"{gone}-0", "page_view", 1)])  # even an id seen before
    status, again = wait_for("the new journey", lambda: (g := c.get(f"/customers/{gone}"))[0] == 200 and g)
    assert again["events"] == 1 and again["stage"] == "awareness" and len(again["stages"]) == 1
    key = f"{s.view_prefix}{gone}"
    wait_for("the new journey in the view", lambda: view.hget(key, "stage") == "awareness")
    assert view.hget(key, "events") == "1"


def test_glob_like_ids_erase_only_themselves(spawn: list[WorkerProcess], tmp_path: Path) -> None:
    """Ids that are glob patterns to Redis's SCAN MATCH (``*``, ``?``, ``[``,
    ``\\``) erase their own keys and leave every other customer's alone."""
    from urllib.parse import quote

    s = make_settings(tmp_path, partitions=2, map_path=DEMO_MAP)
    w = start_ready_worker(s, tmp_path, spawn)
    globs, kept = ["*", "?", "[", "\\", "kee*"], "keep-me"
    send_messages(
        s,
        [
            msg(c, f"{c}-{i}", t, ago)
            for c in [kept, *globs]
            for i, (t, ago) in enumerate([("page_view", 60), ("add_to_cart", 50)])
        ],
    )
    r = redis.Redis.from_url(s.redis_url)
    keys = f"{s.redis_prefix}{{{kept}}}:*"
    wait_for("the reminders' keys in Redis", lambda: len(r.keys(keys)) >= 3, timeout=60)
    wait_processed(s, [w])
    before = sorted(r.keys(keys))
    for g in globs:
        path = f"/customers/{quote(g, safe='')}"
        status = w.request("DELETE", path, headers={"Content-Type": "application/json"})[0]
        assert status == 202, g
        wait_for(f"the erasure of {g!r}", lambda path=path: w.get(path)[0] == 404)
    wait_processed(s, [w])
    # The Redis deletes follow the batch that applied the erasure: none owed any more.
    wait_for("the erasures' Redis deletes", lambda: w.get("/health")[1]["nudges"]["erasures_owed"] == 0)
    assert sorted(r.keys(keys)) == before
    assert w.get(f"/customers/{kept}")[0] == 200


def test_an_erasure_survives_a_sigkill_before_its_redis_deletes(
    spawn: list[WorkerProcess], tmp_path: Path
) -> None:
    """Worker a reaches no Redis (its URL is a port that accepts and never
    answers) when it applies the erasure, and is killed once the erasure is
    committed. Worker b, with the real Redis, finds the owed deletes in the
    table and does them: the gate's keys and the view's hash of the customer
    (written here as an earlier worker would have) go, another's stay."""
    import asyncio
    import socket

    from stream.redis.gate import ClaimRequest, NudgeGate

    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(64)
    s = make_settings(tmp_path, partitions=2, store="rocksdb://", redis_timeout_s=0.3)
    ensure_topics(s, tracker_topics(s))
    gone, kept = "kill-erase-me", "kill-keep-me"

    async def earlier_keys() -> None:
        gate = NudgeGate(s.redis_url, s.redis_prefix, 1.0, 86_400, ("cart_reminder",))
        now = int(time.time() * 1000)
        await gate.claim_many(
            [ClaimRequest(c, "cart_reminder", f"{c}-n1", now, 3600, 3, 86_400, False) for c in (gone, kept)]
        )
        await gate.close()

    asyncio.run(earlier_keys())
    r = redis.Redis.from_url(s.redis_url, decode_responses=True)
    for c in (gone, kept):
        r.hset(f"{s.view_prefix}{c}", mapping={"stage": "cart", "offset": "0"})
    before = {c: sorted(r.keys(f"{s.redis_prefix}{{{c}}}:*")) for c in (gone, kept)}
    assert len(before[gone]) == 4  # decision, cooldown, send window, the key set

    dead_redis = s.model_copy(update={"redis_url": f"redis://127.0.0.1:{blackhole.getsockname()[1]}/0"})
    a = WorkerProcess(dead_redis, tmp_path / "worker-a.log").start()
    spawn.append(a)
    a.wait_ready()
    send_messages(s, [msg(c, f"{c}-0", "page_view", 30) for c in (gone, kept)])
    wait_for("the customers applied", lambda: all(a.get(f"/customers/{c}")[0] == 200 for c in (gone, kept)))
    status = a.request("DELETE", f"/customers/{gone}", headers={"Content-Type": "application/json"})[0]
    assert status == 202
    wait_for("the erasure applied", lambda: a.get(f"/customers/{gone}")[0] == 404)
    wait_processed(s, [a])  # committed: nobody replays the erasure record
    a.kill()
    blackhole.close()
    assert sorted(r.keys(f"{s.redis_prefix}{{{gone}}}:*")) == before[gone]  # owed, not done

    b = WorkerProcess(s, tmp_path / "worker-b.log", data_dir=s.data_dir / "worker-b").start()
    spawn.append(b)
    b.wait_ready()
    wait_for(
        "the owed Redis deletes",
        lambda: not r.keys(f"{s.redis_prefix}{{{gone}}}:*") and not r.exists(f"{s.view_prefix}{gone}"),
        timeout=60,
    )
    assert sorted(r.keys(f"{s.redis_prefix}{{{kept}}}:*")) == before[kept]
    assert r.hget(f"{s.view_prefix}{kept}", "stage") is not None
    wait_for("the ledger emptied", lambda: (b.health() or {}).get("nudges", {}).get("erasures_owed") == 0)
