"""The batch pipeline: fetches in, one handler, commit positions out. No Faust here.

A handler takes one :class:`Fetch` (the records per partition of one poll)
and does its first part: plan the fetch and produce its outputs. It returns
the **rest of its batch**, a :data:`BatchRest`: a coroutine that waits for
the broker's acks and then writes the changelog, the local store and the
indexes. The pipeline runs that rest while the next fetch is fetched and
planned, so the wait for the broker overlaps the next batch's work, with
three rules:

* one first part at a time, and each rest starts after the previous rest
  has finished (rests run in fetch order);
* a partition's commit position moves past a fetch only when its rest is
  done; a partition revoked meanwhile keeps no position (its next owner
  replays from the committed offset);
* a failure in either part is fatal (``on_fatal``: the worker exits without
  committing the fetch, and the restart replays it), and no later rest runs.

A shutdown or a revocation waits for what is in hand (:meth:`finish_inflight`).
The Faust consumer (``stream.faust.consumer``) feeds the pipeline and
commits what it says; ``tests/stream/test_pipeline.py`` runs it without Faust.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stream.engine.lifecycle import PartitionLifecycle
from stream.errors import OffsetWentBackwards

log = logging.getLogger(__name__)

# The rest of a batch: what a handler returns after its first part (see the
# module docstring). None when there is nothing left to wait for.
BatchRest = Coroutine[Any, Any, None]
BatchHandler = Callable[["Fetch"], Awaitable[BatchRest | None]]


@dataclass(frozen=True, slots=True)
class Fetch:
    """One fetch's records of the batch topic: partition -> records in offset order."""

    topic: str
    records: Mapping[int, Sequence[Any]]  # aiokafka ConsumerRecords (anything with .offset)
    generation: int
    # partition -> revocations seen before the fetch was asked for; a fetch
    # that a revocation overtook is never committed.
    epochs: Mapping[int, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(len(r) for r in self.records.values())


def check_order(topic: str, partition: int, records: Sequence[Any]) -> None:
    """Raise :class:`OffsetWentBackwards` unless offsets strictly increase."""
    prev = -1
    for rec in records:
        if rec.offset <= prev:
            raise OffsetWentBackwards(topic, partition, prev, rec.offset)
        prev = rec.offset


@dataclass
class BatchPipeline:
    """Where the batch topic's fetches go, and what is known of each partition's processing."""

    topic: str
    handler: BatchHandler
    lifecycle: PartitionLifecycle
    on_fatal: Callable[[BaseException], None]
    positions: dict[int, int] = field(default_factory=dict)  # partition -> next offset to commit
    epochs: dict[int, int] = field(default_factory=dict)  # partition -> revocations seen
    inflight: asyncio.Future[None] | None = None  # the fetch being handed to the handler
    completing: asyncio.Future[None] | None = None  # the rest of the last batch handed over
    # partition -> the offset the next fetch must start at (the committed
    # offset after a seek, then one past each processed fetch), and the last
    # gap seen, so that a gap the log really has (transaction markers) is
    # accepted the second time it is fetched.
    expected: dict[int, int] = field(default_factory=dict)
    gaps: dict[int, tuple[int, int]] = field(default_factory=dict)
    started: set[int] = field(default_factory=set)  # partitions fetched since their last seek

    def revoke(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self.positions.pop(p, None)
            self.expected.pop(p, None)
            self.gaps.pop(p, None)
            self.started.discard(p)
            self.epochs[p] = self.epochs.get(p, 0) + 1

    def sought(self, partition: int, committed: int | None) -> None:
        """The consumer went back to the committed offset (None: nothing
        committed, so the start of the log)."""
        self.started.discard(partition)
        self.expected[partition] = committed if committed is not None else 0
        if committed is not None:
            self.lifecycle.committed(partition, committed)

    def contiguous(self, partition: int, first: int) -> bool:
        """Whether a fetch starting at ``first`` starts where the partition's processing stands.

        A fetch that starts past it would commit over records nobody
        applied: it is not processed, and the consumer seeks back to the
        expected offset. Offsets the log does not have (transaction markers)
        come back as the same gap after the seek, and are accepted then."""
        expected = self.expected.get(partition)
        if partition not in self.started:
            self.started.add(partition)
            log.info(
                "%s[%d]: first fetch since the seek starts at %d (expected %s)",
                self.topic,
                partition,
                first,
                expected,
            )
        if expected is None or first <= expected:
            return True
        gap = (expected, first)
        if self.gaps.get(partition) == gap:
            return True
        self.gaps[partition] = gap
        log.warning(
            "fetch of %s[%d] starts at %d, past the expected %d: not processed; seeking back",
            self.topic,
            partition,
            first,
            expected,
        )
        return False

    async def run(
        self, fetch: Fetch, done: Callable[[], None], processed: Callable[[int], None] = lambda p: None
    ) -> None:
        """Hand one fetch to the handler and see its first part through, even when cancelled.

        ``done`` is called once the fetch is finished (or failed), whatever
        happens; ``processed(partition)`` when a partition's position moved.
        A cancel (a shutdown) finishes what is in hand first, then goes on.
        """
        epochs = {p: fetch.epochs.get(p, self.epochs.get(p, 0)) for p in fetch.records}
        task = self.inflight = asyncio.ensure_future(self._begin(fetch, epochs, done, processed))
        cancelled = False
        try:
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                cancelled = True  # a shutdown: finish the batch first, then stop
                await task
        finally:
            self.inflight = None
        if cancelled:
            await self.finish_inflight()
            raise asyncio.CancelledError

    async def _begin(
        self,
        fetch: Fetch,
        epochs: Mapping[int, int],
        done: Callable[[], None],
        processed: Callable[[int], None],
    ) -> None:
        """The handler's first part, then its rest scheduled after the previous one's."""
        try:
            rest = await self.handler(fetch)
        except Exception as exc:
            done()
            self.on_fatal(exc)
            raise
        for p, recs in fetch.records.items():
            if self.epochs.get(p, 0) == epochs[p]:
                self.expected[p] = recs[-1].offset + 1  # where the next fetch must start
        previous = self.completing
        if previous is not None:
            await asyncio.wait({previous})
            if not previous.cancelled() and previous.exception() is not None:
                done()
                if rest is not None:
                    rest.close()
                raise previous.exception()  # type: ignore[misc]
        finishing = self.completing = asyncio.ensure_future(
            self._complete(fetch, rest, epochs, done, processed)
        )
        if rest is None:
            await finishing

    async def _complete(
        self,
        fetch: Fetch,
        rest: BatchRest | None,
        epochs: Mapping[int, int],
        done: Callable[[], None],
        processed: Callable[[int], None],
    ) -> None:
        """The rest of a batch, then its commit positions."""
        try:
            if rest is not None:
                await rest
        except Exception as exc:
            self.on_fatal(exc)
            raise
        finally:
            done()
        for p, recs in fetch.records.items():
            if self.epochs.get(p, 0) != epochs[p]:
                continue  # revoked meanwhile: the new owner replays from the committed offset
            position = recs[-1].offset + 1
            self.positions[p] = position
            processed(p)
            self.lifecycle.processed(p, position)

    async def finish_inflight(self) -> None:
        """Wait for the batch in hand and its rest to be written, whatever state the app is in.

        A worker leaving the group could otherwise still be writing a batch
        after another worker took the partition over and recovered its
        changelog: that late value (written from the old state) lands after
        the new owner's writes, and events are lost from a history
        (``docs/upstream/faust-wait-empty-skipped-while-stopping.md``). So no
        revocation and no stop goes ahead of it.
        """
        while True:
            pending = {t for t in (self.inflight, self.completing) if t is not None and not t.done()}
            if not pending:
                return
            await asyncio.wait(pending)  # neither raises nor cancels the batch
