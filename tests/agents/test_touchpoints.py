"""The touchpoints agent, built from fakes passed to its constructor: no broker, no Redis, no patching."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from agents import touchpoints as agent
from agents.erasures import ErasureLedger
from agents.nudges import NudgeDispatcher
from agents.touchpoints import TouchpointsAgent
from models import load_map
from models.effects import deadline_of
from models.events import ERASE_HEADER, Erase
from stream.engine.codec import decode_stored
from stream.engine.deadlines import DeadlineIndex
from stream.engine.lifecycle import PartitionLifecycle
from stream.engine.metrics import TrackerMetrics
from stream.engine.pipeline import Fetch
from stream.engine.stage_counts import StageCounts
from stream.engine.state_cache import StateCache
from stream.settings import Settings
from tests.agents.test_plan import N, Rec, event

MAP = load_map()
NOW = 1_790_000_000_000 + 10_000


class Acked:
    def __init__(self, last: dict[tuple[str, int], int]) -> None:
        self.last = last

    async def acked(self) -> dict[tuple[str, int], int]:
        return self.last


class Broker:
    """What the agent produces, by topic; each batch acked at once, offsets counted per partition."""

    def __init__(self) -> None:
        self.records: list[tuple[str, int, bytes | None, bytes | None]] = []
        self.ends: dict[tuple[str, int], int] = {}

    def batches(self) -> Any:
        broker = self

        class Batches:
            def __init__(self) -> None:
                self.added: list[tuple[str, int, bytes | None, bytes | None]] = []

            def add(self, topic: str, partition: int, key: Any, value: Any, *rest: Any) -> None:
                self.added.append((topic, partition, key, value))

            async def start(self) -> Acked:
                last = {}
                for topic, partition, key, value in self.added:
                    broker.records.append((topic, partition, key, value))
                    end = broker.ends[(topic, partition)] = broker.ends.get((topic, partition), -1) + 1
                    last[(topic, partition)] = end
                return Acked(last)

            async def send(self) -> dict[tuple[str, int], int]:
                return await (await self.start()).acked()

        return Batches()

    def topic(self, name: str) -> list[tuple[int, bytes | None, bytes | None]]:
        return [(p, k, v) for t, p, k, v in self.records if t == name]


class Store:
    """The table's store: a dict per partition, and the changelog offset written with it."""

    def __init__(self) -> None:
        self.data: dict[int, dict[bytes, bytes]] = {}
        self.offsets: dict[int, int | None] = {}

    def get(self, partition: int, key: bytes) -> bytes | None:
        return self.data.get(partition, {}).get(key)

    def write(self, partition: int, items: Any, changelog_offset: int | None) -> None:
        part = self.data.setdefault(partition, {})
        for key, value in items:
            if value is None:
                part.pop(key, None)
            else:
                part[key] = value
        self.offsets[partition] = changelog_offset


class Gate:
    async def claim_many(self, requests: list[Any]) -> list[Any]:
        raise AssertionError("no nudge in these tests")

    async def forget_customers(self, customers: list[str]) -> None:
        self.forgotten = customers


def agent_parts(**overrides: Any) -> Any:
    """A touchpoints agent on fakes, its parts reachable as attributes."""
    settings = Settings(partitions=N, dlq_topic="dlq", transitions_topic="transitions", state_cache_size=100)
    broker, store = Broker(), Store()
    metrics = TrackerMetrics.create(CollectorRegistry(), PartitionLifecycle())
    ledger = ErasureLedger(store.get)
    nudges = NudgeDispatcher(settings, MAP, Gate(), broker.batches, metrics, lambda: NOW, ledger=ledger)  # type: ignore[arg-type]
    parts: dict[str, Any] = {
        "store": store,
        "states": StateCache(store.get, settings.state_cache_size),
        "batches": broker.batches,
        "metrics": metrics,
        "stages": StageCounts(MAP.stage_names, [s.name for s in MAP.stages if not s.exit]),
        "deadlines": DeadlineIndex(lambda state: deadline_of(MAP, state)),
        "nudges": nudges,
        "ledger": ledger,
        "clock": lambda: NOW,
    }
    parts.update(overrides)
    tp = TouchpointsAgent(settings, MAP, **parts)
    tp.broker = broker  # type: ignore[attr-defined]
    for p in range(N):
        for listener in (parts["states"], ledger, parts["stages"], parts["deadlines"], nudges):
            listener.on_partition_recovered(p)
    return tp


