"""The partition lifecycle and the watchdog's verdicts, on an injected clock."""

from __future__ import annotations

from stream.lifecycle import PartitionLifecycle


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def on_partition_ready(self, partition: int) -> None:
        self.calls.append(("ready", partition))

    def on_partition_revoked(self, partition: int) -> None:
        self.calls.append(("revoked", partition))


def test_listeners_hear_ready_after_recovery_and_revoked_once() -> None:
    lc, rec = PartitionLifecycle(clock=Clock()), Recorder()
    lc.add_listener(rec)
    lc.assigned([0, 1])
    assert rec.calls == [] and lc.ready == []  # not recovered yet
    lc.recovered()
    lc.recovered()  # a second signal changes nothing
    lc.assigned([1, 2])  # a rebalance: 0 goes, 2 comes
    lc.recovered()
    lc.revoked([1])
    lc.revoked([1])
    assert rec.calls == [("ready", 0), ("ready", 1), ("revoked", 0), ("ready", 2), ("revoked", 1)]
    assert lc.owned == [2]


def test_a_partition_with_lag_and_no_progress_is_stalled_once_per_episode() -> None:
    clock = Clock()
    lc = PartitionLifecycle(clock=clock)
    lc.assigned([0, 1])
    lc.recovered()
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
    lc.recovered()
    lc.processed(0, 10)
    lc.committed(0, 10)
    lc.ends({0: 10})
    clock.t += 3600
    assert lc.report(60).partitions == {0: "ok"}


def test_processed_records_not_committed_for_too_long_are_a_commit_stall() -> None:
    clock = Clock()
    lc = PartitionLifecycle(clock=clock)
    lc.assigned([0])
    lc.recovered()
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
