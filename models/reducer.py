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
    """The stage an event of ``event_type`` moves a customer in ``current`` to, if any."""
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


def fold_customer(
    jmap: JourneyMap, state: CustomerState | None, events: Iterable[Touchpoint]
) -> CustomerFold:
    """Apply one customer's events in order, collecting transitions and counts."""
    out = CustomerFold(state)
    for ev in events:
        step = apply(jmap, out.state, ev)
        out.state = step.state
        if step.duplicate:
            out.duplicates += 1
            continue
        out.applied += 1
        if step.transition is not None:
            out.transitions.append(step.transition)
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
