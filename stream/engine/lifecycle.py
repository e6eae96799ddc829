"""The one owner of the partition lifecycle, and the progress of each partition.

Faust's rebalance callbacks call only this (through ``stream.faust.consumer``):

* :meth:`PartitionLifecycle.assigned`: the worker owns these partitions of the
  input topic again; their table state is not yet recovered.
* :meth:`PartitionLifecycle.recovered`: recovery is done. One scan per
  partition reads its stored customers in chunks and hands each chunk to
  every listener, in the order of the list the worker was built with
  (``stream.worker``), yielding to the loop between chunks; the batch path
  resumes after it (Faust waits for this callback before it resumes the
  flow). Then the partition is ready.
* :meth:`PartitionLifecycle.revoked`: the partitions are gone, after the last
  batch holding them has finished. Listeners drop what they kept.

Beside it, per owned partition, the worker's view of its own progress: the
fetch position, the last processed offset, the committed offset, the end of
the log, and when it last made progress. :meth:`PartitionLifecycle.report`
turns that into a verdict, so that a stalled partition or a commit that
falls behind is seen, logged, counted and, past a second limit, ends the
worker for its supervisor to restart. No Faust here: the clock and the
store's scan are passed in.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from models.state import CustomerState

log = logging.getLogger(__name__)

Verdict = Literal["ok", "recovering", "stalled", "commit_stalled"]


class PartitionListener:
    """What plugs into the lifecycle; each hook is optional (does nothing here).

    For a partition: ``on_partition_recovered`` once its table state is
    recovered (start it afresh), ``on_partition_loaded`` with each chunk of
    its stored customers, then, when it goes, ``on_partition_revoked``.
    """

    def on_partition_recovered(self, partition: int) -> None:
        return None

    def on_partition_loaded(self, partition: int, states: Sequence[CustomerState]) -> None:
        return None

    def on_partition_revoked(self, partition: int) -> None:
        return None


# Stored customers decoded per chunk of a partition's scan (then the loop runs).
SCAN_CHUNK = 2000


@dataclass(slots=True)
class PartitionProgress:
    """One owned partition as the worker sees it. Offsets are Kafka positions
    (the next offset to read or commit); ``None`` until known."""

    partition: int
    assigned_at: float
    ready_at: float | None = None
    fetched: int | None = None  # position after the last fetched record
    processed: int | None = None  # position after the last record fully processed
    committed: int | None = None  # position the group last committed (confirmed by the broker)
    end: int | None = None  # the log end offset (high watermark) last seen
    progress_at: float = 0.0  # last time processing advanced or the partition was caught up
    committed_at: float = 0.0  # last time the commit advanced or had nothing to do
    stalled: bool = False  # reported stalled (counted once per episode)
    loading: bool = False  # recovered, its stored customers being scanned into the listeners

    @property
    def lag(self) -> int | None:
        """Records between what was processed and the end of the log."""
        if self.end is None:
            return None
        base = self.processed if self.processed is not None else self.committed
        return None if base is None else max(0, self.end - base)

    @property
    def commit_lag(self) -> int:
        """Records processed but not committed."""
        if self.processed is None:
            return 0
        return max(0, self.processed - (self.committed or 0))

    def verdict(self, now: float, limit_s: float) -> Verdict:
        if self.ready_at is None:
            return "recovering"
        if self.lag and now - max(self.progress_at, self.ready_at) > limit_s:
            return "stalled"
        if self.commit_lag and now - max(self.committed_at, self.ready_at) > limit_s:
            return "commit_stalled"
        return "ok"

    def to_dict(self, now: float, limit_s: float) -> dict[str, Any]:
        return {
            "state": self.verdict(now, limit_s),
            "fetched": self.fetched,
            "processed": self.processed,
            "committed": self.committed,
            "end": self.end,
            "lag": self.lag,
            "commit_lag": self.commit_lag,
            "idle_s": round(now - max(self.progress_at, self.ready_at or self.assigned_at), 3),
        }


@dataclass(frozen=True, slots=True)
class Report:
    """The watchdog's reading of every owned partition at one moment."""

    partitions: dict[int, Verdict]
    worst_idle_s: float  # longest time a problem partition has gone without progress

    @property
    def problems(self) -> dict[int, Verdict]:
        return {p: v for p, v in self.partitions.items() if v in ("stalled", "commit_stalled")}


def _nothing_stored(partition: int) -> Iterator[CustomerState]:
    return iter(())


