"""The Faust consumer with the batch path, and Faust's commit path fixed.

The tracker stays a Faust app: Faust runs group membership, the assignor,
table recovery and standbys, changelog topics, the offset commit timer and
the web server. What it does not use is Faust's per-message delivery for the
input topic (an Event, a Stream, a queue put and a ``wait_first`` task race
per record: most of the worker's time, and the source of the bugs below).

:func:`batch_consumer_class` subclasses the transport's consumer and changes
these methods, each a copy of Faust 0.15's with the change said in its
docstring:

* ``_drain_messages``: records of the batch topic go, as whole fetched
  batches per partition, to the batch pipeline (``stream.engine.pipeline``,
  which says what a batch and its rest are). A batch counts as an unacked
  message until its rest is done, so Faust's own ``wait_empty`` waits for
  it before a rebalance or a shutdown gives up partitions. Records of other
  topics (table changelogs during recovery and standby) take Faust's path.
* ``_new_offset``: for the batch topic, the commit offset is the pipeline's
  processed position; for other topics Faust's, with duplicate acks removed
  (faust#559).
* ``_commit_offsets``: Faust marks offsets committed even when the commit
  failed (a broker outage): after that they are never committed again and the
  group's offsets stay behind while the worker looks healthy. Ours restores
  the previous committed offsets when the commit did not go through.
* ``wait_empty``, ``on_partitions_revoked`` and ``perform_seek``: wait for
  the batch in hand, and keep the pipeline and the lifecycle in step with
  the assignment.

``docs/upstream/`` writes up the Faust bugs fixed here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import faust
from faust.transport.consumer import Consumer
from faust.types import TP
from faust.utils.functional import consecutive_numbers
from mode.utils.futures import notify

from stream.engine.pipeline import BatchPipeline, Fetch, check_order
from stream.faust.version import check_faust_version

log = logging.getLogger(__name__)


class _InFlight:
    """Stands for a batch being processed among Faust's unacked messages, so that
    ``Consumer.wait_empty`` (rebalance, shutdown) waits for it."""

    __slots__ = ("__weakref__", "acked", "refcount")

    def __init__(self) -> None:
        self.acked = False
        self.refcount = 1


def batch_consumer_class(base: type[Consumer], route: BatchPipeline) -> type[Consumer]:
    """The transport's consumer class with the batch path for ``route.topic``."""

    class BatchConsumer(base):  # type: ignore[valid-type,misc]
        journey_route = route

        async def _drain_messages(self, fetcher: Any) -> None:
            """Faust's ``_drain_messages`` with whole batches for the batch topic.

            Faust's loop compares each offset with a per-partition "read
            offset" that rebalances leave stale; a jump counts as a gap that
            is later committed as if processed, and a record below it is
            dropped. Neither happens here for the batch topic: a fetch is
            handed on as it came, the commit position moves only after the
            handler has finished with it, and a rebalance seeks back to the
            committed offset (replays are skipped by the handler).
            """
            consumer_stopped = self._stopped.is_set
            fetcher_stopped = fetcher._stopped.is_set
            topic = route.topic
            try:
                while not (consumer_stopped() or fetcher_stopped()):
                    # What the fetch is asked under. Faust's consumer thread
                    # fetches, so a rebalance can complete between the fetch and
                    # this loop: records fetched for the old assignment must not
                    # be processed under the new one (see ``_overtaken``).
                    generation = self.app.consumer_generation_id
                    epochs = dict(route.epochs)
                    records, active = await self._wait_next_records(1.0)
                    # Other topics (changelogs) keep Faust's rule: the generation
                    # read after the fetch. The fetch often waits out a whole
                    # rebalance (flow stopped), then brings the changelog records
                    # recovery has just sought to: dropping them under the older
                    # generation leaves recovery waiting for records that the
                    # consumer's position has already passed, for ever.
                    fetched_generation = self.app.consumer_generation_id
                    if not records or self.should_stop:
                        await asyncio.sleep(0)
                        continue
                    if not self.flow_active:
                        # As Faust's getmany: records fetched while the flow was
                        # stopped may predate a seek; go back to the committed offsets.
                        await self._seek_back("fetched while the flow was stopped")
                        continue
                    ours: dict[int, Sequence[Any]] = {}
                    for tp, recs in records.items():
                        if active is not None and tp not in active and tp not in self._buffered_partitions:
                            continue
                        end = self.highwater(tp)
                        self.app.monitor.track_tp_end_offset(tp, end)
                        if tp.topic == topic:
                            check_order(topic, tp.partition, recs)
                            ours[tp.partition] = recs
                        else:
                            await self._deliver_one_by_one(tp, recs, fetched_generation)
                    if not ours:
                        continue
                    why = self._overtaken(generation, epochs, ours)
                    if why:
                        await self._seek_back(why, ours)
                        continue
                    for p in [p for p, recs in ours.items() if not route.contiguous(p, recs[0].offset)]:
                        await self.seek(TP(topic, p), route.expected[p])
                        del ours[p]
                    if not ours:
                        continue
                    for p, recs in ours.items():
                        route.lifecycle.fetched(p, recs[-1].offset + 1, self.highwater(TP(topic, p)))
                    await self._run_batch(Fetch(topic, ours, generation, {p: epochs.get(p, 0) for p in ours}))
            except self.consumer_stopped_errors:
                if self.transport.app.should_stop:
                    log.info("Broker stopped consumer, shutting down...")
                    return
                raise
            except asyncio.CancelledError:
                if self.transport.app.should_stop:
                    log.info("Consumer shutting down for user cancel.")
                    return
                raise

        def _overtaken(
            self, generation: int, epochs: Mapping[int, int], ours: Mapping[int, Sequence[Any]]
        ) -> str | None:
            """Why a fetch of the batch topic must not be processed, or None.

            The records may come from a fetch made before a rebalance that has
            since completed: processing them would start a partition ahead
            of its committed offset and commit past records nobody applied
            (mid-history events lost; the per-customer replay skip then hides
            the gap). Only a fetch under the generation and the revocation
            count it was asked under, of partitions still assigned, goes on.
            """
            if not self.flow_active:
                return "the flow stopped during the fetch"
            if self.app.consumer_generation_id != generation:
                return "a rebalance completed during the fetch"
            assignment = self.assignment()
            for p in ours:
                if route.epochs.get(p, 0) != epochs.get(p, 0):
                    return f"partition {p} was revoked during the fetch"
                if TP(route.topic, p) not in assignment:
                    return f"partition {p} is no longer assigned"
            return None

        def _consumer_positions(self) -> dict[Any, Any]:
            """aiokafka's own positions for the batch topic (diagnostics only)."""
            try:
                assignment = self._thread._ensure_consumer()._fetcher._subscriptions.subscription.assignment
                return {
                    tp.partition: assignment.state_value(tp)._position
                    for tp in assignment.tps
                    if tp.topic == route.topic
                }
            except Exception as exc:
                return {"unknown": repr(exc)}

        async def _seek_back(self, why: str, dropped: Mapping[int, Sequence[Any]] | None = None) -> None:
            """Drop a fetch: the consumer's positions have moved past records
            that were not processed, so go back to the committed offsets (what
            Faust does after every rebalance; replays are skipped per customer)."""
            ranges = {p: f"{r[0].offset}-{r[-1].offset}" for p, r in (dropped or {}).items() if r}
            log.info(
                "dropping a fetch of %s %s: %s; seeking to the committed offsets", route.topic, ranges, why
            )
            try:
                await self.perform_seek()
            except Exception as exc:
                log.warning("seek to committed offsets failed: %r", exc)
                return
            committed = {
                tp.partition: o for tp, o in self._committed_offset.items() if tp.topic == route.topic
            }
            log.info("sought %s back to the committed offsets %s", route.topic, committed)

        async def _deliver_one_by_one(self, tp: TP, recs: Sequence[Any], generation: int) -> None:
            """Faust's own per-message delivery, for topics other than the batch topic."""
            read_offset = self._read_offset
            for rec in recs:
                if not self.flow_active or self.app.consumer_generation_id != generation:
                    return
                message = self._to_message(tp, rec)
                r_offset = read_offset[tp]
                if r_offset is None or message.offset >= r_offset:
                    if (
                        r_offset
                        and message.offset - r_offset > 1
                        and self.app.topics.acks_enabled_for(message.topic)
                    ):
                        await self._add_gap(tp, r_offset + 1, message.offset)
                    await self.wait_first(self.callback(message), self.suspend_flow.wait())
                    read_offset[tp] = message.offset

        async def _run_batch(self, fetch: Fetch) -> None:
            """Hand one fetch to the pipeline; it counts as an unacked message
            until its rest is done, so Faust's own ``wait_empty`` waits for it."""
            marker = _InFlight()
            self._unacked_messages.add(marker)
            await route.run(
                fetch,
                done=lambda: self._batch_done(marker),
                # Faust commits the partitions it has acked lists for.
                processed=lambda p: self._acked.setdefault(TP(fetch.topic, p), []),
            )

        def _batch_done(self, marker: _InFlight) -> None:
            marker.acked = True
            self._unacked_messages.discard(marker)
            notify(self._waiting_for_ack)

        def _new_offset(self, tp: TP) -> int | None:
            """The commit offset: the processed position for the batch topic."""
            if tp.topic != route.topic:
                return _dedup_new_offset(self, tp)
            position = route.positions.get(tp.partition)
            committed = self._committed_offset[tp]
            if position is None or (committed is not None and position <= committed):
                return None
            return position

        async def _commit_offsets(
            self, offsets: Mapping[TP, int], start_new_transaction: bool = True
        ) -> bool:
            """Faust's, but a failed commit leaves the committed offsets as they were."""
            for tp, offset in offsets.items():
                progress = route.lifecycle.progress.get(tp.partition) if tp.topic == route.topic else None
                if progress is not None and progress.processed is not None and offset > progress.processed:
                    log.error(
                        "committing %s[%d] at %d, past the processed %d", *tp, offset, progress.processed
                    )
            before = {tp: self._committed_offset.get(tp) for tp in offsets}
            did_commit = bool(await super()._commit_offsets(offsets, start_new_transaction))
            if did_commit:
                log.debug(
                    "committed %s", {tp.partition: o for tp, o in offsets.items() if tp.topic == route.topic}
                )
                for tp, offset in offsets.items():
                    if tp.topic == route.topic:
                        route.lifecycle.committed(tp.partition, offset)
            else:
                for tp, offset in before.items():
                    if offset is None:
                        self._committed_offset.pop(tp, None)
                    else:
                        self._committed_offset[tp] = offset
            return did_commit

        async def wait_empty(self) -> None:
            await route.finish_inflight()
            await super().wait_empty()

        async def on_partitions_revoked(self, revoked: set[TP]) -> None:
            await route.finish_inflight()
            route.revoke(tp.partition for tp in revoked if tp.topic == route.topic)
            await super().on_partitions_revoked(revoked)

        async def perform_seek(self) -> None:
            """Faust's seek to the committed offsets, then where each partition's
            processing must continue: the committed offset, or the start of the
            log where the group has committed nothing (auto_offset_reset is
            earliest). A first fetch that starts past it is not processed
            (``_contiguous``)."""
            await super().perform_seek()
            for tp in self.assignment():
                if tp.topic != route.topic:
                    continue
                route.sought(tp.partition, self._committed_offset.get(tp))
            log.info(
                "%s: processing continues at %s (consumer positions: %s)",
                route.topic,
                dict(sorted(route.expected.items())),
                self._consumer_positions(),
            )

    return BatchConsumer


