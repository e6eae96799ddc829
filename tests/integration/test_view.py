"""The Redis serving view through the real broker and a real Redis: it mirrors
the table, tracking goes on while Redis is down, and the view catches up
when Redis is back; an older state never overwrites a newer one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import redis

from models import Touchpoint, fold, load_map
from models.state import CustomerState
from stream.redis.view import ServingView
from stream.settings import Settings
from stream.tools.simulator import generate
from tests.integration.harness import (
    RedisOutage,
    WorkerProcess,
    make_settings,
    send_messages,
    start_ready_worker,
    stored_states,
    wait_for,
    wait_processed,
    worker_metric,
)

MAP = load_map()


def view_mismatches(s: Settings, states: dict[str, CustomerState]) -> list[str]:
    """Customers whose view hash differs from their stored state (stage, events)."""
    r = redis.Redis.from_url(s.redis_url, decode_responses=True)
    pipe = r.pipeline(transaction=False)
    ids = sorted(states)
    for cid in ids:
        pipe.hgetall(f"{s.view_prefix}{cid}")
    out = []
    for cid, h in zip(ids, pipe.execute(), strict=True):
        st = states[cid]
        if h.get("stage") != st.stage or h.get("events") != str(st.events):
            out.append(f"{cid}: view {h.get('stage')}/{h.get('events')}, table {st.stage}/{st.events}")
    return out


@pytest.mark.stack_fault
def test_the_view_mirrors_the_table_and_catches_up_after_a_redis_outage(
    spawn: list[WorkerProcess], tmp_path: Path
) -> None:
    s = make_settings(tmp_path, partitions=4, view_retry_s=0.5)
    worker = start_ready_worker(s, tmp_path, spawn)
    send_messages(s, generate(120, seed=41))
    wait_processed(s, [worker])
    states = stored_states(s)
    wait_for("the view to mirror the table", lambda: not view_mismatches(s, states), timeout=30)
    h = redis.Redis.from_url(s.redis_url, decode_responses=True)
    some = next(iter(states))
    ttl = h.ttl(f"{s.view_prefix}{some}")
    assert 0 < ttl <= s.view_ttl_s
    assert set(h.hgetall(f"{s.view_prefix}{some}")) >= {"stage", "last_event_at", "offset", "updated_at"}

    with RedisOutage():
        # Tracking goes on untouched: more events for the same customers are applied.
        send_messages(s, generate(120, seed=42))
        wait_processed(s, [worker])
        health = wait_for(
            "the worker to say the view waits for Redis",
            lambda: (g := worker.health()) and g["view"]["redis"] == "down" and g["view"]["pending"] and g,
            timeout=30,
        )
        assert worker_metric(worker, "journey_view_up") == 0
        assert worker_metric(worker, "journey_view_pending") == health["view"]["pending"]
    # Back (this Redis keeps no data across a restart): the view catches up
    # without a restart of the worker, the customers of before the outage too.
    wait_for("the view to catch up", lambda: not view_mismatches(s, stored_states(s)), timeout=60)
    assert len(stored_states(s)) == 240
    # Nothing left waiting once it drains (a clock reading may still put a
    # customer in the queue a moment after the catch-up: waited for, not raced).
    health = wait_for(
        "the worker to say Redis is back and nothing waits",
        lambda: (g := worker.health()) and g["view"]["redis"] == "up" and g["view"]["pending"] == 0 and g,
        timeout=30,
    )
    assert health["view"]["pending"] == 0
    assert worker_metric(worker, "journey_view_up") == 1
    assert worker_metric(worker, "journey_view_writes_total") >= len(states)


T0 = 1_790_000_000_000


def journey(cid: str, types: Iterable[str]) -> CustomerState:
    state = fold(MAP, [Touchpoint(f"{cid}-{i}", cid, t, "web", T0 + i) for i, t in enumerate(types)])[cid]
    assert state is not None
    return state


def test_an_older_state_never_overwrites_a_newer_one_and_marks_say_what_to_rewrite(
    tmp_path: Path,
) -> None:
    s = make_settings(tmp_path)
    cart = journey("v1", ["page_view", "add_to_cart"])
    bought = journey("v1", ["page_view", "add_to_cart", "purchase"])
    other = journey("v2", ["page_view"])
    older = journey("v5", ["page_view", "product_view"])
    store: dict[int, list[tuple[int, CustomerState]]] = {0: []}
    r = redis.Redis.from_url(s.redis_url, decode_responses=True)

    def new_view(max_pending: int = 100) -> ServingView:
        view = ServingView(
            s.redis_url,
            s.view_prefix,
            60,
            1.0,
            max_pending=max_pending,
            retry_s=0.1,
            clock=lambda: int(time.time() * 1000),
            scan=lambda p: iter(store[p]),
        )
        view.on_partition_recovered(0)
        return view

    def lose_everything() -> None:
        keys = r.keys(f"{s.view_prefix}*")
        if keys:
            r.delete(*keys)

    async def run() -> list[dict[str, Any]]:
        seen = []
        view = new_view()
        view.put(0, "v1", 20, bought)
        await view.flush()  # no mark yet: the (empty) store is rewritten, then v1
        seen.append(await view.read("v1"))
        view.put(0, "v1", 10, cart)  # late: a previous owner's write, say
        view.put(0, "v1", 15, None)  # an older erasure
        await view.flush()
        seen.append(await view.read("v1"))
        view.put(0, "v1", 25, None)  # erased after what the view has
        await view.flush()
        seen.append(await view.read("v1"))
        assert r.hget(s.view_prefix, "0") == "25"  # complete through offset 25
        await view.close()

        # A new owner: customers past the mark come from its store, older ones not.
        store[0] = [(24, older), (30, bought), (31, other)]
        view = new_view()
        await view.flush()
        seen += [await view.read("v1"), await view.read("v2"), await view.read("v5")]
        assert r.hget(s.view_prefix, "0") == "31"
        # Redis loses its data: the next check of the marks rewrites everything.
        lose_everything()
        view._checked_at = float("-inf")  # as after an outage, or MARK_CHECK_S later
        await view.flush()
        seen.append(await view.read("v5"))
        await view.close()

        # Past max_pending: dropped, then rewritten from the store past the mark.
        view = new_view(max_pending=1)
        await view.flush()
        store[0] = [(40, cart), (41, other)]
        view.put(0, "v1", 40, cart)
        view.put(0, "v2", 41, other)
        assert len(view) == 0 and view.resync == {0: 31}
        await view.flush()
        seen.append(await view.read("v1"))
        assert not view.resync and r.hget(s.view_prefix, "0") == "41"
        # A revoked partition's waiting entries go; writes for it are ignored.
        view.put(0, "v3", 50, other)
        view.on_partition_revoked(0)
        view.put(0, "v4", 51, other)
        assert len(view) == 0
        await view.close()
        return seen

    try:
        newer, late, erased, v1, v2, v5, v5_after_loss, overflowed = asyncio.run(run())
    finally:
        lose_everything()
    assert newer["stage"] == "purchase" and newer["offset"] == "20"
    assert late == newer
    assert erased == {}
    assert (v1["stage"], v1["offset"], v2["stage"], v2["offset"]) == ("purchase", "30", "awareness", "31")
    assert v5 == {}  # at 24, before the mark: the last owner had written (here: erased) it
    assert v5_after_loss["stage"] == "consideration" and v5_after_loss["offset"] == "24"
    assert overflowed["stage"] == "cart" and overflowed["offset"] == "40"


@pytest.mark.stack_fault
def test_the_view_equals_the_table_after_script_flushes_while_events_flow(
    spawn: list[WorkerProcess], tmp_path: Path
) -> None:
    """A Redis that forgets its scripts (a restart with persistence, a failover,
    SCRIPT FLUSH) gets the chunk sent again, not counted as written and lost."""
    import threading

    s = make_settings(tmp_path, partitions=4, view_retry_s=0.5)
    worker = start_ready_worker(s, tmp_path, spawn)
    r = redis.Redis.from_url(s.redis_url)
    sender = threading.Thread(target=send_messages, args=(s, generate(3000, seed=43), 1500.0))
    sender.start()
    flushes = 0
    while sender.is_alive():
        r.script_flush()
        flushes += 1
        time.sleep(0.05)
    sender.join()
    wait_processed(s, [worker])
    states = stored_states(s)
    assert flushes > 10
    wait_for("the view to equal the table", lambda: not view_mismatches(s, states), timeout=60)
