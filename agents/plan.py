"""The pure batch planner: one fetch's records in, what to publish and store out.

No Kafka, Faust or I/O here but the ``load`` it is given. Per record, in
each partition's offset order:

1. Validate against the contract (``models.events``) and the partitioner;
   a refused record becomes a :class:`DeadLetter` with a reason. A record
   with the clock header is the worker's own clock reading for a customer
   whose deadline came (``stream.clock``), applied in order like an event.
2. Skip a record at or below its customer's stored source offset: a replay
   after a crash or rebalance, applied already.
3. Fold each customer's new events through the core in arrival order
   (``models.reducer.fold_batch``): one state and its transitions per customer.

If the core raises, customers are folded one by one and the events of any
customer that still fails are dead-lettered as ``processing_error``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from models.events import (
    CLOCK_HEADER,
    ERASE_HEADER,
    Clock,
    Erase,
    Rejection,
    Touchpoint,
    parse_clock,
    parse_erase,
    parse_touchpoint,
)
from models.journey_map import JourneyMap
from models.reducer import CustomerFold, fold_batch
from models.state import CustomerState
from stream.partitioning import key_partition

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


def internal_kind(headers: Sequence[tuple[str, bytes]] | None) -> str | None:
    """CLOCK_HEADER or ERASE_HEADER for the worker's own records, None for an app's event."""
    if headers:
        for k, _ in headers:
            if k in (CLOCK_HEADER, ERASE_HEADER):
                return k
    return None


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
        return [
            ("journey.dlq.reason", self.reason.encode()),
            ("journey.dlq.detail", self.detail.encode()),
            ("journey.dlq.source", self.source.encode()),
        ]


@dataclass(slots=True)
class CustomerUpdate:
    """One customer's fold in this batch, with where it is stored."""

    customer_id: str
    partition: int
    fold: CustomerFold
    last_offset: int  # source offset of the customer's last event in the batch
    before: CustomerState | None = None  # the stored state the batch folded from


@dataclass(slots=True)
class BatchPlan:
    """What one fetch produced; the agent publishes and stores it."""

    dead: list[DeadLetter] = field(default_factory=list)
    updates: list[CustomerUpdate] = field(default_factory=list)
    replayed: int = 0
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
) -> BatchPlan:
    """Validate, skip replays and fold one fetch. ``load(partition, key)``
    returns a customer's stored offset and state, or None."""
    out = BatchPlan()
    accepted: list[tuple[Touchpoint | Clock | Erase, SourceRecord]] = []
    stored: dict[str, tuple[int, CustomerState] | None] = {}
    where: dict[str, tuple[int, int]] = {}  # customer -> (partition, last offset)
    homes: dict[str, int] = {}  # customer -> the partition its key belongs on
    dead = out.dead
    for partition, recs in records.items():
        for rec in recs:
            parsed: Touchpoint | Clock | Erase | Rejection
            kind = internal_kind(rec.headers)
            if kind == CLOCK_HEADER:
                parsed = parse_clock(rec.value, rec.key)
                out.clocks += 1
            elif kind == ERASE_HEADER:
                parsed = parse_erase(rec.value, rec.key)
            else:
                parsed = parse_touchpoint(rec.value, jmap, key=rec.key, max_bytes=max_event_bytes)
            if isinstance(parsed, Rejection):
                dead.append(DeadLetter(rec, parsed.reason, parsed.detail))
                continue
            cid = parsed.customer_id
            home = homes.get(cid)
            if home is None:
                # parse_touchpoint checked the key equals the customer id
                home = homes[cid] = key_partition(rec.key, partitions)
            if home != partition:
                dead.append(
                    DeadLetter(rec, "wrong_partition", "produce with Kafka's default (murmur2) partitioner")
                )
                continue
            if cid in stored:
                prior = stored[cid]
            else:
                prior = stored[cid] = load(partition, rec.key)  # type: ignore[arg-type]
            if prior is not None and rec.offset <= prior[0]:
                out.replayed += 1
                continue
            accepted.append((parsed, rec))
            where[cid] = (partition, rec.offset)
            if isinstance(parsed, Touchpoint):
                out.by_type[parsed.type, parsed.channel] += 1
                out.event_times.append(parsed.ts)
    states = {cid: (s[1] if s is not None else None) for cid, s in stored.items()}
    try:
        folds = fold_batch(jmap, states, (tp for tp, _ in accepted))
    except Exception:
        log.exception("the journey core raised; isolating the failing customers")
        folds = _fold_isolating_failures(jmap, accepted, states, dead)
    out.updates = [
        CustomerUpdate(cid, where[cid][0], fold, where[cid][1], states.get(cid))
        for cid, fold in folds.items()
    ]
    return out


def _fold_isolating_failures(
    jmap: JourneyMap,
    accepted: Iterable[tuple[Touchpoint | Clock | Erase, SourceRecord]],
    states: dict[str, CustomerState | None],
    dead: list[DeadLetter],
) -> dict[str, CustomerFold]:
    runs: dict[str, list[tuple[Touchpoint | Clock | Erase, SourceRecord]]] = {}
    for tp, rec in accepted:
        runs.setdefault(tp.customer_id, []).append((tp, rec))
    folds: dict[str, CustomerFold] = {}
    for cid, run in runs.items():
        try:
            folds.update(fold_batch(jmap, {cid: states.get(cid)}, (tp for tp, _ in run)))
        except Exception as exc:
            for _, rec in run:
                dead.append(DeadLetter(rec, "processing_error", repr(exc)[:500]))
    return folds
