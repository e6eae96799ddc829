"""The one place that reaches into Faust internals, and why.

The tracker stays a Faust app: Faust runs group membership, the assignor,
table recovery and standbys, changelog topics, the offset commit timer and
the web server. What it does not use is Faust's per-message delivery for the
input topic (an Event, a Stream, a queue put and a ``wait_first`` task race
per record: most of the worker's time, and the source of the bugs below).

:func:`batch_consumer_class` subclasses the transport's consumer and changes
four methods, each a copy of Faust 0.15's with the change said in its
docstring:

* ``_drain_messages``: records of the batch topics go, as whole fetched
  batches per partition, to one handler; the handler may return the rest of
  its batch (what waits for the broker's acks), which runs while the next
  fetch is fetched and planned, one rest at a time and in fetch order. A
  batch counts as an unacked message until its rest is done, so Faust's own
  ``wait_empty`` waits for it before a rebalance or a shutdown gives up
  partitions. Records of other topics (table changelogs during recovery and
  standby) take Faust's path as before.
* ``_new_offset``: for batch topics, the commit offset is the position after
  the last fully processed batch of the partition, kept here per partition;
  for other topics Faust's, with duplicate acks removed (faust#559).
* ``_commit_offsets``: Faust marks offsets committed even when the commit
  failed (a broker outage): after that they are never committed again and the
  group's offsets stay behind while the worker looks healthy. Ours restores
  the previous committed offsets when the commit did not go through.
* ``on_partitions_revoked`` and ``perform_seek``: keep the per-partition
  positions and the lifecycle in step with the assignment.

Also here: the table store read and written per partition (Faust's stores
pick the partition from a "current event" that a batch path does not have),
the aiokafka producer Faust runs, the spinner switch, the actively assigned
partitions, and the version guard. ``tests/stream/test_faust_compat.py``
breaks if Faust moves what this relies on. ``docs/upstream/`` writes up the
Faust bugs fixed here.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import faust
from aiokafka import AIOKafkaProducer
from faust.transport.consumer import Consumer
from faust.types import TP
from faust.utils.functional import consecutive_numbers
from mode.utils.futures import notify

from stream.errors import OffsetWentBackwards, UnsupportedFaust
from stream.lifecycle import PartitionLifecycle

log = logging.getLogger(__name__)

# The faust-streaming releases this module was written against and tested
# with. Its methods are copies of 0.15's: a new minor release must be read
# before it is allowed (pyproject.toml pins the same range).
SUPPORTED_FAUST: Final = ((0, 15, 2), (0, 16, 0))


def faust_version() -> tuple[int, int, int]:
    parts = [*faust.__version__.split("+")[0].split("."), "0", "0"][:3]
    major, minor, patch = (int("".join(ch for ch in p if ch.isdigit()) or 0) for p in parts)
    return major, minor, patch


def check_faust_version() -> None:
    low, high = SUPPORTED_FAUST
    if not (low <= faust_version() < high):
        raise UnsupportedFaust(
            f"faust-streaming {faust.__version__} is installed; stream/faust_compat.py supports "
            f">={'.'.join(map(str, low))},<{'.'.join(map(str, high))}"
        )


# A batch handler processes a fetch and may return the rest of its batch: a
# coroutine that waits for the broker and finishes it (see ``_run_batch``).
BatchHandler = Callable[["Fetch"], Awaitable[Coroutine[Any, Any, None] | None]]


@dataclass(frozen=True, slots=True)
class Fetch:
    """One fetch's records of the batch topic: partition -> records in offset order."""

    topic: str
    records: Mapping[int, Sequence[Any]]  # aiokafka ConsumerRecords
    generation: int
    # partition -> revocations seen before the fetch was asked for; a fetch
    # that a revocation overtook is never committed (see ``_run_batch``).
    epochs: Mapping[int, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(len(r) for r in self.records.values())


class _InFlight:
    """Stands for a batch being processed among Faust's unacked messages, so that
    ``Consumer.wait_empty`` (rebalance, shutdown) waits for it."""

    __slots__ = ("__weakref__", "acked", "refcount")

    def __init__(self) -> None:
        self.acked = False
        self.refcount = 1


@dataclass
class BatchRoute:
    """Where the batch topic's records go, and what the consumer knows of them."""

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


def check_order(topic: str, partition: int, records: Sequence[Any]) -> None:
    """Raise :class:`OffsetWentBackwards` unless offsets strictly increase."""
    prev = -1
    for rec in records:
        if rec.offset <= prev:
            raise OffsetWentBackwards(topic, partition, prev, rec.offset)
        prev = rec.offset


def batch_consumer_class(base: type[Consumer], route: BatchRoute) -> type[Consumer]:
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
                    for p in [p for p, recs in ours.items() if not self._contiguous(p, recs)]:
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

        def _contiguous(self, partition: int, recs: Sequence[Any]) -> bool:
            """Whether a fetch starts where the partition's processing stands.

            A fetch that starts past it would commit over records nobody
            applied. Whatever the cause, such a fetch is not processed: the
            consumer seeks back to the expected offset. Offsets the log does
            not have (transaction markers) come back as the same gap after
            the seek, and are accepted then."""
            expected = route.expected.get(partition)
            first = recs[0].offset
            if partition not in route.started:
                route.started.add(partition)
                log.info(
                    "%s[%d]: first fetch since the seek starts at %d (expected %s)",
                    route.topic,
                    partition,
                    first,
                    expected,
                )
            if expected is None or first <= expected:
                return True
            gap = (expected, first)
            if route.gaps.get(partition) == gap:
                return True
            route.gaps[partition] = gap
            log.warning(
                "fetch of %s[%d] starts at %d, past the expected %d: not processed; seeking back",
                route.topic,
                partition,
                first,
                expected,
            )
            return False

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
            """Hand one fetch to the handler and see it through, even when cancelled.

            The handler may return the rest of its batch (what waits for the
            broker's acks); the rest then runs while the next fetch is
            fetched and planned, one rest at a time and in fetch order. The
            commit positions move when a fetch's rest is done.
            """
            marker = _InFlight()
            self._unacked_messages.add(marker)
            epochs = {p: fetch.epochs.get(p, route.epochs.get(p, 0)) for p in fetch.records}
            task = route.inflight = asyncio.ensure_future(self._begin(fetch, epochs, marker))
            cancelled = False
            try:
                try:
                    await asyncio.shield(task)
                except asyncio.CancelledError:
                    cancelled = True  # a shutdown: finish the batch first, then stop
                    await task
            finally:
                route.inflight = None
            if cancelled:
                await self._finish_inflight()
                raise asyncio.CancelledError

        async def _begin(self, fetch: Fetch, epochs: Mapping[int, int], marker: _InFlight) -> None:
            """The handler's first part, then its rest scheduled after the previous one's."""
            try:
                rest = await route.handler(fetch)
            except Exception as exc:
                self._batch_done(marker)
                route.on_fatal(exc)
                raise
            for p, recs in fetch.records.items():
                if route.epochs.get(p, 0) == epochs[p]:
                    route.expected[p] = recs[-1].offset + 1  # where the next fetch must start
            previous = route.completing
            if previous is not None:
                await asyncio.wait({previous})
                if not previous.cancelled() and previous.exception() is not None:
                    self._batch_done(marker)
                    if rest is not None:
                        rest.close()
                    raise previous.exception()  # type: ignore[misc]
            done = route.completing = asyncio.ensure_future(self._complete(fetch, rest, epochs, marker))
            if rest is None:
                await done

        async def _complete(
            self,
            fetch: Fetch,
            rest: Coroutine[Any, Any, None] | None,
            epochs: Mapping[int, int],
            marker: _InFlight,
        ) -> None:
            """The rest of a batch, then its commit positions."""
            try:
                if rest is not None:
                    await rest
            except Exception as exc:
                route.on_fatal(exc)
                raise
            finally:
                self._batch_done(marker)
            for p, recs in fetch.records.items():
                if route.epochs.get(p, 0) != epochs[p]:
                    continue  # revoked meanwhile: the new owner replays from the committed offset
                position = recs[-1].offset + 1
                route.positions[p] = position
                self._acked.setdefault(TP(fetch.topic, p), [])  # Faust commits the tps it has here
                route.lifecycle.processed(p, position)

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

        async def _finish_inflight(self) -> None:
            """Wait for the batch in hand to be written, whatever state the app is in.

            Faust's ``wait_empty`` returns at once when the app is stopping, and
            its revocation handler skips it then: a worker leaving the group
            could still be writing a batch after another worker took the
            partition over and recovered its changelog. That late changelog
            value (written from the old state) then lands after the new owner's
            own writes: the new owner reads it back through its recovery or
            standby consumer and builds on it, or it stays the last value of
            the key. Either way events are lost from the middle or the end of
            a history. So no revocation and no stop goes ahead of it.
            """
            while True:
                pending = {t for t in (route.inflight, route.completing) if t is not None and not t.done()}
                if not pending:
                    return
                await asyncio.wait(pending)  # neither raises nor cancels the batch

        async def wait_empty(self) -> None:
            await self._finish_inflight()
            await super().wait_empty()

        async def on_partitions_revoked(self, revoked: set[TP]) -> None:
            await self._finish_inflight()
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
                route.started.discard(tp.partition)
                committed = self._committed_offset.get(tp)
                route.expected[tp.partition] = committed if committed is not None else 0
                if committed is not None:
                    route.lifecycle.committed(tp.partition, committed)
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


def install_batch_path(app: faust.App, route: BatchRoute) -> None:
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
        lifecycle.recovered()

    async def _revoked(app: faust.App, revoked: set[TP], **kwargs: Any) -> None:
        # Sent after wait_empty: the last batch holding them has finished.
        lifecycle.revoked(ours(revoked))

    app.on_partitions_assigned.connect(_assigned)  # type: ignore[arg-type]
    app.on_rebalance_complete.connect(_recovered)  # type: ignore[arg-type]
    app.on_partitions_revoked.connect(_revoked)  # type: ignore[arg-type]


def active_partitions(app: faust.App, topic: str) -> list[int]:
    """Partitions of ``topic`` this worker actively owns (not standby)."""
    return sorted(tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic)


def peer_urls(app: faust.App) -> list[str]:
    """The web URLs of every worker in the group (this one included), from the
    assignor's view of who holds which table partitions."""
    urls = {str(u).rstrip("/") for u in app.assignor.tables_metadata()}
    return sorted(urls)


def owner_url(app: faust.App, changelog_topic: str, partition: int) -> str | None:
    """The web URL of the worker that actively owns ``partition`` of the table
    (from the assignor's last assignment), or None if nobody is known to."""
    for url, topics in app.assignor.tables_metadata().items():
        if partition in topics.get(changelog_topic, ()):
            return str(url).rstrip("/")
    return None


async def missing_topics(app: faust.App, names: Iterable[str]) -> list[str]:
    """Those of ``names`` the cluster's metadata does not have (read afresh
    through the producer's client, on this loop)."""
    cluster = await aiokafka_producer(app).client.fetch_all_metadata()
    present = cluster.topics()
    return [n for n in names if n not in present]


def aiokafka_producer(app: faust.App) -> AIOKafkaProducer:
    """The started aiokafka producer under Faust's producer service."""
    producer: AIOKafkaProducer = app.producer._ensure_producer()  # type: ignore[attr-defined]
    return producer


def bounded_worker(
    app: faust.App,
    loglevel: str,
    stop_timeout_s: float,
    on_timeout: Callable[[], None],
    log_repeat_s: float = 10.0,
) -> Any:
    """A Faust worker that stops within ``stop_timeout_s`` of SIGTERM or SIGINT.

    Faust's graceful stop flushes the producer, commits and leaves the group;
    with the broker away each of those waits on its own timeouts (a stop took
    over 90 s on the local stack). A daemon timer started with the stop calls
    ``on_timeout`` (which exits without committing: the batch in hand is
    replayed by the next owner) if the stop has not finished by then. Its
    root log handlers also hold back repeated warnings and errors
    (``stream.repeat_log``), and the spinner is off.
    """
    from faust.worker import Worker

    from stream.repeat_log import install

    class BoundedWorker(Worker):
        _stop_timer: threading.Timer | None = None

        def on_setup_root_logger(self, logger: Any, level: int) -> None:
            super().on_setup_root_logger(logger, level)
            install(log_repeat_s)

        def _schedule_shutdown(self, signal: Any) -> None:  # mode.Worker's, for SIGTERM and SIGINT
            if self._stop_timer is None:
                self._stop_timer = threading.Timer(stop_timeout_s, on_timeout)
                self._stop_timer.daemon = True
                self._stop_timer.start()
            super()._schedule_shutdown(signal)

    worker = BoundedWorker(app, loglevel=loglevel)
    disable_spinner(worker)
    return worker


def disable_spinner(worker: Any) -> None:
    """Faust's terminal spinner sets the root logger to DEBUG (so it can spin on
    every record) whenever the level is WARNING or above: every Kafka produce
    then builds a debug log record, about 10% of the worker's time."""
    worker.spinner = None


# Keys of the table that are not customers (customer ids may not begin so).
RESERVED_KEYS: Final = (b"__faust", b"__journey")


class TableStore:
    """A table's local store, read and written per partition.

    Faust's stores pick the partition (the RocksDB shard) from the current
    event, for reads as well as writes; the batch path knows the partition of
    every customer and says so instead. Writes also record the changelog
    offset, as Faust's own changelog callback does, so that recovery after a
    restart reads the changelog from there on.
    """

    def __init__(self, table: Any, changelog_topic: str) -> None:
        self._table = table
        self._changelog_topic = changelog_topic

    @property
    def _store(self) -> Any:
        return self._table.data

    def _rocksdb(self) -> bool:
        return hasattr(self._store, "_db_for_partition")

    def get(self, partition: int, key: bytes) -> bytes | None:
        store = self._store
        if self._rocksdb():
            value: bytes | None = store._db_for_partition(partition).get(key)
            return value
        return store.data.get(key)

    def scan(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        """Every customer's (key, value) stored for ``partition`` (after its recovery)."""
        store = self._store
        if self._rocksdb():
            for key, value in store._db_for_partition(partition).items():
                if not key.startswith(RESERVED_KEYS):  # Faust's offset key, the erasure ledger
                    yield key, value
            return
        owner = store._key_partition
        for key, value in list(store.data.items()):
            if owner.get(key) == partition and not key.startswith(RESERVED_KEYS):
                yield key, value

    def write(
        self, partition: int, items: Sequence[tuple[bytes, bytes | None]], changelog_offset: int | None
    ) -> None:
        """Store ``items`` of one partition in order (a value of None deletes
        the key: an erasure), then the changelog offset they reached."""
        store = self._store
        if self._rocksdb():
            import rocksdict

            batch = rocksdict.WriteBatch(raw_mode=True)
            for key, value in items:
                if value is None:
                    batch.delete(key)
                else:
                    batch.put(key, value)
            store._db_for_partition(partition).write(batch)
            index = store._key_index
        else:
            index = store._key_partition
            for key, value in items:
                if value is None:
                    store.data.pop(key, None)
                else:
                    store.data[key] = value
        for key, value in items:
            if value is None:
                index.pop(key, None)
            else:
                index[key] = partition
        if changelog_offset is not None:
            store.set_persisted_offset(TP(self._changelog_topic, partition), changelog_offset)


__all__ = [
    "BatchRoute",
    "Fetch",
    "TableStore",
    "active_partitions",
    "aiokafka_producer",
    "batch_consumer_class",
    "bounded_worker",
    "check_faust_version",
    "disable_spinner",
    "install_batch_path",
    "missing_topics",
    "owner_url",
    "peer_urls",
]
