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
* Stalls, drift and nudges (:mod:`models.effects`) ride along: an event may
  end a stall, move the drift score (and with it reach loyalty), settle a
  nudge; a :class:`~models.events.Clock` reading may open a stall, fire the
  inactivity signal, defect the customer or close a nudge window. A clock
  reading for an unknown customer changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from models.effects import Extras, deliver, on_clock, on_event
from models.events import Clock, Delivery, Erase, Touchpoint
from models.frozen import fast_init
from models.journey_map import JourneyMap, Stage
from models.outputs import Erased, Output
from models.state import DEDUP_WINDOW, CustomerState, Transition

Item = Touchpoint | Clock | Erase | Delivery
CLOCK_CHANNEL = "clock"  # the channel of a transition a clock reading caused


@fast_init
@dataclass(frozen=True, slots=True)
class Step:
    """The result of applying one event."""

    state: CustomerState | None  # None: erased (or a clock reading for nobody)
    transition: Transition | None = None
    duplicate: bool = False
    outputs: tuple[Output, ...] = ()


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


def apply(jmap: JourneyMap, state: CustomerState | None, ev: Item) -> Step:
    """Apply one event or clock reading to one customer's state (``None``: a new customer)."""
    if isinstance(ev, Erase):
        return Step(None, None, outputs=(Erased(ev.erasure_id, ev.customer_id, ev.at),) if state else ())
    if isinstance(ev, Clock):
        return _apply_clock(jmap, state, ev) if state is not None else Step(None, None)
    if isinstance(ev, Delivery):
        if state is None:
            return Step(None, None)
        nudges = deliver(state.nudges, ev.nudge_id, ev.delivery)
        return Step(state if nudges is state.nudges else replace(state, nudges=nudges), None)
    if state is not None and ev.event_id in state.recent_ids:
        return Step(state, None, duplicate=True)

    current = state.stage if state is not None else None
    target = target_stage(jmap, current, ev.type)

    if state is None:
        assert target is not None  # a new customer always lands somewhere
        x = Extras()
        target = on_event(
            jmap, x, ev.customer_id, target.name, target, ev.type, ev.event_id, ev.ts, ev.properties, 0
        )
        assert target is not None
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
            stall=x.stall,
            drift=x.drift,
            nudges=x.nudges,
        )
        return Step(
            new,
            Transition(ev.customer_id, None, target.name, ev.event_id, ev.type, ev.channel, ev.ts, None),
            outputs=tuple(x.outputs),
        )

    x = Extras(state.stall, state.drift, state.nudges)
    seen_before = state.type_counts.get(ev.type, 0)
    target = on_event(
        jmap, x, ev.customer_id, state.stage, target, ev.type, ev.event_id, ev.ts, ev.properties, seen_before
    )
    counts = dict(state.type_counts)
    counts[ev.type] = seen_before + 1
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
        stall=x.stall,
        drift=x.drift,
        nudges=x.nudges,
    )
    return Step(new, transition, outputs=tuple(x.outputs))


def _apply_clock(jmap: JourneyMap, state: CustomerState, clock: Clock) -> Step:
    x = Extras(state.stall, state.drift, state.nudges)
    moved = on_clock(
        jmap, x, state.customer_id, state.stage, state.stage_entered_at, state.last_event_at, clock.now
    )
    transition = None
    stage, entered, stages = state.stage, state.stage_entered_at, state.stages
    if moved is not None:
        target, at = moved
        transition = _clock_transition(state.customer_id, state.stage, state.stage_entered_at, target, at)
        stage, entered = target.name, at
        if target.name not in stages:
            stages = {**stages, target.name: at}
    if (
        transition is None
        and not x.outputs
        and x.stall is state.stall
        and x.drift is state.drift
        and x.nudges is state.nudges
    ):
        return Step(state, None)
    new = replace(
        state,
        stage=stage,
        stage_entered_at=entered,
        stages=stages,
        stall=x.stall,
        drift=x.drift,
        nudges=x.nudges,
    )
    return Step(new, transition, outputs=tuple(x.outputs))


def _clock_transition(cid: str, from_stage: str, entered: int, target: Stage, at: int) -> Transition:
    """A move a clock reading caused (inactivity): its id comes from the deadline."""
    return Transition(
        cid, from_stage, target.name, f"inactive:{at}", "inactivity", CLOCK_CHANNEL, at, max(0, at - entered)
    )


