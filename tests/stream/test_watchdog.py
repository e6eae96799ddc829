"""The watchdog on fakes: readiness, stalls counted once, exits for a stall and for lost topics."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from stream.engine.lifecycle import PartitionLifecycle
from stream.engine.metrics import TrackerMetrics
from stream.engine.watchdog import EXIT_STALLED, EXIT_TOPICS_GONE, TOPICS_GONE_CHECKS, Watchdog
from stream.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Cluster:
    def __init__(self) -> None:
        self.ends: dict[int, int] = {}
        self.missing: list[str] = []
        self.rebalancing = False
        self.down = False

    async def read_ends(self, partitions: list[int]) -> dict[int, int]:
        if self.down:
            raise ConnectionError("broker away")
        return {p: self.ends[p] for p in partitions if p in self.ends}

    async def missing_topics(self, names: list[str]) -> list[str]:
        if self.down:
            raise ConnectionError("broker away")
        return [n for n in names if n in self.missing]


def watchdog(
    cluster: Cluster, exits: list[int], why: list[str | None] | None = None
) -> tuple[Watchdog, Clock, TrackerMetrics]:
    clock = Clock()
    lifecycle = PartitionLifecycle(clock=clock)
    lifecycle.assigned([0, 1])
    asyncio.run(lifecycle.recovered())
    metrics = TrackerMetrics.create(CollectorRegistry(), lifecycle)
    settings = Settings(stall_unready_s=60, stall_exit_s=300, watchdog_interval_s=1)
    wd = Watchdog(
        settings,
        lifecycle,
        metrics,
        active=lambda: lifecycle.owned,
        rebalancing=lambda: cluster.rebalancing,
        read_ends=cluster.read_ends,
        missing_topics=cluster.missing_topics,
        readiness=[lambda: (why or [None])[0]],
        exit=exits.append,
    )
    return wd, clock, metrics


def test_ready_while_partitions_progress_and_unready_for_any_part_that_says_why() -> None:
    cluster, exits, why = Cluster(), [], [None]
    wd, _, metrics = watchdog(cluster, exits, why)  # type: ignore[arg-type]
    asyncio.run(wd.tick())
    assert wd.ready() and metrics.ready._value.get() == 1
    why[0] = "the nudge outbox spilled"
    assert not wd.ready() and wd.unready_because() == ["the nudge outbox spilled"]
    why[0] = None
    cluster.rebalancing = True
    assert not wd.ready()


def test_a_partition_with_lag_and_no_progress_is_counted_once_then_ends_the_worker() -> None:
    cluster, exits = Cluster(), []
    wd, clock, metrics = watchdog(cluster, exits)  # type: ignore[arg-type]
    wd.lifecycle.processed(0, 10)
    wd.lifecycle.committed(0, 10)
    cluster.ends = {0: 50, 1: 0}  # partition 0 has 40 records nobody processes
    asyncio.run(wd.tick())
    assert wd.ready()
    clock.t += 61
    asyncio.run(wd.tick())
    asyncio.run(wd.tick())
    assert wd.report.problems == {0: "stalled"} and not wd.ready()
    assert metrics.partition_problems.labels("stalled")._value.get() == 1  # one episode, counted once
    assert exits == []
    clock.t += 300
    asyncio.run(wd.tick())
    assert exits == [EXIT_STALLED]


def test_the_broker_away_is_judged_on_what_is_known_and_is_no_reason_to_exit() -> None:
    cluster, exits = Cluster(), []
    wd, clock, _ = watchdog(cluster, exits)  # type: ignore[arg-type]
    cluster.down = True
    clock.t += 1000
    asyncio.run(wd.tick())  # no log end known: no lag, so no stall
    assert exits == [] and wd.ready()


def test_topics_gone_for_two_checks_in_a_row_end_the_worker() -> None:
    cluster, exits = Cluster(), []
    wd, _, _ = watchdog(cluster, exits)  # type: ignore[arg-type]
    cluster.missing = [Settings().touchpoints_topic]
    asyncio.run(wd.check_topics())
    assert exits == [] and not wd.ready()  # one reading may catch a topic being created
    cluster.missing = []
    asyncio.run(wd.check_topics())
    cluster.missing = [Settings().changelog_topic]
    for _ in range(TOPICS_GONE_CHECKS):
        asyncio.run(wd.check_topics())
    assert exits == [EXIT_TOPICS_GONE]
