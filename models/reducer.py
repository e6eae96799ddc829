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
* Retention (the map's ``retention`` section): a clock reading at or past a
  customer's last event time plus the limit for their stage forgets them,
  as an erasure does but without an erasure record: the state is gone (a
  tombstone in the changelog) and a later event starts a new journey.

The rule is written once, in :func:`fold_customer` (one customer's run of
events, one event being a run of one). :func:`fold` is the plain fold, an
event at a time; :func:`fold_batch` folds a batch of many customers; the
hypothesis properties hold them equal, whatever the batching.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from models.dimensions import update_dims
from models.effects import Extras, deliver, forget_at, on_clock, on_event, on_odds
from models.events import (
    ANONYMOUS_ID,
    ERASE_HEADER,
    PREVIOUS_ID,
    TZ,
    Clock,
    Delivery,
    Erase,
    OddsReading,
    Touchpoint,
)
from models.identity import (
    IDENTITY_CHANNEL,
    LINK_HEADER,
    MAX_IDS,
    MERGE_HEADER,
    REKEYED_HEADER,
    Forward,
    Link,
    MergeRecord,
    link_of,
    link_refusal,
    merge_id,
    merge_states,
)
from models.journey_map import IDENTIFY, JourneyMap
from models.outputs import Erased, IdentityRecord, NudgeOutcome, Output, outcome_key, stable_id
from models.state import (
    AFTER_STALL_KEPT,
    LATER,
    CustomerState,
    Stall,
    Transition,
    alias_state,
    id_digest,
    window_add,
    window_has,
)
from models.timeutil import is_zone

Item = Touchpoint | Clock | Erase | Delivery | Link | MergeRecord | OddsReading
CLOCK_CHANNEL = "clock"  # the channel of a transition a clock reading caused


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
    erased: bool = False  # an erasure or retention removed the state folded from (a tombstone is due)
    forgotten: bool = False  # retention forgot the customer (no erasure record)
    # Identity (models.identity): records for other customers' owners (links,
    # merges, re-keyed events, the erasure of merged ids), and the items
    # refused with (item, reason, detail): the planner dead-letters them.
    forwards: list[Forward] = field(default_factory=list)
    refused: list[tuple[Item, str, str]] = field(default_factory=list)
    rekeyed: int = 0  # events of a merged id sent on to the customer it was merged into
    merges: int = 0  # ids merged into this customer


class _Working:
    """A customer's state while a run of their events is folded: mutable, frozen once at the end.

    A run copies the stored state once on the way in (the counts),
    mutates, and freezes once on the way out, instead of building a new
    frozen state per event. ``recent`` is the de-duplication window, the
    digests of the recent ids in one ``bytes`` value (``models.state``).
    """

    __slots__ = (
        "after_stall",
        "customer_id",
        "dims",
        "events",
        "extras",
        "first_touch_at",
        "first_touch_channel",
        "flows",
        "ids",
        "known",
        "last_event_at",
        "outcomes",
        "outputs_from",
        "recent",
        "stage",
        "stage_entered_at",
        "stages",
        "type_counts",
    )

    def __init__(self, state: CustomerState, outputs: list[Output]) -> None:
        self.customer_id = state.customer_id
        self.stage: str | None = state.stage
        self.stage_entered_at = state.stage_entered_at
        self.stages = dict(state.stages)
        self.first_touch_channel = state.first_touch_channel
        self.first_touch_at = state.first_touch_at
        self.last_event_at = state.last_event_at
        self.events = state.events
        self.type_counts = dict(state.type_counts)
        self.recent = state.recent
        self.known, self.ids = state.known, state.ids
        self.extras = Extras(
            state.stall,
            state.drift,
            state.nudges,
            outputs,
            odds_checked=state.odds_checked,
            odds_asked=state.odds_asked,
        )
        self.dims, self.flows = state.dims, state.flows  # flows: copied on a move
        self.extras.tz = state.tz  # the customer's zone: the nudges decided carry it
        self.after_stall, self.outcomes = state.after_stall, state.outcomes
        self.outputs_from = len(outputs)  # the outputs of this run: its nudge outcomes are counted

    @classmethod
    def first(cls, jmap: JourneyMap, ev: Touchpoint, outputs: list[Output]) -> tuple[_Working, Transition]:
        """A new customer, made by their first event: they land in the stage it
        enters (the map's first stage if none), where its effects apply."""
        w = cls.__new__(cls)
        w.customer_id = ev.customer_id
        w.stage, w.stage_entered_at, w.stages = None, ev.ts, {}
        w.first_touch_channel, w.first_touch_at, w.last_event_at = ev.channel, ev.ts, ev.ts
        w.events, w.type_counts, w.recent = 1, {ev.type: 1}, id_digest(ev.event_id)
        w.known, w.ids = False, ()
        w.extras = Extras(outputs=outputs)
        w.dims, w.flows, w.after_stall, w.outcomes = {}, {}, (), {}
        w.outputs_from = len(outputs)
        if ev.properties is not None:
            w.describe(jmap, ev.properties)
        entry = jmap.target(None, ev.type)
        assert entry is not None  # a new customer always lands somewhere
        landed = on_event(jmap, w.extras, entry.name, entry, ev, 0)
        assert landed is not None
        return w, w.enter(landed.name, ev.ts, ev.event_id, ev.type, ev.channel)

    def duplicate(self, digest: bytes) -> bool:
        return window_has(self.recent, digest)

    def enter(self, stage: str, at: int, event_id: str, event_type: str, channel: str) -> Transition:
        """Move to ``stage`` at ``at``: the one place a transition is made."""
        frm = self.stage
        t = Transition(
            self.customer_id,
            frm,
            stage,
            event_id,
            event_type,
            channel,
            at,
            None if frm is None else max(0, at - self.stage_entered_at),
        )
        self.stage, self.stage_entered_at = stage, at
        self.stages.setdefault(stage, at)
        key = f"{frm or ''}>{stage}"
        flows = self.flows
        self.flows = {**flows, key: flows.get(key, 0) + 1}
        return t

    def describe(self, jmap: JourneyMap, props: dict[str, Any]) -> None:
        """An event's properties that describe the customer: the map's
        dimensions (models.dimensions) and their time zone."""
        if jmap.dimensions:
            dims = update_dims(jmap.dimensions, self.dims, props)
            if dims is not None:
                self.dims = dims
        tz = props.get(TZ)
        if tz is not None and tz != self.extras.tz and is_zone(tz):
            self.extras.tz = tz

    def after(self, jmap: JourneyMap, stall: Stall, ev: Touchpoint, stage: str) -> None:
        """The first event after a stall was found: what the customer did next."""
        late = ev.ts - stall.detected_at > jmap.insight.after_stall_s * 1000
        step = (stall.episode_id, stall.stage, LATER if late else ev.type, stage)
        self.after_stall = (*self.after_stall, step)[-AFTER_STALL_KEPT:]

    def apply(self, jmap: JourneyMap, ev: Touchpoint, digest: bytes) -> Transition | None:
        """Apply one event that is not a duplicate (the caller checked); ``digest`` is its id's."""
        stage = self.stage
        assert stage is not None
        counts = self.type_counts
        seen_before = counts.get(ev.type, 0)
        counts[ev.type] = seen_before + 1
        self.recent = window_add(self.recent, digest)
        self.events += 1
        if ev.ts > self.last_event_at:
            self.last_event_at = ev.ts
        props = ev.properties
        if props is not None:
            self.describe(jmap, props)
        stall = self.extras.stall
        target = on_event(jmap, self.extras, stage, jmap.target(stage, ev.type), ev, seen_before)
        if stall is not None and (not self.after_stall or self.after_stall[-1][0] != stall.episode_id):
            self.after(jmap, stall, ev, target.name if target is not None else stage)
        if target is None:
            return None
        return self.enter(target.name, ev.ts, ev.event_id, ev.type, ev.channel)

    def expired(self, jmap: JourneyMap, now: int) -> bool:
        """Whether the map's retention forgets this customer at the clock reading ``now``."""
        assert self.stage is not None
        return jmap.retention is not None and now >= forget_at(jmap, self.stage, self.last_event_at)

    def clock(self, jmap: JourneyMap, clock: Clock) -> Transition | None:
        """Apply a clock reading; a move it causes (inactivity) gets its id from the deadline."""
        stage = self.stage
        assert stage is not None
        moved = on_clock(
            jmap,
            self.extras,
            self.customer_id,
            stage,
            self.stage_entered_at,
            self.last_event_at,
            clock.now,
        )
        if moved is None:
            return None
        target, at = moved
        return self.enter(target.name, at, f"inactive:{at}", "inactivity", CLOCK_CHANNEL)

    def freeze(self, map_version: str = "") -> CustomerState:
        assert self.stage is not None
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
            recent=self.recent,
            stall=self.extras.stall,
            drift=self.extras.drift,
            nudges=self.extras.nudges,
            known=self.known,
            ids=self.ids,
            map_version=map_version,
            dims=self.dims,
            tz=self.extras.tz,
            flows=self.flows,
            after_stall=self.after_stall,
            outcomes=self._outcomes(),
            odds_checked=self.extras.odds_checked,
            odds_asked=self.extras.odds_asked,
        )

    def _outcomes(self) -> dict[str, int]:
        """The customer's nudge outcomes with those this run's outputs record."""
        outputs = self.extras.outputs
        if len(outputs) == self.outputs_from:
            return self.outcomes
        new = [o for o in outputs[self.outputs_from :] if type(o) is NudgeOutcome]
        if not new:
            return self.outcomes
        out = dict(self.outcomes)
        for o in new:
            key = outcome_key(o.kind, o.held_out, o.converted)
            out[key] = out.get(key, 0) + 1
        self.outcomes, self.outputs_from = out, len(self.extras.outputs)
        return out

    def identity(self, ev: Touchpoint, out: CustomerFold) -> None:
        """An applied event's identity part: an identify event makes the
        customer known; a link (``link_of``) to an id not merged in yet is
        sent to that id's owner, or refused past MAX_IDS."""
        if ev.type == IDENTIFY:
            self.known = True
        linked = link_of(ev)
        if linked is None or linked in self.ids:
            return
        self.known = True
        link = Link(linked, self.customer_id, ev.ts)
        if len(self.ids) >= MAX_IDS:  # audited; nothing to dead-letter: the event itself was applied
            out.outputs.append(_refusal(link, f"a customer holds at most {MAX_IDS} ids", None))
            return
        out.forwards.append(Forward(linked, link, LINK_HEADER))


