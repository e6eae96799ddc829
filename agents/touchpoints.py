"""The touchpoints agent: Kafka in, the core applied, table and topics out.

Per batch of up to ``JOURNEY_BATCH_SIZE`` events (``stream.take_events``):

1. Validate each message against the contract (``models.events``) and the
   partitioner; refused ones become dead letters with a reason.
2. Skip records at or below the customer's stored source offset: a replay
   after a crash or rebalance, applied already.
3. Fold each customer's new events through the core in arrival order
   (``models.reducer.fold_batch``): one state and its transitions per customer.
4. Publish dead letters and transitions and wait for the broker's acks.
5. Write each changed customer once (one changelog record per customer per
   batch, not per event): the changelog first, acked, then the local store.

Steps 4 and 5 produce whole aiokafka batches per partition
(``stream/batching.py``) instead of Faust's one-message sends.

Only after all of that does ``take_events`` ack the batch, so Faust commits
the source offsets only for fully processed batches (it flushes the producer,
and so the changelog, before it commits). A crash anywhere replays the batch:
dead letters and transitions may repeat with the same ids, state does not.

If a step fails (the broker gone, say) the worker exits with status 70
without acking, and its restart replays the batch. A batch cancelled by
shutdown is finished first, for the same reason.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from faust.streams import Stream
from faust.types import TP, EventT, StoreT

from models.events import Rejection, Touchpoint, parse_touchpoint
from models.reducer import CustomerFold, fold_batch
from models.state import CustomerState
from stream import app as journey
from stream.batching import PartitionBatches
from stream.faust_compat import aiokafka_producer, use_event_for_table_writes
from stream.partitioning import key_partition

log = logging.getLogger(__name__)

EXIT_BATCH_FAILED = 70  # EX_SOFTWARE: the batch is not acked; the restart replays it
# Dead letters logged one by one per batch; the rest are summed up by reason,
# so a flood of garbage does not flood the log (the DLQ has every one).
LOGGED_DEAD_LETTERS = 20


@dataclass(slots=True)
class DeadLetter:
    """A refused message and why."""

    event: EventT
    reason: str
    detail: str

    def headers(self) -> list[tuple[str, bytes]]:
        msg = self.event.message
        return [
            ("journey.dlq.reason", self.reason.encode()),
            ("journey.dlq.detail", self.detail.encode()),
            ("journey.dlq.source", f"{msg.topic}:{msg.partition}:{msg.offset}".encode()),
        ]


@dataclass(slots=True)
class BatchResult:
    """What one batch produced; the agent publishes and stores it."""

    dead: list[DeadLetter] = field(default_factory=list)
    folds: dict[str, CustomerFold] = field(default_factory=dict)
    last_event: dict[str, EventT] = field(default_factory=dict)
    replayed: int = 0


def plan_batch(events: Sequence[EventT], lookup: Callable[[bytes], Any]) -> BatchResult:
    """Validate, de-duplicate by offset and fold one batch. No I/O but ``lookup``.

    ``lookup(key)`` returns the stored table value for a customer key or None.
    """
    jmap = journey.journey_map
    settings = journey.settings
    out = BatchResult()
    accepted: list[tuple[Touchpoint, EventT]] = []
    stored: dict[str, tuple[int, CustomerState] | None] = {}
    for ev in events:
        msg = ev.message
        parsed = parse_touchpoint(msg.value, jmap, key=msg.key, max_bytes=settings.max_event_bytes)
        if isinstance(parsed, Rejection):
            out.dead.append(DeadLetter(ev, parsed.reason, parsed.detail))
            continue
        key = parsed.customer_id.encode()  # parse_touchpoint checked it equals msg.key
        if key_partition(key, settings.partitions) != msg.partition:
            out.dead.append(
                DeadLetter(ev, "wrong_partition", "produce with Kafka's default (murmur2) partitioner")
            )
            continue
        cid = parsed.customer_id
        if cid not in stored:
            raw = lookup(key)
            stored[cid] = journey.decode_stored(raw) if raw is not None else None
        prior = stored[cid]
        if prior is not None and msg.offset <= prior[0]:
            out.replayed += 1
            continue
        accepted.append((parsed, ev))
        out.last_event[cid] = ev
    states = {cid: (s[1] if s is not None else None) for cid, s in stored.items()}
    try:
        out.folds = fold_batch(jmap, states, (tp for tp, _ in accepted))
    except Exception:
        # A bug in the core must not lose the batch: fold customer by
        # customer and dead-letter the events of any customer that fails.
        log.exception("the journey core raised; isolating the failing customers")
        out.folds = _fold_isolating_failures(accepted, states, out)
    return out


def _fold_isolating_failures(
    accepted: Iterable[tuple[Touchpoint, EventT]],
    states: dict[str, CustomerState | None],
    out: BatchResult,
) -> dict[str, CustomerFold]:
    runs: dict[str, list[tuple[Touchpoint, EventT]]] = {}
    for tp, ev in accepted:
        runs.setdefault(tp.customer_id, []).append((tp, ev))
    folds: dict[str, CustomerFold] = {}
    for cid, run in runs.items():
        try:
            folds.update(fold_batch(journey.journey_map, {cid: states.get(cid)}, (tp for tp, _ in run)))
        except Exception as exc:
            out.last_event.pop(cid, None)
            for _, ev in run:
                out.dead.append(DeadLetter(ev, "processing_error", repr(exc)[:500]))
    return folds


async def publish_and_store(result: BatchResult) -> None:
    """Steps 4 and 5: dead letters and transitions acked, then the changelog
    acked, then the local store. Every record goes to its source event's
    partition number (the topics are co-partitioned with the touchpoints).

    The changelog is written before the local store: if it fails, the worker
    exits and nothing local is ahead of what a new owner would recover.
    """
    settings = journey.settings
    producer = aiokafka_producer(journey.app)
    out = PartitionBatches(producer)
    for i, dl in enumerate(result.dead):
        msg = dl.event.message
        if i < LOGGED_DEAD_LETTERS:
            log.warning(
                "dead letter %s from %s[%d]@%d: %s",
                dl.reason,
                msg.topic,
                msg.partition,
                msg.offset,
                dl.detail,
            )
        out.add(settings.dlq_topic, msg.partition, msg.key, msg.value, dl.headers())
    if len(result.dead) > LOGGED_DEAD_LETTERS:
        rest = Counter(dl.reason for dl in result.dead[LOGGED_DEAD_LETTERS:])
        log.warning("%d more dead letters in this batch: %s", sum(rest.values()), dict(rest))
    for cid, fold in result.folds.items():
        if fold.transitions:
            key, partition = cid.encode(), result.last_event[cid].message.partition
            for t in fold.transitions:
                out.add(settings.transitions_topic, partition, key, orjson.dumps(t.to_record()))
    await out.send()

    changelog = PartitionBatches(producer)
    writes: list[tuple[EventT, bytes, bytes]] = []
    for cid, fold in result.folds.items():
        if fold.applied == 0 or fold.state is None:
            continue
        ev = result.last_event[cid]
        key, value = cid.encode(), journey.encode_stored(ev.message.offset, fold.state)
        writes.append((ev, key, value))
        changelog.add(settings.changelog_topic, ev.message.partition, key, value)
    written = await changelog.send()

    store: StoreT = journey.customers.data  # type: ignore[assignment]  # Faust types .data as a mapping
    for ev, key, value in writes:
        # The store picks the RocksDB shard from the current event; in a
        # batch that must be this customer's own event.
        use_event_for_table_writes(ev)
        store[key] = value
    for (topic, partition), offset in written.items():
        # What Faust's own changelog callback records: recovery after a
        # restart reads the changelog from here on, not from the start.
        store.set_persisted_offset(TP(topic, partition), offset)


def count(result: BatchResult) -> None:
    m = journey.metrics
    m.batches.inc()
    m.events.labels("replayed").inc(result.replayed)
    m.events.labels("rejected").inc(len(result.dead))
    for dl in result.dead:
        m.rejected.labels(dl.reason).inc()
    for fold in result.folds.values():
        m.events.labels("applied").inc(fold.applied)
        m.events.labels("duplicate").inc(fold.duplicates)
        for t in fold.transitions:
            m.transitions.labels(t.from_stage or "none", t.to_stage).inc()


async def process_batch(events: Sequence[EventT]) -> BatchResult:
    result = plan_batch(events, journey.customers.get)
    await publish_and_store(result)
    count(result)
    return result


def _fatal(exc: BaseException) -> None:
    log.critical("batch failed, exiting without acking it so the restart replays it: %r", exc)
    logging.shutdown()
    os._exit(EXIT_BATCH_FAILED)


on_fatal: Callable[[BaseException], None] = _fatal


async def run_to_completion(events: Sequence[EventT]) -> None:
    """Process a batch in its own task; if cancelled (shutdown) finish it first.

    The own task matters twice: cancelling the agent does not cut a batch in
    half, and the current-event context set for table writes stays in the
    task's copy of the context, out of the stream's.
    """
    task = asyncio.ensure_future(process_batch(events))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        try:
            await task
        except Exception as exc:
            on_fatal(exc)
        raise
    except Exception as exc:
        on_fatal(exc)
        raise


@journey.app.agent(journey.touchpoints_topic, name="track")  # type: ignore[arg-type]
async def track(stream: Stream) -> None:
    """Fold touchpoints in batches (Faust hands a concrete Stream)."""
    settings = journey.settings
    async for batch in stream.take_events(settings.batch_size, within=settings.batch_window_s):
        await run_to_completion(batch)
