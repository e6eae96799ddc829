"""The agent's batch logic without a broker: validation, replay skipping, folding."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from agents import touchpoints as agent
from models import fold, load_map, parse_touchpoint
from models.events import Touchpoint
from stream import app as journey
from stream.partitioning import key_partition

N = journey.settings.partitions
MAP = load_map()


def event(
    cid: str, eid: str, etype: str, offset: int, *, partition: int | None = None, key: Any = ...
) -> Any:
    value = orjson.dumps(
        {
            "event_id": eid,
            "customer_id": cid,
            "type": etype,
            "channel": "web",
            "timestamp": 1_790_000_000_000 + offset,
        }
    )
    k = cid.encode() if key is ... else key
    p = key_partition(cid.encode(), N) if partition is None else partition
    return SimpleNamespace(
        message=SimpleNamespace(topic="touchpoints", partition=p, offset=offset, key=k, value=value)
    )


def test_plan_batch_folds_each_customer_and_dead_letters_the_rest() -> None:
    wrong = (key_partition(b"c2", N) + 1) % N
    batch = [
        event("c1", "a", "page_view", 0),
        event("c2", "b", "add_to_cart", 1),
        event("c1", "c", "add_to_cart", 2),
        event("c1", "a", "page_view", 3),  # same event id again: a duplicate
        event("c2", "d", "purchase", 4, partition=wrong),
        event("c3", "e", "page_view", 5, key=None),
        SimpleNamespace(
            message=SimpleNamespace(topic="touchpoints", partition=0, offset=6, key=b"x", value=b"{")
        ),
    ]
    out = agent.plan_batch(batch, lambda key: None)
    assert sorted((d.reason, d.event.message.offset) for d in out.dead) == [
        ("key_mismatch", 5),
        ("not_json", 6),
        ("wrong_partition", 4),
    ]
    assert out.folds["c1"].state is not None and out.folds["c1"].state.stage == "cart"
    assert (out.folds["c1"].applied, out.folds["c1"].duplicates) == (2, 1)
    assert [t.to_stage for t in out.folds["c2"].transitions] == ["cart"]
    assert out.last_event["c1"].message.offset == 3
    dl = out.dead[0]
    assert (
        dict(dl.headers())["journey.dlq.source"]
        == f"touchpoints:{dl.event.message.partition}:{dl.event.message.offset}".encode()
    )


def test_records_at_or_below_the_stored_offset_are_replays() -> None:
    first = [event("c1", "a", "page_view", 10), event("c1", "b", "product_view", 11)]
    planned = agent.plan_batch(first, lambda key: None)
    state = planned.folds["c1"].state
    assert state is not None
    stored = {b"c1": journey.encode_stored(11, state)}
    replay = [*first, event("c1", "c", "add_to_cart", 12)]
    out = agent.plan_batch(replay, stored.get)
    assert out.replayed == 2
    assert out.folds["c1"].applied == 1
    events = [parse_touchpoint(e.message.value, MAP) for e in replay]
    assert out.folds["c1"].state == fold(MAP, [e for e in events if isinstance(e, Touchpoint)])["c1"]


def test_a_core_failure_dead_letters_only_that_customers_events(monkeypatch: pytest.MonkeyPatch) -> None:
    real = agent.fold_batch

    def flaky(jmap: Any, states: Any, events: Any) -> Any:
        events = list(events)
        if any(e.customer_id == "bad" for e in events):
            raise ValueError("boom")
        return real(jmap, states, events)

    monkeypatch.setattr(agent, "fold_batch", flaky)
    out = agent.plan_batch(
        [event("ok", "1", "page_view", 0), event("bad", "2", "page_view", 1)], lambda k: None
    )
    assert [(d.reason, d.event.message.offset) for d in out.dead] == [("processing_error", 1)]
    assert "boom" in out.dead[0].detail
    assert set(out.folds) == {"ok"} and "bad" not in out.last_event


def test_a_cancelled_batch_is_finished_before_the_agent_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    finished: list[bool] = []

    async def slow(events: Any) -> None:
        await asyncio.sleep(0.2)
        finished.append(True)

    monkeypatch.setattr(agent, "process_batch", slow)

    async def scenario() -> None:
        task = asyncio.ensure_future(agent.run_to_completion([]))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert finished == [True]


def test_a_failed_batch_is_fatal_and_never_acked(monkeypatch: pytest.MonkeyPatch) -> None:
    fatal: list[BaseException] = []

    async def broken(events: Any) -> None:
        raise ConnectionError("broker gone")

    monkeypatch.setattr(agent, "process_batch", broken)
    monkeypatch.setattr(agent, "on_fatal", fatal.append)
    with pytest.raises(ConnectionError):
        asyncio.run(agent.run_to_completion([]))
    assert len(fatal) == 1 and isinstance(fatal[0], ConnectionError)


def test_a_flood_of_dead_letters_is_logged_in_summary(monkeypatch: pytest.MonkeyPatch, caplog: Any) -> None:
    sent: list[tuple[str, int]] = []

    class Batches:
        def __init__(self, producer: Any) -> None:
            pass

        def add(self, topic: str, partition: int, *rest: Any) -> None:
            sent.append((topic, partition))

        async def send(self) -> dict[tuple[str, int], int]:
            return {}

    monkeypatch.setattr(agent, "PartitionBatches", Batches)
    monkeypatch.setattr(agent, "aiokafka_producer", lambda app: None)
    garbage = [
        SimpleNamespace(
            message=SimpleNamespace(topic="touchpoints", partition=1, offset=i, key=b"k", value=b"?")
        )
        for i in range(50)
    ]
    result = agent.plan_batch(garbage, lambda key: None)
    with caplog.at_level("WARNING", logger=agent.__name__):
        asyncio.run(agent.publish_and_store(result))
    assert len(sent) == 50  # every one goes to the DLQ
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == agent.LOGGED_DEAD_LETTERS + 1
    assert lines[0].startswith("dead letter not_json from touchpoints[1]@0")
    assert lines[-1] == "30 more dead letters in this batch: {'not_json': 30}"