def run_fetch(tp: TouchpointsAgent, records: list[Rec]) -> None:
    by_partition: dict[int, list[Rec]] = {}
    for r in records:
        by_partition.setdefault(r.partition, []).append(r)

    async def go() -> None:
        rest = await tp.handle(Fetch("tp", by_partition, 1))
        await rest

    asyncio.run(go())


def test_a_fetch_goes_to_the_topics_the_table_the_counts_and_the_indexes() -> None:
    tp = agent_parts()
    cart = event("c1", "e1", "add_to_cart", 0)
    run_fetch(tp, [event("c1", "e0", "page_view", 0, partition=cart.partition), cart])
    p = cart.partition
    broker: Broker = tp.broker  # type: ignore[attr-defined]
    # Two transitions out (none -> awareness -> cart), one changelog value, stored with its offset.
    assert [k for _, k, _ in broker.topic("transitions")] == [b"c1", b"c1"]
    changelog = broker.topic(Settings().changelog_topic)
    assert len(changelog) == 1 and changelog[0][0] == p
    offset, state = decode_stored(tp.table.get(p, b"c1"))  # type: ignore[arg-type]
    assert (offset, state.stage) == (0, "cart")
    assert tp.table.offsets[p] == 0  # type: ignore[attr-defined]  # the changelog offset reached
    assert tp.stages.totals().customers["cart"] == 1
    assert tp.deadlines.pop_due(p, NOW + 10**9) == ["c1"]  # an abandoned cart is due some day
    assert tp.metrics.events.labels("applied")._value.get() == 2


def test_a_replayed_fetch_changes_nothing() -> None:
    tp = agent_parts()
    records = [event("c1", "e1", "add_to_cart", 5)]
    run_fetch(tp, records)
    broker: Broker = tp.broker  # type: ignore[attr-defined]
    before = list(broker.records)
    run_fetch(tp, records)  # the same offsets again (a crash before the commit)
    assert broker.records == before
    assert tp.metrics.events.labels("replayed")._value.get() == 1


def test_an_erasure_tombstones_the_customer_and_owes_its_redis_deletes() -> None:
    tp = agent_parts()
    cart = event("c1", "e1", "add_to_cart", 0)
    run_fetch(tp, [cart])
    erase = Rec(cart.partition, 1, b"c1", Erase("c1", "x1", NOW).to_json(), ((ERASE_HEADER, b"1"),))
    run_fetch(tp, [erase])
    broker: Broker = tp.broker  # type: ignore[attr-defined]
    changelog = broker.topic(Settings().changelog_topic)
    assert (cart.partition, b"c1", None) in changelog  # the tombstone
    assert tp.table.get(cart.partition, b"c1") is None
    assert tp.stages.totals().customers["cart"] == 0
    # The Redis deletes were done by the flush at the end of the batch (the fake gate answered).
    assert tp.ledger.owed() == [] and tp.nudges._gate.forgotten == ["c1"]  # type: ignore[attr-defined]


def test_a_flood_of_dead_letters_is_logged_in_summary(caplog: pytest.LogCaptureFixture) -> None:
    tp = agent_parts()
    with caplog.at_level("WARNING", logger=agent.__name__):
        run_fetch(tp, [Rec(1, i, b"k", b"?") for i in range(50)])
    broker: Broker = tp.broker  # type: ignore[attr-defined]
    assert len(broker.topic("dlq")) == 50  # every one goes to the DLQ
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == agent.LOGGED_DEAD_LETTERS + 1
    assert lines[0].startswith("dead letter not_json from tp[1]@0")
    assert lines[-1] == "30 more dead letters in this batch: {'not_json': 30}"