@dataclass
class PartitionLifecycle:
    """Which partitions of the input topic this worker owns, their state, and who to tell."""

    listeners: Sequence[PartitionListener] = ()
    stored: Callable[[int], Iterator[CustomerState]] = _nothing_stored  # a partition's stored customers
    clock: Callable[[], float] = time.monotonic
    chunk: int = SCAN_CHUNK
    progress: dict[int, PartitionProgress] = field(default_factory=dict)

    @property
    def owned(self) -> list[int]:
        return sorted(self.progress)

    @property
    def ready(self) -> list[int]:
        return sorted(p for p, pr in self.progress.items() if pr.ready_at is not None)

    # The lifecycle, called from the rebalance callbacks only.

    def assigned(self, partitions: Iterable[int]) -> None:
        """The full assignment after a rebalance: new ones start, missing ones are revoked."""
        wanted = set(partitions)
        self.revoked(set(self.progress) - wanted)
        now = self.clock()
        for p in sorted(wanted - set(self.progress)):
            self.progress[p] = PartitionProgress(p, assigned_at=now, progress_at=now, committed_at=now)

    async def recovered(self, partitions: Iterable[int] | None = None) -> None:
        """Table recovery is done for ``partitions`` (default: every owned one):
        scan each new one into the listeners, then call it ready."""
        for p in sorted(self.progress if partitions is None else partitions):
            pr = self.progress.get(p)
            if pr is None or pr.ready_at is not None or pr.loading:
                continue
            pr.loading = True
            try:
                loaded = await self._load(p, pr)
            finally:
                pr.loading = False
            if loaded and self.progress.get(p) is pr:
                pr.ready_at = pr.progress_at = pr.committed_at = self.clock()

    async def _load(self, partition: int, pr: PartitionProgress) -> bool:
        """The one scan of a recovered partition's store; False if it was revoked meanwhile."""
        started = time.monotonic()
        for listener in self.listeners:
            listener.on_partition_recovered(partition)
        customers = 0
        chunk: list[CustomerState] = []
        for state in self.stored(partition):
            chunk.append(state)
            if len(chunk) >= self.chunk:
                if self.progress.get(partition) is not pr:
                    return False  # revoked during the scan (the listeners heard it)
                customers += self._hand_over(partition, chunk)
                chunk = []
                await asyncio.sleep(0)
        if self.progress.get(partition) is not pr:
            return False
        customers += self._hand_over(partition, chunk)
        log.info(
            "partition %d loaded: %d customers scanned in %.2f s",
            partition,
            customers,
            time.monotonic() - started,
        )
        return True

    def _hand_over(self, partition: int, chunk: list[CustomerState]) -> int:
        if chunk:
            for listener in self.listeners:
                listener.on_partition_loaded(partition, chunk)
        return len(chunk)

    def revoked(self, partitions: Iterable[int]) -> None:
        for p in sorted(partitions):
            pr = self.progress.pop(p, None)
            if pr is not None and (pr.ready_at is not None or pr.loading):
                for listener in self.listeners:
                    listener.on_partition_revoked(p)

    def all_revoked(self) -> None:
        self.revoked(list(self.progress))

    # Progress, reported by the batch path and the commit.

    def fetched(self, partition: int, position: int, end: int | None) -> None:
        pr = self.progress.get(partition)
        if pr is not None:
            pr.fetched = position
            if end is not None:
                pr.end = end

    def processed(self, partition: int, position: int) -> None:
        pr = self.progress.get(partition)
        if pr is not None:
            if pr.processed is None or position > pr.processed:
                pr.progress_at = self.clock()
                pr.stalled = False
            pr.processed = position

    def committed(self, partition: int, position: int) -> None:
        pr = self.progress.get(partition)
        if pr is not None:
            if pr.committed is None or position > pr.committed:
                pr.committed_at = self.clock()
                if pr.processed is None or position >= pr.processed:
                    pr.stalled = False
            pr.committed = position

    def ends(self, ends: dict[int, int]) -> None:
        """Log end offsets read by the watchdog (also for partitions that fetch nothing)."""
        for p, end in ends.items():
            pr = self.progress.get(p)
            if pr is not None:
                pr.end = end

    def report(self, limit_s: float) -> Report:
        """Every owned partition's verdict; caught-up partitions count as progress."""
        now = self.clock()
        verdicts: dict[int, Verdict] = {}
        worst = 0.0
        for p, pr in self.progress.items():
            if pr.ready_at is not None and pr.lag == 0:
                pr.progress_at = now
            if pr.ready_at is not None and not pr.commit_lag:
                pr.committed_at = now
            v = pr.verdict(now, limit_s)
            verdicts[p] = v
            if v == "stalled":
                worst = max(worst, now - max(pr.progress_at, pr.ready_at or 0.0))
            elif v == "commit_stalled":
                worst = max(worst, now - max(pr.committed_at, pr.ready_at or 0.0))
        return Report(verdicts, worst)

    def newly_stalled(self, report: Report) -> list[int]:
        """Partitions that became a problem since the last report (to count each episode once)."""
        out = []
        for p in report.problems:
            pr = self.progress[p]
            if not pr.stalled:
                pr.stalled = True
                out.append(p)
        return out

    def describe(self, limit_s: float) -> dict[str, dict[str, Any]]:
        now = self.clock()
        return {str(p): pr.to_dict(now, limit_s) for p, pr in sorted(self.progress.items())}
