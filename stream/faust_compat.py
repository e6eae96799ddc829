"""The one place that reaches into Faust internals, and why.

A Faust table picks the changelog partition (and the RocksDB shard) of a
write from the *current event*, a context variable the stream sets per event.
Inside a ``take_events`` batch that is whichever event arrived last, so a
batch writing many customers must name each customer's own event first.

``Stream._set_current_event`` would do it, but it also sets
``stream.current_event``, which ``take_events`` reads to record the next
buffered event: calling it from the agent made the buffer record a stale
event in place of a new one, and that event was lost (caught by the
integration test). Setting only the context variable, from the batch's own
task (its context is a copy), changes nothing the stream reads.

:func:`install_commit_fix` replaces ``Consumer._new_offset`` with a version
that de-duplicates acked offsets: after some rebalances Faust's own version
advanced the commit by one offset per interval (its docstring says why).

The worker also produces whole batches (``stream/batching.py``) through the
aiokafka producer Faust already runs, so the same connection, acks setting
and ``flush()`` before commit cover them: :func:`aiokafka_producer` fetches
it.

``tests/stream/test_faust_compat.py`` breaks if Faust renames what this uses.
"""

from __future__ import annotations

import weakref

import faust
from aiokafka import AIOKafkaProducer
from faust.streams import _current_event, current_event
from faust.transport.consumer import Consumer
from faust.types import TP, EventT
from faust.utils.functional import consecutive_numbers


def use_event_for_table_writes(event: EventT) -> None:
    """Make ``event`` the current event for table writes in this task's context."""
    _current_event.set(weakref.ref(event))


def aiokafka_producer(app: faust.App) -> AIOKafkaProducer:
    """The started aiokafka producer under Faust's producer service."""
    producer: AIOKafkaProducer = app.producer._ensure_producer()  # type: ignore[attr-defined]
    return producer


# Faust's own, kept for comparison in the tests.
faust_new_offset = Consumer._new_offset


def _new_offset(self: Consumer, tp: TP) -> int | None:
    """``Consumer._new_offset`` of faust-streaming 0.15, with duplicates removed.

    Faust records an offset jump seen by its drain loop as a "gap" and later
    adds the whole range to the partition's acked offsets. After a rebalance
    the drain loop compares against a stale read offset, so real records are
    taken for a gap, re-fetched, and acked a second time. The original sorts
    the acked list and commits up to the end of its first run of consecutive
    numbers, and a duplicate ends that run: the commit then crawls one
    offset per commit interval (seen here: 960 acked offsets behind, about
    45 minutes to catch up). The only change is that the list is
    de-duplicated before the run is taken; ``test_faust_compat.py`` pins the
    original's shape so an upgrade that changes it is noticed.
    """
    acked = self._acked[tp]
    if not acked:
        return None
    max_offset = max(acked)
    gap_for_tp = self._gap[tp]
    if gap_for_tp:
        candidates = sorted(gap_for_tp.overlap(0, max_offset), key=lambda x: x.begin)
        if candidates:
            stuff_to_add: list[int] = []
            for entry in candidates:
                stuff_to_add.extend(range(entry.begin, entry.end))
            new_max_offset = max(stuff_to_add[-1], max_offset + 1)
            acked.extend(stuff_to_add)
            gap_for_tp.chop(0, new_max_offset)
    acked[:] = sorted(set(acked))  # the fix: the original only sorts
    committed_offset = self._committed_offset[tp]
    if committed_offset and min(acked) - committed_offset > 1:
        return None
    batch = next(consecutive_numbers(acked))
    acked[: len(batch)] = []
    self._acked_index[tp].difference_update(batch)
    return int(batch[-1]) + 1


def install_commit_fix() -> None:
    """Replace ``Consumer._new_offset`` with the de-duplicating version (idempotent)."""
    Consumer._new_offset = _new_offset  # type: ignore[method-assign]


__all__ = ["aiokafka_producer", "current_event", "install_commit_fix", "use_event_for_table_writes"]
