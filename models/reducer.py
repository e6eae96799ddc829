"""The journey reducer: (map, state, event) -> (new state, what happened).

Semantics (README "Journey semantics" says the same for users):

* Events apply in arrival order per customer (Kafka partition order). Event
  time is recorded, never used to reorder: ``stage_entered_at`` is the time of
  the event that caused the move, ``last_event_at`` the latest time seen.
* A customer's first event puts them in the stage that event type enters, or
  in the map's first stage if it enters none (any touch means awareness).
* Afterwards a customer moves only forward: an event whose stage lies ahead
  moves them there (skipping is allowed); one whose stage lies behind is
  counted and moves nothing. Two exceptions: an exit stage (``defected``) is
  reached from anywhere, and the map's explicit ``moves`` are checked first
  (a repeat purchase -> loyalty, a win-back purchase -> purchase, ...).
* An event whose ``event_id`` is among the customer's last ``DEDUP_WINDOW``
  applied ids is a duplicate: nothing changes.
* Time spent in the previous stage is ``max(0, event time - stage_entered_at)``:
  a late event cannot give a negative duration.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from models.events import Touchpoint
from models.journey_map import JourneyMap, Stage
from models.state import DEDUP_WINDOW, CustomerState, Transition


@dataclass(frozen=True, slots=True)
class Step:
    """The result of applying one event."""

    state: CustomerState
    transition: Transition | None = None
    duplicate: bool = False


def target_stage(jmap: JourneyMap, current: str | None, event_type: str) -> Stage | None:
    """The stage an event of ``event_type`` moves a customer in ``current`` to, if any.

    Answered from a table built once per map (:func:`_stage_table`); the rule
    itself is :func:`stage_rule`.
    """
    table = _TABLES.get(id(jmap))
    if table is None or table[0] is not jmap:
        table = _TABLES[id(jmap)] = (jmap, _stage_table(jmap))
    try:
        return table[1][current, event_type]
    except KeyError:
        return stage_rule(jmap, current, event_type)


def stage_rule(jmap: JourneyMap, current: str | None, event_type: str) -> Stage | None:
    """The movement rule (README "Journey semantics")."""
    if current is None:
        return jmap.entry_stage.get(event_type, jmap.first_stage)
    for move in jmap.moves:
        if event_type in move.on and current in move.from_:
            return jmap.stage_by_name[move.to] if move.to != current else None
    target = jmap.entry_stage.get(event_type)
    if target is None or target.name == current:
        return None
    here = jmap.stage_by_name[current]
    # Exit stages are reached from anywhere; other stages only forward.
    # A customer in an exit stage comes back only through explicit moves.
    if not here.exit and (target.exit or target.index > here.index):
        return target
    return None


def _stage_table(jmap: JourneyMap) -> dict[tuple[str | None, str], Stage | None]:
    currents: list[str | None] = [None, *jmap.stage_names]
    return {(c, t): stage_rule(jmap, c, t) for c in currents for t in jmap.event_types}


# Maps seen by target_stage, by id, each with its table (the map is kept so an id is never reused).
_TABLES: dict[int, tuple[JourneyMap, dict[tuple[str | None, str], Stage | None]]] = {}


def apply(jmap: JourneyMap, state: CustomerState | None, ev: Touchpoint) -> Step:
    """Apply one event to one customer's state (``None``: a new customer)."""
    if state is not None and ev.event_id in state.recent_ids:
        return Step(state, None, duplicate=True)

    current = state.stage if state is not None else None
    target = target_stage(jmap, current, ev.type)

    if state is None:
        assert target is not None  # a new customer always lands somewhere
        new = CustomerState(
            customer_id=ev.customer_id,
            stage=target.name,
            stage_entered_at=ev.ts,
            stages={target.name: ev.ts},
            first_touch_channel=ev.channel,
            first_touch_at=ev.ts,
            last_event_at=ev.ts,
            events=1,
            type_counts={ev.type: 1},
            recent_ids=(ev.event_id,),
        )
        return Step(
            new, Transition(ev.customer_id, None, target.name, ev.event_id, ev.type, ev.channel, ev.ts, None)
        )

    counts = dict(state.type_counts)
    counts[ev.type] = counts.get(ev.type, 0) + 1
    recent = (*state.recent_ids[-(DEDUP_WINDOW - 1) :], ev.event_id)
    transition: Transition | None = None
    stage, entered, stages = state.stage, state.stage_entered_at, state.stages
    if target is not None:
        transition = Transition(
            ev.customer_id,
            state.stage,
            target.name,
            ev.event_id,
            ev.type,
            ev.channel,
            ev.ts,
            max(0, ev.ts - state.stage_entered_at),
        )
        stage, entered = target.name, ev.ts
        if target.name not in stages:
            stages = {**stages, target.name: ev.ts}
    new = CustomerState(
        customer_id=state.customer_id,
        stage=stage,
        stage_entered_at=entered,
        stages=stages,
        first_touch_channel=state.first_touch_channel,
        first_touch_at=state.first_touch_at,
        last_event_at=max(state.last_event_at, ev.ts),
        events=state.events + 1,
        type_counts=counts,
        recent_ids=recent,
    )
    return Step(new, transition)


@dataclass(slots=True)
class CustomerFold:
    """What folding a run of one customer's events produced."""

    state: CustomerState | None
    transitions: list[Transition] = field(default_factory=list)
    applied: int = 0
    duplicates: int = 0