def fold_customer(jmap: JourneyMap, state: CustomerState | None, events: Iterable[Item]) -> CustomerFold:
    """Apply one customer's events, clock readings, erasures and identity
    records in order, collecting transitions, outputs and counts (``state``:
    None for a new customer). One event is a run of one: this is the reducer."""
    out = CustomerFold(state)
    base = state  # what the run builds on: None for a new customer, and after an erasure
    work: _Working | None = None
    transitions, outputs = out.transitions, out.outputs
    for ev in events:
        if type(ev) is Touchpoint:  # the common case first (a final class: no subclass)
            if work is None:
                if base is None:
                    work, entered = _Working.first(jmap, ev, outputs)  # a new customer
                    transitions.append(entered)
                    out.applied += 1
                    if _links(ev):
                        work.identity(ev, out)
                    continue
                if base.merged_into is not None:
                    _to_alias(base, ev, out)  # an anonymous id merged into another customer
                    continue
                work = _Working(base, outputs)
            digest = id_digest(ev.event_id)
            if work.duplicate(digest):
                out.duplicates += 1
                continue
            out.applied += 1
            t = work.apply(jmap, ev, digest)
            if t is not None:
                transitions.append(t)
            if _links(ev):
                work.identity(ev, out)
            continue
        if isinstance(ev, Erase):
            merged_ids = work.ids if work is not None else (base.ids if base is not None else ())
            if work is not None or base is not None:
                outputs.append(Erased(ev.erasure_id, ev.customer_id, ev.at))
                out.erased = out.changed = True
                out.forgotten = False
            for gone_id in merged_ids:  # every id merged into the customer goes with it
                erase = Erase(gone_id, stable_id("erase", ev.erasure_id, gone_id), ev.at)
                out.forwards.append(Forward(gone_id, erase, ERASE_HEADER))
            work = base = out.state = None
            continue
        if work is None and base is not None and base.merged_into is not None:
            _to_alias(base, ev, out)  # an anonymous id merged into another customer
            continue
        if isinstance(ev, Link):
            current = work.freeze() if work is not None else base
            if ev.known_id == ev.anonymous_id:
                continue
            refusal = link_refusal(current, ev)
            if refusal is not None:
                _refuse(out, ev, refusal, current.stage if current is not None else None)
                continue
            mid = merge_id(ev.anonymous_id, ev.known_id)
            m = MergeRecord(mid, ev.anonymous_id, ev.known_id, ev.at, current)
            out.forwards.append(Forward(ev.known_id, m, MERGE_HEADER))
            last = current.last_event_at if current is not None else 0
            work, base = None, alias_state(ev.anonymous_id, ev.known_id, last)
            out.state, out.changed = base, True
            continue
        if isinstance(ev, MergeRecord):
            current = work.freeze() if work is not None else base
            if current is not None and ev.anonymous_id in current.ids:
                out.duplicates += 1
                continue
            if current is None and ev.state is None:
                continue  # nothing to merge into nothing (the known id was erased since)
            merged = merge_states(jmap, current, ev.state, ev)
            new = merged.state
            outputs.extend(merged.recovered)
            outputs.append(
                IdentityRecord(
                    "merged",
                    ev.merge_id,
                    ev.anonymous_id,
                    ev.known_id,
                    ev.at,
                    anonymous_stage=ev.state.stage if ev.state is not None else None,
                    known_stage=current.stage if current is not None else None,
                    stage=new.stage,
                )
            )
            if current is not None and current.stage != new.stage:
                transitions.append(
                    Transition(
                        ev.known_id,
                        current.stage,
                        new.stage,
                        ev.merge_id,
                        "merge",
                        IDENTITY_CHANNEL,
                        ev.at,
                        max(0, ev.at - current.stage_entered_at),
                    )
                )
            work = _Working(new, outputs)
            out.merges += 1
            out.changed = True
            continue
        if isinstance(ev, Delivery):
            work = _resume(work, base, outputs)
            if work is None:
                continue  # for nobody (an erased customer, say)
            x = work.extras
            nudges = deliver(x.nudges, ev.nudge_id, ev.delivery)
            if nudges is not x.nudges:
                x.nudges = nudges
                out.changed = True
            continue
        if isinstance(ev, OddsReading):
            work = _resume(work, base, outputs)
            if work is None:
                continue  # for nobody (an erased customer, say)
            x = work.extras
            was = (x.odds_checked, len(outputs))
            assert work.stage is not None
            on_odds(jmap, x, work.customer_id, work.stage, work.stage_entered_at, ev)
            if (x.odds_checked, len(outputs)) != was:
                out.changed = True
            continue
        if isinstance(ev, Clock):
            work = _resume(work, base, outputs)
            if work is None:
                continue  # a clock reading for nobody (an erased customer, say)
            out.clocks += 1
            if work.expired(jmap, ev.now):
                work = base = out.state = None
                out.erased = out.changed = out.forgotten = True
                continue
            before = len(outputs)
            t = work.clock(jmap, ev)
            if t is not None:
                transitions.append(t)
            if t is not None or len(outputs) != before or _extras_moved(work, base):
                out.changed = True
            continue
    if work is not None and (out.applied or out.changed):
        out.changed = True
        out.state = work.freeze(jmap.version)
    return out


