"""The clock ticker on fakes: due customers get one clock record each, retried when the broker fails."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from agents.clock import ClockTicker
from models.events import CLOCK_HEADER, GROUP_HEADER
from stream.engine.deadlines import DeadlineIndex
from stream.engine.lifecycle import PartitionLifecycle
from stream.engine.metrics import TrackerMetrics

NOW = 1_790_000_000_000


class Batches:
    def __init__(self, sink: list[tuple[Any, ...]], fail: list[bool]) -> None:
        self.sink, self.fail, self.added = sink, fail, []  # type: ignore[var-annotated]

    def add(self, *record: Any) -> None:
        self.added.append(record)

    async def send(self) -> dict[Any, int]:
        if self.fail[0]:
            raise ConnectionError("broker away")
        self.sink.extend(self.added)
        return {}


class Dispatcher:
    def __init__(self) -> None:
        self.flushes = 0

    async def flush(self) -> None:
        self.flushes += 1


def ticker(sink: list[tuple[Any, ...]], fail: list[bool]) -> tuple[ClockTicker, DeadlineIndex]:
    lifecycle = PartitionLifecycle()
    lifecycle.assigned([0, 1, 2])
    asyncio.run(lifecycle.recovered([0, 1]))  # 2 is still recovering
    index = DeadlineIndex(lambda state: None)
    for p in (0, 1, 2):
        index.on_partition_recovered(p)
    metrics = TrackerMetrics.create(CollectorRegistry(), lifecycle)
    t = ClockTicker(
        "touchpoints",
        lifecycle,
        index,
        Dispatcher(),  # type: ignore[arg-type]
        lambda: Batches(sink, fail),  # type: ignore[arg-type,return-value]
        metrics,
        lambda: NOW,
        "tracker-blue",
    )
    return t, index


def test_each_due_customer_of_a_ready_partition_gets_one_clock_record_keyed_and_flagged() -> None:
    sink: list[tuple[Any, ...]] = []
    t, index = ticker(sink, [False])
    index.set(0, "due", NOW - 1)
    index.set(1, "later", NOW + 1)
    index.set(2, "recovering", NOW - 1)  # not ready: its turn comes after its scan
    assert asyncio.run(t.tick()) == 1
    [(topic, partition, key, value, headers)] = sink
    assert (topic, partition, key) == ("touchpoints", 0, b"due")
    assert tuple(headers) == ((CLOCK_HEADER, b"1"), (GROUP_HEADER, b"tracker-blue"))  # marked with its group
    assert orjson.loads(value)["clock"] == NOW
    assert asyncio.run(t.tick()) == 0  # sent once: the batch applying it sets the next deadline
    assert t.dispatcher.flushes == 2  # type: ignore[attr-defined]  # the outbox every tick
    assert t.metrics.clock_readings._value.get() == 1


def test_clock_records_the_broker_refused_are_due_again_next_tick() -> None:
    sink: list[tuple[Any, ...]] = []
    fail = [True]
    t, index = ticker(sink, fail)
    index.set(1, "c", NOW - 5)
    assert asyncio.run(t.tick()) == 0 and sink == []
    fail[0] = False
    assert asyncio.run(t.tick()) == 1 and [r[2] for r in sink] == [b"c"]