# Id look-ups a working state answers by scanning its list before it builds a set.
_LIST_LOOKUPS = 4


class _Working:
    """A customer's state while one batch is folded: mutable, frozen once at the end.

    ``apply`` builds a new frozen state per event, copying the recent ids
    (up to ``DEDUP_WINDOW``) and the counts each time; a batch folds many
    events of a customer, so it copies once on the way in, mutates, and
    freezes once on the way out. ``recent`` keeps the window's order and
    ``seen`` the same ids for the look-up. The hypothesis properties hold it
    to :func:`apply`: :func:`fold` is still the plain, event-by-event fold.
    """

    __slots__ = (
        "customer_id",
        "events",
        "first_touch_at",
        "first_touch_channel",
        "last_event_at",
        "lookups",
        "recent",
        "seen",
        "stage",
        "stage_entered_at",
        "stages",
        "type_counts",
    )

    def __init__(self, state: CustomerState) -> None:
        self.customer_id = state.customer_id
        self.stage = state.stage
        self.stage_entered_at = state.stage_entered_at
        self.stages = dict(state.stages)
        self.first_touch_channel = state.first_touch_channel
        self.first_touch_at = state.first_touch_at
        self.last_event_at = state.last_event_at
        self.events = state.events
        self.type_counts = dict(state.type_counts)
        self.recent = list(state.recent_ids)
        self.seen: set[str] | None = None
        self.lookups = 0

    def duplicate(self, event_id: str) -> bool:
        seen = self.seen
        if seen is None:
            self.lookups += 1
            if self.lookups <= _LIST_LOOKUPS:
                return event_id in self.recent
            seen = self.seen = set(self.recent)
        return event_id in seen

    def apply(self, jmap: JourneyMap, ev: Touchpoint) -> Transition | None:
        """Apply one event that is not a duplicate (the caller checked ``seen``)."""
        counts = self.type_counts
        counts[ev.type] = counts.get(ev.type, 0) + 1
        recent = self.recent
        recent.append(ev.event_id)
        seen = self.seen
        if seen is not None:
            seen.add(ev.event_id)
        if len(recent) > DEDUP_WINDOW:
            gone = recent.pop(0)
            if seen is not None:
                seen.discard(gone)
        self.events += 1
        if ev.ts > self.last_event_at:
            self.last_event_at = ev.ts
        target = target_stage(jmap, self.stage, ev.type)
        if target is None:
            return None
        t = Transition(
            ev.customer_id,
            self.stage,
            target.name,
            ev.event_id,
            ev.type,
            ev.channel,
            ev.ts,
            max(0, ev.ts - self.stage_entered_at),
        )
        self.stage, self.stage_entered_at = target.name, ev.ts
        self.stages.setdefault(target.name, ev.ts)
        return t

    def freeze(self) -> CustomerState:
        return CustomerState(
            customer_id=self.customer_id,
            stage=self.stage,
            stage_entered_at=self.stage_entered_at,
            stages=self.stages,
            first_touch_channel=self.first_touch_channel,
            first_touch_at=self.first_touch_at,
            last_event_at=self.last_event_at,
            events=self.events,
            type_counts=self.type_counts,
            recent_ids=tuple(self.recent),
        )


def fold_customer(
    jmap: JourneyMap, state: CustomerState | None, events: Iterable[Touchpoint]
) -> CustomerFold:
    """Apply one customer's events in order, collecting transitions and counts.

    The same result as :func:`apply` event by event, with one working copy of
    the state for the whole run (see :class:`_Working`).
    """
    out = CustomerFold(state)
    work: _Working | None = None
    transitions = out.transitions
    for ev in events:
        if work is None:
            if state is None:
                step = apply(jmap, None, ev)  # a new customer: the first event makes the state
                assert step.transition is not None
                transitions.append(step.transition)
                out.applied += 1
                work = _Working(step.state)
                continue
            work = _Working(state)
        if work.duplicate(ev.event_id):
            out.duplicates += 1
            continue
        out.applied += 1
        t = work.apply(jmap, ev)
        if t is not None:
            transitions.append(t)
    if work is not None and out.applied:
        out.state = work.freeze()
    return out


def fold(jmap: JourneyMap, events: Iterable[Touchpoint]) -> dict[str, CustomerState]:
    """The plain fold: every customer's final state after all events, in order.

    The streaming worker must end with exactly this, whatever its batching,
    restarts and redeliveries; the tests hold it to that.
    """
    states: dict[str, CustomerState] = {}
    for ev in events:
        states[ev.customer_id] = apply(jmap, states.get(ev.customer_id), ev).state
    return states


def fold_batch(
    jmap: JourneyMap,
    states: dict[str, CustomerState | None],
    events: Iterable[Touchpoint],
) -> dict[str, CustomerFold]:
    """Fold a batch of events for many customers, each in arrival order.

    ``states`` holds the stored state of every customer in the batch (``None``
    for new ones). This is what the worker calls per batch; folding a stream
    in batches of any size gives the same states as :func:`fold`.
    """
    runs: dict[str, list[Touchpoint]] = {}
    for ev in events:
        runs.setdefault(ev.customer_id, []).append(ev)
    return {cid: fold_customer(jmap, states.get(cid), evs) for cid, evs in runs.items()}