def _resume(work: _Working | None, base: CustomerState | None, outputs: list[Output]) -> _Working | None:
    """The customer being worked on: as it is, or from the stored state; None for nobody."""
    if work is not None or base is None:
        return work
    return _Working(base, outputs)


def _links(ev: Touchpoint) -> bool:
    """Whether an event has an identity part: an identify event, or a link property."""
    props = ev.properties
    return ev.type == IDENTIFY or (props is not None and (ANONYMOUS_ID in props or PREVIOUS_ID in props))


def _to_alias(alias: CustomerState, ev: Item, out: CustomerFold) -> None:
    """What reaches an anonymous id merged into another customer: its events
    are re-keyed to that customer, a merge into it is sent on there, a link
    to the same customer changes nothing, one to another is refused; clock
    readings and deliveries are for nobody."""
    root = alias.merged_into
    assert root is not None
    cid = alias.customer_id
    if isinstance(ev, Touchpoint):
        moved = msgspec.structs.replace(ev, customer_id=root)
        out.forwards.append(Forward(root, moved, REKEYED_HEADER, cid.encode()))
        out.rekeyed += 1
    elif isinstance(ev, MergeRecord):
        if ev.anonymous_id != root:  # a merge into the alias goes on to the customer it was merged into
            m = msgspec.structs.replace(ev, known_id=root, merge_id=merge_id(ev.anonymous_id, root))
            out.forwards.append(Forward(root, m, MERGE_HEADER))
    elif isinstance(ev, Link) and ev.known_id not in (root, cid):
        refusal = link_refusal(alias, ev)
        assert refusal is not None
        _refuse(out, ev, refusal, None)