@dataclass(slots=True)
class CustomerFold:
    """What folding a run of one customer's events produced."""

    state: CustomerState | None
    transitions: list[Transition] = field(default_factory=list)
    applied: int = 0
    duplicates: int = 0
    outputs: list[Output] = field(default_factory=list)
    clocks: int = 0  # clock readings applied
    changed: bool = False  # the state differs from the one folded from
    erased: bool = False  # an erasure removed the state folded from (a tombstone is due)


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
        "extras",
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

    def __init__(self, state: CustomerState, outputs: list[Output] | None = None) -> None:
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
        self.extras = Extras(state.stall, state.drift, state.nudges, outputs if outputs is not None else [])

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
        seen_before = counts.get(ev.type, 0)
        counts[ev.type] = seen_before + 1
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
        target = on_event(
            jmap,
            self.extras,
            ev.customer_id,
            self.stage,
            target,
            ev.type,
            ev.event_id,
            ev.ts,
            ev.properties,
            seen_before,
        )
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

    def clock(self, jmap: JourneyMap, clock: Clock) -> Transition | None:
        """Apply a clock reading."""
        moved = on_clock(
            jmap,
            self.extras,
            self.customer_id,
            self.stage,
            self.stage_entered_at,
            self.last_event_at,
            clock.now,
        )
        if moved is None:
            return None
        target, at = moved
        t = _clock_transition(self.customer_id, self.stage, self.stage_entered_at, target, at)
        self.stage, self.stage_entered_at = target.name, at
        self.stages.setdefault(target.name, at)
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
            stall=self.extras.stall,
            drift=self.extras.drift,
            nudges=self.extras.nudges,
        )


def fold_customer(jmap: JourneyMap, state: CustomerState | None, events: Iterable[Item]) -> CustomerFold:
    """Apply one customer's events, clock readings and erasures in order,
    collecting transitions, outputs and counts.

    The same result as :func:`apply` item by item, with one working copy of
    the state for the whole run (see :class:`_Working`).
    """
    out = CustomerFold(state)
    base = state  # what the run builds on: None for a new customer, and after an erasure
    work: _Working | None = None
    transitions, outputs = out.transitions, out.outputs
    for ev in events:
        if isinstance(ev, Erase):
            if work is not None or base is not None:
                outputs.append(Erased(ev.erasure_id, ev.customer_id, ev.at))
                out.erased = out.changed = True
            work = base = out.state = None
            continue
        if isinstance(ev, Delivery):
            if work is None:
                if base is None:
                    continue  # for nobody (an erased customer, say)
                work = _Working(base, outputs)
            x = work.extras
            nudges = deliver(x.nudges, ev.nudge_id, ev.delivery)
            if nudges is not x.nudges:
                x.nudges = nudges
                out.changed = True
            continue
        if isinstance(ev, Clock):
            if work is None:
                if base is None:
                    continue  # a clock reading for nobody (an erased customer, say)
                work = _Working(base, outputs)
            out.clocks += 1
            before = len(outputs)
            t = work.clock(jmap, ev)
            if t is not None:
                transitions.append(t)
            if t is not None or len(outputs) != before or _extras_moved(work, base):
                out.changed = True
            continue
        if work is None:
            if base is None:
                step = apply(jmap, None, ev)  # a new customer: the first event makes the state
                assert step.transition is not None and step.state is not None
                transitions.append(step.transition)
                out.applied += 1
                outputs.extend(step.outputs)
                work = _Working(step.state, outputs)
                continue
            work = _Working(base, outputs)
        if work.duplicate(ev.event_id):
            out.duplicates += 1
            continue
        out.applied += 1
        t = work.apply(jmap, ev)
        if t is not None:
            transitions.append(t)
    if work is not None and (out.applied or out.changed):
        out.changed = True
        out.state = work.freeze()
    return out


def _extras_moved(work: _Working, state: CustomerState | None) -> bool:
    x = work.extras
    return (
        state is None
        or x.stall is not state.stall
        or x.drift is not state.drift
        or x.nudges is not state.nudges
    )


def fold(jmap: JourneyMap, events: Iterable[Item]) -> dict[str, CustomerState]:
    """The plain fold: every customer's final state after all events, in order.

    The streaming worker must end with exactly this, whatever its batching,
    restarts and redeliveries; the tests hold it to that.
    """
    states: dict[str, CustomerState] = {}
    for ev in events:
        new = apply(jmap, states.get(ev.customer_id), ev).state
        if new is not None:
            states[ev.customer_id] = new
        elif isinstance(ev, Erase):
            states.pop(ev.customer_id, None)
    return states


def fold_batch(
    jmap: JourneyMap,
    states: dict[str, CustomerState | None],
    events: Iterable[Item],
) -> dict[str, CustomerFold]:
    """Fold a batch of events for many customers, each in arrival order.

    ``states`` holds the stored state of every customer in the batch (``None``
    for new ones). This is what the worker calls per batch; folding a stream
    in batches of any size gives the same states as :func:`fold`.
    """
    runs: dict[str, list[Item]] = {}
    for ev in events:
        runs.setdefault(ev.customer_id, []).append(ev)
    return {cid: fold_customer(jmap, states.get(cid), evs) for cid, evs in runs.items()}
