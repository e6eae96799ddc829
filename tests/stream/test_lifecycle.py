"""The partition lifecycle and the watchdog's verdicts, on an injected clock."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from models import Touchpoint, fold, load_map
from models.state import CustomerState
from stream.engine.lifecycle import PartitionLifecycle, PartitionListener

MAP = load_map()


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Recorder(PartitionListener):
    def __init__(self, name: str = "", calls: list[tuple[str, int]] | None = None) -> None:
        self.name = name
        self.calls: list[tuple[str, int]] = calls if calls is not None else []

    def on_partition_recovered(self, partition: int) -> None:
        self.calls.append((f"{self.name}recovered", partition))

    def on_partition_loaded(self, partition: int, states: Sequence[CustomerState]) -> None:
        self.calls.append((f"{self.name}loaded {len(states)}", partition))

    def on_partition_revoked(self, partition: int) -> None:
        self.calls.append((f"{self.name}revoked", partition))


def recovered(lc: PartitionLifecycle) -> None:
    asyncio.run(lc.recovered())


def test_listeners_hear_recovered_and_revoked_once() -> None:
    rec = Recorder()
    lc = PartitionLifecycle([rec], clock=Clock())
    lc.assigned([0, 1])
    assert rec.calls == [] and lc.ready == []  # not recovered yet
    recovered(lc)
    recovered(lc)  # a second signal changes nothing
    lc.assigned([1, 2])  # a rebalance: 0 goes, 2 comes
    recovered(lc)
    lc.revoked([1])
    lc.revoked([1])
    assert rec.calls == [
        ("recovered", 0),
        ("recovered", 1),
        ("revoked", 0),
        ("recovered", 2),
        ("revoked", 1),
    ]
    assert lc.owned == [2]


def stored(n: int) -> list[CustomerState]:
    return list(
        fold(
            MAP, [Touchpoint(f"e{i}", f"c{i}", "page_view", "web", 1_790_000_000_000) for i in range(n)]
        ).values()
    )


def test_one_scan_hands_each_chunk_to_every_listener_in_order_and_yields_between_chunks() -> None:
    calls: list[tuple[str, int]] = []
    first, second = Recorder("a ", calls), Recorder("b ", calls)
    customers = stored(5)
    scans: list[int] = []

    def scan(partition: int):  # type: ignore[no-untyped-def]
        scans.append(partition)
        yield from customers

    lc = PartitionLifecycle([first, second], stored=scan, clock=Clock(), chunk=2)

    async def run() -> list[str]:
        seen: list[str] = []

        async def other_task() -> None:  # runs between chunks: the loop is not blocked
            for _ in range(5):
                seen.append(f"{len(calls)}")
                await asyncio.sleep(0)

        lc.assigned([3])
        task = asyncio.ensure_future(other_task())
        await lc.recovered()
        await task
        return seen

    seen = asyncio.run(run())
    assert scans == [3]  # one scan for all listeners
    assert calls == [
        ("a recovered", 3),
        ("b recovered", 3),
        ("a loaded 2", 3),
        ("b loaded 2", 3),
        ("a loaded 2", 3),
        ("b loaded 2", 3),
        ("a loaded 1", 3),
        ("b loaded 1", 3),
    ]
    assert lc.ready == [3]
    assert seen[0] != seen[-1]  # the other task ran while the scan was under way


def test_a_partition_revoked_during_its_scan_is_never_ready_and_its_listeners_hear_it() -> None:
    rec = Recorder()
    lc: PartitionLifecycle

    def scan(partition: int):  # type: ignore[no-untyped-def]
        yield from stored(4)[:2]
        lc.revoked([partition])  # a rebalance while the loop ran
        yield from stored(4)[2:]

    lc = PartitionLifecycle([rec], stored=scan, clock=Clock(), chunk=2)
    lc.assigned([0])
    recovered(lc)
    assert lc.ready == [] and lc.owned == []
    assert rec.calls == [("recovered", 0), ("loaded 2", 0), ("revoked", 0)]


def test_a_partition_with_lag_and_no_progress_is_stalled_once_per_episode() -> None:
    clock = Clock()
    lc = PartitionLifecycle(clock=clock)
    lc.assigned([0, 1])
    recovered(lc)
    lc.processed(0, 100)
    lc.committed(0, 100)
    lc.ends({0: 150, 1: 0})
    clock.t += 30
    assert lc.report(60).problems == {}
    clock.t += 31
    report = lc.report(60)
    assert report.problems == {0: "stalled"} and report.worst_idle_s == 61
    assert lc.newly_stalled(report) == [0]
    assert lc.newly_stalled(lc.report(60)) == []  # the same episode
    lc.processed(0, 120)  # progress ends it
    assert lc.report(60).problems == {}
    assert lc.describe(60)["0"]["lag"] == 30


def test_a_caught_up_partition_is_never_stalled() -> None:
    clock = Clock()
    lc = PartitionLifecycle(clock=clock)
    lc.assigned([0])
    recovered(lc)
    lc.processed(0, 10)
    lc.committed(0, 10)
    lc.ends({0: 10})
    clock.t += 3600
    assert lc.report(60).partitions == {0: "ok"}


def test_processed_records_not_committed_for_too_long_are_a_commit_stall() -> None:
    clock = Clock()
    lc = PartitionLifecycle(clock=clock)
    lc.assigned([0])
    recovered(lc)
    lc.committed(0, 500)
    lc.processed(0, 900)
    lc.ends({0: 900})
    clock.t += 61
    assert lc.report(60).problems == {0: "commit_stalled"}
    lc.committed(0, 900)
    assert lc.report(60).problems == {}


def test_recovering_partitions_are_not_judged() -> None:
    clock = Clock()
    lc = PartitionLifecycle(clock=clock)
    lc.assigned([0])
    lc.ends({0: 1_000_000})
    clock.t += 10_000
    assert lc.report(60).partitions == {0: "recovering"}
