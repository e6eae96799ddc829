"""The touchpoints agent: whole fetched batches in, the core applied, table and topics out.

The batch pipeline (``stream.engine.pipeline``) hands every fetch of the
touchpoints topic to :meth:`TouchpointsAgent.handle` as records per
partition. Per fetch:

1. Plan it (``agents.plan.plan_batch``, pure): validate, skip replays by
   offset, fold each customer's new events through the core.
2. Produce dead letters, transitions, stall, drift and outcome records, and
   encode the changelog records while the broker's acks come. The next
   fetch plans from the new states from here on (the state cache holds
   them until they are stored). What follows is the rest of the batch
   (``stream.engine.pipeline``: it overlaps the next fetch).
3. Once the outputs are acked, produce each changed customer's changelog
   record (one per customer); count the metrics and the stage counts while
   its acks come; then write the local store with the changelog offset
   reached.
4. Put each customer's next deadline in the deadline index, the nudges
   decided in the outbox (``agents.nudges``; sent now if Redis answers), and
   each changed customer in the serving view's pending map
   (``stream.redis.view``: written by its own task, never waited for).

Only after all of that does the consumer move the partition's commit
position past the fetch, and Faust commits it on its interval (after
flushing the producer). A crash anywhere replays the fetch: dead letters and
transitions may repeat with the same ids, state does not. A rebalance or a
shutdown waits for the fetch in hand to finish before giving up partitions.

If a step fails (the broker gone, say) the worker exits with status 70
without moving the position, and its restart replays the fetch.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable

from agents.clock import wall_clock_ms
from agents.erasures import ErasureLedger
from agents.nudges import NudgeDispatcher
from agents.odds import OddsChecker
from agents.plan import BatchPlan, plan_batch
from models.events import GROUP_HEADER
from models.journey_map import JourneyMap
from models.outputs import ChurnRisk, IdentityRecord, Nudge, OddsDue, StallRecord
from stream.engine.batching import NewBatches, PartitionBatches, Sent
from stream.engine.deadlines import DeadlineIndex
from stream.engine.metrics import TrackerMetrics
from stream.engine.pipeline import BatchRest, Fetch
from stream.engine.stage_counts import StageCounts
from stream.engine.state_cache import StateCache, Stored
from stream.faust.store import TableStore
from stream.redis.view import ServingView
from stream.settings import Settings

log = logging.getLogger(__name__)

EXIT_BATCH_FAILED = 70  # EX_SOFTWARE: the fetch is not committed; the restart replays it
# Dead letters logged one by one per batch; the rest are summed up by reason,
# so a flood of garbage does not flood the log (the DLQ has every one).
LOGGED_DEAD_LETTERS = 20
# Moved events are reported at most this often, with how many there were.
MOVED_LOG_EVERY_S = 60.0


def exit_on_failure(exc: BaseException) -> None:
    log.critical("batch failed, exiting without committing it so the restart replays it: %r", exc)
    logging.shutdown()
    os._exit(EXIT_BATCH_FAILED)


class TouchpointsAgent:
    """Moves one fetch at a time between Kafka, the table and the metrics.

    Built by ``stream.worker.build_worker``, which hands it every part it
    writes to; it builds none of them.
    """

    def __init__(
        self,
        settings: Settings,
        jmap: JourneyMap,
        *,
        store: TableStore,
        states: StateCache,
        batches: NewBatches,
        metrics: TrackerMetrics,
        stages: StageCounts,
        deadlines: DeadlineIndex,
        nudges: NudgeDispatcher,
        ledger: ErasureLedger,
        view: ServingView | None = None,
        clock: Callable[[], int] = wall_clock_ms,
        odds: OddsChecker | None = None,
    ) -> None:
        self.settings = settings
        self.jmap = jmap
        self.table = store
        self.states = states
        self.batches = batches
        self.metrics = metrics
        self.stages = stages
        self.deadlines = deadlines
        self.nudges = nudges
        self.ledger = ledger
        self.view = view
        self.clock = clock
        self.odds = odds
        self._exits = frozenset(st.name for st in jmap.stages if st.exit)
        self._moved, self._moved_logged = 0, float("-inf")

    def plan(self, fetch: Fetch) -> BatchPlan:
        return plan_batch(
            self.jmap,
            fetch.records,
            self.states.load,
            partitions=self.settings.partitions,
            max_event_bytes=self.settings.max_event_bytes,
            max_future_ms=int(self.settings.max_future_s * 1000),
            group=self.settings.app_id,
        )

    async def handle(self, fetch: Fetch) -> BatchRest:
        """Plan the fetch and produce its outputs; return the rest of the batch
        (``stream.engine.pipeline`` says when it runs)."""
        plan = self.plan(fetch)
        outputs = await self.publish(plan)
        # Each wait for the broker's acks overlaps work that needs none:
        # encoding the changelog while the outputs' acks come, the metrics
        # and stage counts while the changelog's come, and the next fetch
        # throughout. If an ack fails the worker exits, and what only lived
        # in memory goes with it.
        changelog = self.changelog(plan)
        return self.finish(plan, outputs, changelog)

    async def finish(self, plan: BatchPlan, outputs: Sent, changelog: Changelog) -> None:
        """The rest of a batch: the outputs acked, then the changelog, acked,
        then the local store, the indexes, the nudges and the view."""
        await outputs.acked()
        written = await changelog.start()
        self.count(plan)
        for u in plan.changed:
            self.stages.update(u.partition, u.before, u.fold.state)
        self.store(changelog, await written.acked())
        self.follow_up(plan)
        # The erasures' Redis deletes (the ledger, stored with this batch)
        # and the nudges decided, unless Redis is down or a flush runs: then
        # the clock tick does them.
        await self.nudges.flush(from_batch=True)
        if self.view is not None:
            self.view.kick()

    def follow_up(self, plan: BatchPlan) -> None:
        """Next deadlines into the index, changed customers into the serving
        view, decided nudges into the outbox; the erased customers' outbox
        entries go."""
        for u in plan.updates:
            state = u.fold.state
            self.deadlines.set(u.partition, u.customer_id, u.deadline)
            if u.fold.changed and self.view is not None:
                self.view.put(u.partition, u.customer_id, u.last_offset, state)
            if u.fold.erased or (state is not None and state.merged_into is not None):
                self.nudges.forget(u.customer_id)  # erased, or merged: its nudges went with its state
                if self.odds is not None:
                    self.odds.forget(u.customer_id)
            for o in u.fold.outputs:
                if isinstance(o, Nudge):
                    self.nudges.submit(u.partition, o)
                elif isinstance(o, OddsDue) and self.odds is not None and state is not None:
                    self.odds.submit(u.partition, o, state)

    async def publish(self, plan: BatchPlan) -> Sent:
        """Dead letters, transitions and the other outputs, produced; the caller
        waits for the acks. Every record goes to its source partition number
        (the topics are co-partitioned with the touchpoints)."""
        settings = self.settings
        out = self.batches()
        for i, dl in enumerate(plan.dead):
            rec = dl.record
            if i < LOGGED_DEAD_LETTERS:
                log.warning(
                    "dead letter %s from %s[%d]@%d: %s",
                    dl.reason,
                    rec.topic,
                    rec.partition,
                    rec.offset,
                    dl.detail,
                )
            out.add(settings.dlq_topic, rec.partition, rec.key, rec.value, dl.headers())
        if len(plan.dead) > LOGGED_DEAD_LETTERS:
            rest = Counter(dl.reason for dl in plan.dead[LOGGED_DEAD_LETTERS:])
            log.warning("%d more dead letters in this batch: %s", sum(rest.values()), dict(rest))
        if plan.moves:
            self._moved += len(plan.moves)
            now = time.monotonic()
            if now - self._moved_logged >= MOVED_LOG_EVERY_S:
                log.warning(
                    "%d events arrived on another partition than their key's murmur2 partition since the "
                    "last report, and were moved there: the producer partitions otherwise (librdkafka: set "
                    "partitioner=murmur2_random)",
                    self._moved,
                )
                self._moved, self._moved_logged = 0, now
        group = (GROUP_HEADER, settings.app_id.encode())
        for mv in plan.moves:
            rec = mv.record
            headers = [*mv.headers(), group]
            out.add(settings.touchpoints_topic, mv.home, rec.key, rec.value, headers, rec.timestamp)
        for u in plan.updates:
            if u.records:  # built by the planner; nudges go through the gate (agents.nudges)
                key = u.customer_id.encode()
                for topic, value in u.records:
                    out.add(getattr(settings, topic), u.partition, key, value)
            # Links, merges, re-keyed events and merged ids' erasures, for
            # other customers' owners (models.identity): acked before this
            # batch's changelog, so a crash re-sends them (same ids) rather
            # than lose them.
            for partition, fkey, value, headers in u.forwards:
                out.add(settings.touchpoints_topic, partition, fkey, value, [*headers, group])
        return await out.start()

    def changelog(self, plan: BatchPlan) -> Changelog:
        """Each changed customer's changelog record, encoded: a tombstone for an
        erasure (first, so compaction drops the old values), then the new value.
        The next batch plans from the new values until they are stored."""
        out = Changelog(self.batches())
        topic = self.settings.changelog_topic
        for u in plan.updates:
            if u.erase_offset is not None:
                self.ledger.add(u.partition, u.customer_id, u.erase_offset)
        # The erasure ledger goes with the tombstones it is owed for (agents.erasures).
        for partition, key, value in self.ledger.writes():
            out.add(topic, partition, key, value)
        for u in plan.changed:
            key = u.customer_id.encode()
            if u.fold.erased:
                out.add(topic, u.partition, key, None)
            stored = None
            if u.fold.state is not None and u.encoded is not None:
                stored = (u.last_offset, u.fold.state)
                out.add(topic, u.partition, key, u.encoded)
            self.states.hold(u.partition, key, stored)
            out.held.append((u.partition, key, stored))
        return out

    def store(self, changelog: Changelog, written: dict[tuple[str, int], int]) -> None:
        """The local store, once the changelog is acked (``written``: its last
        offsets), so nothing local is ahead of what a new owner would recover."""
        topic = self.settings.changelog_topic
        for partition, items in changelog.writes.items():
            self.table.write(partition, items, written.get((topic, partition)))
        for partition, key, stored in changelog.held:
            self.states.stored(partition, key, stored)

    def count(self, plan: BatchPlan) -> None:
        """The batch's metrics: tallied per label set first, then one
        ``labels()`` lookup each (they cost more than the increments)."""
        m = self.metrics
        m.batches.inc()
        m.events.labels("replayed").inc(plan.replayed)
        if plan.foreign:
            m.events.labels("foreign").inc(plan.foreign)
        if plan.moves:
            m.events.labels("moved").inc(len(plan.moves))
        m.events.labels("rejected").inc(len(plan.dead))
        for reason, n in Counter(dl.reason for dl in plan.dead).items():
            m.rejected.labels(reason).inc(n)
        applied = duplicates = win_backs = churn_risks = merged = rekeyed = refused = 0
        exits = self._exits
        by_name = self.jmap.stage_by_name
        moves: Counter[tuple[str, str]] = Counter()
        durations: dict[str, list[float]] = {}
        stalls: Counter[str] = Counter()
        forgotten: Counter[str] = Counter()
        for u in plan.updates:
            if u.fold.forgotten and u.before is not None:
                forgotten[u.before.stage] += 1
            applied += u.fold.applied
            duplicates += u.fold.duplicates
            merged += u.fold.merges
            rekeyed += u.fold.rekeyed
            for t in u.fold.transitions:
                moves[(t.from_stage or "none", t.to_stage)] += 1
                if t.from_stage is not None and t.previous_stage_ms is not None:
                    durations.setdefault(t.from_stage, []).append(t.previous_stage_ms / 1000)
            for o in u.fold.outputs:
                if isinstance(o, IdentityRecord):
                    refused += o.outcome == "refused"  # the guards' and the id bound's alike
                elif isinstance(o, StallRecord):
                    stalls[o.stage] += 1
                elif isinstance(o, ChurnRisk):
                    churn_risks += 1
        for (frm, to), n in moves.items():
            m.transitions.labels(frm, to).inc(n)
            if frm == "none":
                continue
            if frm in exits and to not in exits:
                win_backs += n
            target = by_name[to]
            if not target.exit and target.index > by_name[frm].index:
                m.conversions.labels(frm, to).inc(n)
        for stage, seconds in durations.items():
            m.stage_duration.observe_many(seconds, (stage,))
        for stage, n in stalls.items():
            m.stalls.labels(stage).inc(n)
        for stage, n in forgotten.items():
            m.forgotten.labels(stage).inc(n)
        if win_backs:
            m.win_backs.inc(win_backs)
        if churn_risks:
            m.churn_risks.inc(churn_risks)
        for outcome, n in (("merged", merged), ("rekeyed", rekeyed), ("refused", refused)):
            if n:
                m.identities.labels(outcome).inc(n)
        for (etype, channel), n in plan.by_type.items():
            m.events_by_type.labels(etype, channel).inc(n)
        if plan.event_times:
            now_s = self.clock() / 1000
            m.event_lag.observe_many(max(0.0, now_s - ts / 1000) for ts in plan.event_times)
        m.events.labels("applied").inc(applied)
        m.events.labels("duplicate").inc(duplicates)


class Changelog:
    """A batch's changelog records, produced together, and the same writes per
    partition for the local store."""

    def __init__(self, batches: PartitionBatches) -> None:
        self.batches = batches
        self.writes: dict[int, list[tuple[bytes, bytes | None]]] = {}
        self.held: list[tuple[int, bytes, Stored | None]] = []  # the decoded values, for the cache

    def add(self, topic: str, partition: int, key: bytes, value: bytes | None) -> None:
        self.writes.setdefault(partition, []).append((key, value))
        self.batches.add(topic, partition, key, value)

    async def start(self) -> Sent:
        return await self.batches.start()