def _refuse(out: CustomerFold, link: Link, refusal: str, anonymous_stage: str | None) -> None:
    """A link the guards refuse: dead-lettered by the planner (``merge_refused``) and audited."""
    out.refused.append((link, "merge_refused", refusal))
    out.outputs.append(_refusal(link, refusal, anonymous_stage))


def _refusal(link: Link, reason: str, anonymous_stage: str | None) -> IdentityRecord:
    """The audit record of a refused link."""
    return IdentityRecord(
        "refused",
        merge_id(link.anonymous_id, link.known_id),
        link.anonymous_id,
        link.known_id,
        link.at,
        anonymous_stage=anonymous_stage,
        reason=reason,
    )


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
        cid = ev.customer_id
        new = fold_customer(jmap, states.get(cid), (ev,))
        if new.state is not None:
            states[cid] = new.state
        elif new.erased:
            del states[cid]
    return states


class LinkedFold:
    """The plain fold with identity, one item at a time: each record a
    customer's fold sends another customer's owner (a link, a merge, a
    re-keyed event, a merged id's erasure) is applied right after the item
    that sent it, before the next one. ``last`` keeps each customer's last
    transition (``journey replay`` explains moves with it)."""

    def __init__(self, jmap: JourneyMap) -> None:
        self.jmap = jmap
        self.states: dict[str, CustomerState] = {}
        self.last: dict[str, Transition] = {}

    def apply(self, first: Item) -> list[CustomerFold]:
        """Apply one item and what it sends on; the folds, in order."""
        states, folds = self.states, []
        queue: list[Item] = [first]
        while queue:
            ev = queue.pop(0)
            cid = ev.customer_id
            new = fold_customer(self.jmap, states.get(cid), (ev,))
            folds.append(new)
            if new.state is not None:
                states[cid] = new.state
            elif new.erased:
                del states[cid]
                self.last.pop(cid, None)
            if new.transitions:
                self.last[cid] = new.transitions[-1]
            queue.extend(f.item for f in new.forwards)
        return folds


def fold_linked(jmap: JourneyMap, events: Iterable[Item]) -> dict[str, CustomerState]:
    """The plain fold with identity (:class:`LinkedFold`). The streaming worker
    reaches the same states when the forwarded records arrive before the
    ids' next events (the tests send them so)."""
    folder = LinkedFold(jmap)
    for ev in events:
        folder.apply(ev)
    return folder.states


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
