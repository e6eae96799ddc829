"""Recovery you can watch: per partition, the changelog records read and
left, the rate and an estimate of the time left.

A worker that owns a partition first reads the table's changelog for it
(Faust's recovery) before it serves. :class:`RecoveryProgress` hears when a
partition is assigned (:meth:`begin`, with the changelog offset its local
store already holds), is fed the positions of the partitions being
recovered every second (:meth:`observe`: the offset applied and the last
offset of the log, ``stream.faust.app.recovery_positions``), and hears
when the recovery is done (:meth:`finish`), and turns that into figures for
``/health``, a gauge and log lines. No Faust here. A worker restarted on its
own RocksDB directory, or promoted from a standby replica, reads only the
tail past the offset it stored: ``start`` says where it began, ``done``
counts the tail.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

# The rate is taken over the readings of the last this many seconds.
RATE_WINDOW_S = 10.0
# A log line per partition being recovered at most this often.
LOG_EVERY_S = 5.0


@dataclass(slots=True)
class _Partition:
    start: int  # the offset applied when the recovery was first seen
    started_at: float
    offset: int
    last: int  # the last offset of the changelog partition (-1: empty)
    samples: deque[tuple[float, int]] = field(default_factory=deque)  # (time, offset), the recent ones
    finished_at: float | None = None

    @property
    def left(self) -> int:
        return max(0, self.last - self.offset)

    def rate(self) -> float | None:
        """Records per second over the recent readings, None until two readings differ."""
        if len(self.samples) < 2:
            return None
        (t0, o0), (t1, o1) = self.samples[0], self.samples[-1]
        return (o1 - o0) / (t1 - t0) if t1 > t0 else None


class RecoveryProgress:
    """The changelog recovery of each partition, as the worker last saw it."""

    def __init__(self, changelog_topic: str) -> None:
        self.topic = changelog_topic
        self._parts: dict[int, _Partition] = {}
        self._logged_at = 0.0

    def begin(self, now: float, partition: int, offset: int) -> None:
        """``partition`` was assigned; its local store holds the changelog up to
        ``offset`` (-1: nothing)."""
        self._parts[partition] = _Partition(offset, now, offset, offset, deque([(now, offset)]))

    def observe(self, now: float, positions: Mapping[int, tuple[int, int]]) -> None:
        """``positions``: partition -> (offset applied, last offset) of those being recovered now."""
        parts = self._parts
        for p, (offset, last) in positions.items():
            part = parts.get(p)
            if part is None or part.finished_at is not None:
                part = parts[p] = _Partition(offset, now, offset, last)
            part.offset, part.last = offset, last
            part.samples.append((now, offset))
            while len(part.samples) > 2 and now - part.samples[0][0] > RATE_WINDOW_S:
                part.samples.popleft()
        if positions and now - self._logged_at >= LOG_EVERY_S:
            self._logged_at = now
            for p in sorted(positions):
                log.info("recovering %s[%d]: %s", self.topic, p, self.describe(p))

    def finish(self, now: float, partition: int, offset: int | None) -> None:
        """The recovery of ``partition`` is done, at changelog ``offset`` (None: as last seen)."""
        part = self._parts.get(partition)
        if part is None or part.finished_at is not None:
            return
        if offset is not None:
            part.offset = max(part.offset, offset)
        part.last = max(part.last, part.offset)
        part.finished_at = now
        log.info(
            "recovered %s[%d]: %d records from offset %d in %.1f s",
            self.topic,
            partition,
            part.offset - part.start,
            part.start + 1,
            now - part.started_at,
        )

    def forget(self, partitions: set[int]) -> None:
        """Drop what is known of partitions no longer owned."""
        for p in list(self._parts):
            if p not in partitions:
                del self._parts[p]

    @property
    def recovering(self) -> list[int]:
        return sorted(p for p, part in self._parts.items() if part.finished_at is None)

    def left(self) -> dict[int, int]:
        """Records left per partition being recovered."""
        return {p: part.left for p, part in self._parts.items() if part.finished_at is None}

    def figures(self, p: int) -> dict[str, Any]:
        part = self._parts[p]
        rate = part.rate()
        done = part.offset - part.start
        return {
            "state": "recovering" if part.finished_at is None else "recovered",
            "start": part.start,
            "done": done,
            "left": part.left,
            "rate_per_s": None if rate is None else round(rate, 1),
            "eta_s": None if not rate or part.finished_at is not None else round(part.left / rate, 1),
            "seconds": round((part.finished_at or part.samples[-1][0]) - part.started_at, 3),
        }

    def describe(self, p: int) -> str:
        f = self.figures(p)
        rate = f["rate_per_s"]
        return f"{f['done']:,} records read, {f['left']:,} left" + (
            f", {rate:,.0f}/s, about {f['eta_s']:.0f} s left" if rate else ""
        )

    def to_dict(self) -> dict[str, Any]:
        """For /health: each partition recovered or being recovered since it was assigned."""
        return {str(p): self.figures(p) for p in sorted(self._parts)}
