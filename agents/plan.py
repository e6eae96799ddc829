"""The pure batch planner: one fetch's records in, what to publish and store out.

No Kafka, Faust or I/O here but the ``load`` it is given. Per record, in
each partition's offset order:

1. Validate against the contract (``models.events``) and the partitioner;
   a refused record becomes a :class:`DeadLetter` with a reason. A valid
   event on another partition than its key's murmur2 partition (a client
   with another partitioner) becomes a :class:`Move`: the agent produces it
   again there, in arrival order, and it is applied when it comes back. A record
   with the clock header is the worker's own clock reading for a customer
   whose deadline came (``agents.clock``), applied in order like an event.
2. Skip a record at or below its customer's stored source offset: a replay
   after a crash or rebalance, applied already.
3. Fold each customer's new events through the core in arrival order
   (``models.reducer.fold_batch``): one state and its transitions per customer.

4. Build what each fold turns into bytes: output records, the changelog
   value, the next deadline.

Steps 3 and 4 run per customer, isolated: if anything raises for one
customer, that customer's events in the batch are dead-lettered as
``processing_error`` and its stored state stays as it was. One customer's
data never stops the worker.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from models.effects import deadline_of
from models.events import (
    CLOCK_HEADER,
    DELIVERY_HEADER,
    ERASE_HEADER,
    GROUP_HEADER,
    ODDS_HEADER,
    Erase,
    Rejection,
    Touchpoint,
    parse_clock,
    parse_delivery,
    parse_erase,
    parse_odds,
    parse_touchpoint,
)
from models.identity import (
    LINK_HEADER,
    MERGE_HEADER,
    REKEYED_HEADER,
    parse_link,
    parse_merge,
)
from models.journey_map import JourneyMap
from models.outputs import Nudge, OddsDue
from models.reducer import CustomerFold, Item, fold_customer
from models.state import CustomerState
from stream.engine.codec import encode_stored
from stream.engine.partitioning import key_partition

log = logging.getLogger(__name__)


class SourceRecord(Protocol):
    """What the planner reads of a Kafka record (aiokafka's ConsumerRecord fits)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...
    @property
    def timestamp(self) -> int | None: ...


# The header of an event the worker moved to its key's partition: the
# coordinates it arrived at (topic:partition:offset).
MOVED_HEADER = "journey-moved-from"


INTERNAL_HEADERS = frozenset(
    (
        CLOCK_HEADER,
        ERASE_HEADER,
        DELIVERY_HEADER,
        MOVED_HEADER,
        LINK_HEADER,
        MERGE_HEADER,
        REKEYED_HEADER,
        ODDS_HEADER,
    )
)


def internal_kind(headers: Sequence[tuple[str, bytes]] | None) -> str | None:
    """CLOCK_HEADER, ERASE_HEADER, DELIVERY_HEADER, LINK_HEADER or
    MERGE_HEADER for the worker's own records, MOVED_HEADER or
    REKEYED_HEADER for an event the worker moved or re-keyed, None for an
    app's event."""
    if headers:
        for k, _ in headers:
            if k in INTERNAL_HEADERS:
                return k
    return None


def _foreign(headers: Sequence[tuple[str, bytes]], group: bytes) -> bool:
    """Whether a record names another tracker group than ``group`` (GROUP_HEADER)."""
    for k, v in headers:
        if k == GROUP_HEADER:
            return v != group
    return False


def dlq_headers(reason: str, detail: str, source: str) -> list[tuple[str, bytes]]:
    """The headers of a dead letter (README "The event contract")."""
    return [
        ("journey.dlq.reason", reason.encode()),
        ("journey.dlq.detail", detail.encode()),
        ("journey.dlq.source", source.encode()),
    ]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A refused record and why."""

    record: SourceRecord
    reason: str
    detail: str

    @property
    def source(self) -> str:
        return f"{self.record.topic}:{self.record.partition}:{self.record.offset}"

    def headers(self) -> list[tuple[str, bytes]]:
        return dlq_headers(self.reason, self.detail, self.source)


@dataclass(frozen=True, slots=True)
class Move:
    """A valid event that arrived on another partition than its key's: it is
    produced again to ``home``, with :data:`MOVED_HEADER`, in arrival order."""

    record: SourceRecord
    home: int

    def headers(self) -> list[tuple[str, bytes]]:
        r = self.record
        return [*r.headers, (MOVED_HEADER, f"{r.topic}:{r.partition}:{r.offset}".encode())]


@dataclass(slots=True)
class CustomerUpdate:
    """One customer's fold in this batch, with where it is stored."""

    customer_id: str
    partition: int
    fold: CustomerFold
    last_offset: int  # source offset of the customer's last event in the batch
    before: CustomerState | None = None  # the stored state the batch folded from
    # Built inside the customer's isolation (plan_batch):
    records: list[tuple[str, bytes]] = field(default_factory=list)  # (settings topic field, value)
    erase_offset: int | None = None  # source offset of the batch's last erasure record for the customer
    encoded: bytes | None = None  # the changelog value, if the state changed and is kept
    deadline: int | None = None  # the next clock deadline of the new state
    # records for other customers' owners (models.identity.Forward), as
    # (partition, key, value, headers) for the touchpoints topic
    forwards: list[tuple[int, bytes, bytes, list[tuple[str, bytes]]]] = field(default_factory=list)


@dataclass(slots=True)
class BatchPlan:
    """What one fetch produced; the agent publishes and stores it."""

    dead: list[DeadLetter] = field(default_factory=list)
    moves: list[Move] = field(default_factory=list)
    updates: list[CustomerUpdate] = field(default_factory=list)
    replayed: int = 0
    foreign: int = 0  # another tracker group's own records (GROUP_HEADER), not ours to apply
    clocks: int = 0  # clock readings among the records
    by_type: Counter[tuple[str, str]] = field(default_factory=Counter)  # (type, channel) of new touchpoints
    event_times: list[int] = field(default_factory=list)  # event time of each new touchpoint

    @property
    def changed(self) -> list[CustomerUpdate]:
        """Updates that changed the state (to be written, or erased)."""
        return [u for u in self.updates if u.fold.changed and (u.fold.state is not None or u.fold.erased)]


# (partition, key) -> (source offset of the last event applied, state), or None for a new customer
Load = Callable[[int, bytes], tuple[int, CustomerState] | None]


def plan_batch(
    jmap: JourneyMap,
    records: Mapping[int, Sequence[SourceRecord]],
    load: Load,
    *,
    partitions: int,
    max_event_bytes: int,
    max_future_ms: int | None = None,
    group: str | None = None,
) -> BatchPlan:
    """Validate, skip replays and fold one fetch. ``load(partition, key)``
    returns a customer's stored offset and state, or None. An event time
    later than its record's Kafka timestamp plus ``max_future_ms`` is
    refused (``in_future``). ``group``: this worker's app id; a worker's own
    record marked with another group (``GROUP_HEADER``) is skipped."""
    out = BatchPlan()
    own_group = group.encode() if group is not None else None
    runs: dict[str, list[tuple[Item, SourceRecord]]] = {}
    stored: dict[str, tuple[int, CustomerState] | None] = {}
    homes: dict[str, int] = {}  # customer -> the partition its key belongs on
    dead = out.dead
    for partition, recs in records.items():
        for rec in recs:
            parsed: Item | Rejection
            not_after = None
            if max_future_ms is not None and rec.timestamp is not None and rec.timestamp >= 0:
                not_after = rec.timestamp + max_future_ms
            kind = internal_kind(rec.headers)
            if kind is not None and own_group is not None and _foreign(rec.headers, own_group):
                out.foreign += 1
                continue
            if kind == CLOCK_HEADER:
                parsed = parse_clock(rec.value, rec.key, not_after)
                out.clocks += 1
            elif kind == ERASE_HEADER:
                parsed = parse_erase(rec.value, rec.key)
            elif kind == DELIVERY_HEADER:
                parsed = parse_delivery(rec.value, rec.key)
            elif kind == LINK_HEADER:
                parsed = parse_link(rec.value, rec.key)
            elif kind == MERGE_HEADER:
                parsed = parse_merge(rec.value, rec.key, jmap)
            elif kind == ODDS_HEADER:
                parsed = parse_odds(rec.value, rec.key)
            else:
                parsed = parse_touchpoint(
                    rec.value, jmap, key=rec.key, max_bytes=max_event_bytes, not_after=not_after
                )
            if isinstance(parsed, Rejection):
                dead.append(DeadLetter(rec, parsed.reason, parsed.detail))
                continue
            cid = parsed.customer_id
            home = homes.get(cid)
            if home is None:
                # A customer stored on this partition belongs here (only its
                # home partition ever stores it): no murmur2 for them. Else
                # the key's partition (parse_touchpoint checked the key is the id).
                here = load(partition, rec.key)  # type: ignore[arg-type]
                home = homes[cid] = partition if here is not None else key_partition(rec.key, partitions)
                if home == partition:
                    stored[cid] = here
            if home != partition:
                if kind is None:  # an app's event, partitioned otherwise (librdkafka's CRC32, say)
                    out.moves.append(Move(rec, home))
                else:  # the worker's own records, or one it moved already: never moved (again)
                    dead.append(
                        DeadLetter(
                            rec, "wrong_partition", "produce with Kafka's default (murmur2) partitioner"
                        )
                    )
                continue
            if cid in stored:
                prior = stored[cid]
            else:
                prior = stored[cid] = load(partition, rec.key)  # type: ignore[arg-type]
            if prior is not None and rec.offset <= prior[0]:
                out.replayed += 1
                continue
            run = runs.get(cid)
            if run is None:
                run = runs[cid] = []
            run.append((parsed, rec))
    updates = out.updates
    for cid, run in runs.items():
        prior = stored[cid]
        before = prior[1] if prior is not None else None
        last = run[-1][1]
        try:
            fold = fold_customer(jmap, before, [item for item, _ in run])
            update = CustomerUpdate(cid, last.partition, fold, last.offset, before)
            for item, rec in run:
                if isinstance(item, Erase):  # owed outside the table even if nothing was stored
                    update.erase_offset = rec.offset
            _build(jmap, update, partitions)
        except Exception as exc:
            # One customer's data never stops the worker: its events of this
            # batch go to the dead-letter topic, its stored state stays.
            # (the worker's log filter, stream.engine.repeat_log, holds back repeats with a count)
            log.error(
                "the journey core raised for customer %r; its events are dead-lettered",
                cid[:64],
                exc_info=exc,
            )
            detail = f"the tracker could not apply this customer's events: {exc!r}"[:500]
            for _, rec in run:
                dead.append(DeadLetter(rec, "processing_error", detail))
            continue
        updates.append(update)
        if fold.refused:  # identity links the guards refused
            by_item = {id(item): rec for item, rec in run}
            for item, reason, detail in fold.refused:
                dead.append(DeadLetter(by_item[id(item)], reason, detail))
        for item, _ in run:
            if isinstance(item, Touchpoint):
                out.by_type[item.type, item.channel] += 1
                out.event_times.append(item.ts)
    return out


def _build(jmap: JourneyMap, u: CustomerUpdate, partitions: int) -> None:
    """Everything the customer's fold turns into bytes or index entries: the
    output records, the changelog value, the next deadline. Done here, inside
    the customer's isolation, so nothing later can raise on its data."""
    fold = u.fold
    state = fold.state
    records = u.records
    for t in fold.transitions:
        records.append(("transitions_topic", orjson.dumps(t.to_record())))
    for o in fold.outputs:
        if isinstance(o, Nudge):  # goes through the gate (agents.nudges); checked here all the same
            o.to_record(sent_at=o.created_at)
        elif isinstance(o, OddsDue):  # a question for the worker (agents.odds), not a record
            continue
        else:
            records.append((o.topic, orjson.dumps(o.to_record())))
    for f in fold.forwards:
        key = f.key.encode()
        u.forwards.append((key_partition(key, partitions), key, f.value, [(f.header, f.header_value)]))
    if state is not None:
        if fold.changed:
            u.encoded = encode_stored(u.last_offset, state)
        u.deadline = deadline_of(jmap, state)