def _dedup_new_offset(self: Consumer, tp: TP) -> int | None:
    """``Consumer._new_offset`` of faust-streaming 0.15, with duplicates removed.

    Faust records an offset jump seen by its drain loop as a "gap" whose range
    includes the record that ended it, and later adds the range to the
    partition's acked offsets; that record is acked again when processed.
    The original sorts the acked list and commits up to the end of its first
    run of consecutive numbers, and a duplicate ends that run: the commit
    then crawls one offset per commit interval. The only change is that the
    list is de-duplicated before the run is taken.
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


# Faust's own, kept for comparison in the tests.
faust_new_offset = Consumer._new_offset


def install_batch_path(app: faust.App, route: BatchPipeline) -> None:
    """Make ``app``'s consumer deliver ``route.topic`` in batches, and tie the
    lifecycle to Faust's rebalance signals. Call before the worker starts."""
    check_faust_version()
    transport: Any = app.transport
    transport.Consumer = batch_consumer_class(transport.Consumer, route)
    lifecycle = route.lifecycle

    def ours(tps: Iterable[TP]) -> list[int]:
        return [tp.partition for tp in tps if tp.topic == route.topic]

    async def _assigned(app: faust.App, assigned: set[TP], **kwargs: Any) -> None:
        lifecycle.assigned(p for p in ours(app.assignor.assigned_actives()))

    async def _recovered(app: faust.App, **kwargs: Any) -> None:
        # Faust waits for this before it resumes the flow: the partitions'
        # scan (in chunks, yielding to the loop) finishes before any batch.
        await lifecycle.recovered()

    async def _revoked(app: faust.App, revoked: set[TP], **kwargs: Any) -> None:
        # Sent after wait_empty: the last batch holding them has finished.
        lifecycle.revoked(ours(revoked))

    app.on_partitions_assigned.connect(_assigned)  # type: ignore[arg-type]
    app.on_rebalance_complete.connect(_recovered)  # type: ignore[arg-type]
    app.on_partitions_revoked.connect(_revoked)  # type: ignore[arg-type]
