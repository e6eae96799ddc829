"""Stalls, drift and nudges around the stage rules: what an event or a clock
reading does to a customer beyond the stage move itself.

Called by the reducer (:mod:`models.reducer`) once per event or clock
reading. Pure: the caller passes the clock
(``now``), which the worker reads from its injectable clock and carries in
a clock record through the touchpoints topic (README "Clock policy").

* **Stall.** A customer whose stage has a ``stall_after`` and who shows no
  activity for that long after their last event (event time) is stalled
  once per stage visit: an episode with an id from customer, stage and
  stage entry. A move to another stage ends it (``recovered``).
* **Drift.** From the first time a customer reaches the drift rules'
  ``after`` stage, signals move a score (:mod:`models.drift`). At or above
  the loyalty bar, from a stage listed in ``loyalty_from``, the customer
  moves to the loyalty stage. Crossing the risk bar downward emits one
  ``churn_risk`` per crossing. Inactivity past ``inactive_after`` fires the
  inactivity signal once per quiet spell; past ``defect_after`` the customer
  defects.
* **Nudges.** A stall, a churn risk or a move to loyalty may earn a nudge
  (:mod:`models.nudges`); a stall detected more than the map's ``max_age``
  after its deadline earns none (a backfilled cart from last week). Each
  nudge is tracked until the customer converts within its window or the
  window ends, and an outcome record says which.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from models import drift as scoring
from models.events import OddsReading, Touchpoint
from models.journey_map import JourneyMap, Stage
from models.nudges import decide, remember
from models.outputs import ChurnRisk, NudgeOutcome, OddsDue, Output, Recovered, StallRecord, stable_id
from models.rules import Trigger
from models.state import CustomerState, Drift, NudgeRef, Stall


@dataclass(slots=True)
class Extras:
    """The stall, drift and nudge parts of a customer's state, while being changed."""

    stall: Stall | None = None
    drift: Drift | None = None
    nudges: tuple[NudgeRef, ...] = ()
    outputs: list[Output] = field(default_factory=list)
    tz: str = ""  # the customer's zone: a nudge carries it (quiet hours, daily caps)
    # low_odds policies: the stage visit (its entry time) whose odds reading
    # was applied, and when the core last asked for one (models.outputs.OddsDue).
    odds_checked: int = -1
    odds_asked: int = 0


def _nudge(
    jmap: JourneyMap,
    x: Extras,
    trigger: Trigger,
    stage: str,
    cid: str,
    key: str,
    at: int,
    reason: dict[str, Any],
) -> None:
    decided = decide(jmap, trigger, stage, cid, key, at, reason, x.tz)
    if decided is not None:
        nudge, ref = decided
        before = x.nudges
        x.nudges = remember(before, ref)
        if x.nudges is not before:
            x.outputs.append(nudge)


def _close_nudges(x: Extras, cid: str, at: int, converted: Any) -> None:
    """Settle open nudges: ``converted(ref)`` True converts, else windows past ``at`` lapse.

    An outcome record is written only for a nudge the gate sent or held out
    on purpose (its delivery record came first); one that never went out
    (capped, expired, or not decided yet) closes as ``undelivered``, so the
    holdout's lift compares only nudges that were really sent with their
    held-out twins."""
    if not x.nudges or all(r.outcome is not None for r in x.nudges):
        return
    refs = []
    for r in x.nudges:
        if r.outcome is None:
            won = at <= r.window_end and converted(r)
            if won or at > r.window_end:
                delivered = r.delivery in ("sent", "held_out")
                outcome = ("converted" if won else "not_converted") if delivered else "undelivered"
                r = NudgeRef(
                    r.nudge_id, r.kind, r.stage, r.created_at, r.window_end, r.held_out, outcome, r.delivery
                )
                if delivered:
                    x.outputs.append(
                        NudgeOutcome(r.nudge_id, cid, r.kind, r.held_out, won, at if won else r.window_end)
                    )
        refs.append(r)
    x.nudges = tuple(refs)


def deliver(refs: tuple[NudgeRef, ...], nudge_id: str, delivery: str) -> tuple[NudgeRef, ...]:
    """The nudges with the gate's decision for ``nudge_id`` recorded (the same
    tuple if there is nothing to record: an unknown id, a repeat)."""
    for i, r in enumerate(refs):
        if r.nudge_id == nudge_id:
            if r.delivery is not None:
                return refs  # decided once: a repeat changes nothing
            new = NudgeRef(
                r.nudge_id, r.kind, r.stage, r.created_at, r.window_end, r.held_out, r.outcome, delivery
            )
            return (*refs[:i], new, *refs[i + 1 :])
    return refs


def on_event(
    jmap: JourneyMap, x: Extras, stage: str, target: Stage | None, ev: Touchpoint, seen_before: int
) -> Stage | None:
    """Apply an event's stall, drift and nudge effects on a customer in ``stage``
    whom the stage rules move to ``target`` (None: no move), having seen
    ``seen_before`` events of its type; return the final target stage (the
    loyalty bar may move the customer further than the rules do)."""
    cid, ev_type, ev_id, ts = ev.customer_id, ev.type, ev.event_id, ev.ts
    rules = jmap.drift
    if rules is not None:
        if x.drift is None and (
            (target is not None and target.name == rules.after) or (target is None and stage == rules.after)
        ):
            x.drift = Drift(0.0, ts)
        d = x.drift
        if d is not None:
            fired = scoring.hits(rules, ev_type, ev.properties, seen_before)
            if fired or d.inactive:
                new = scoring.add(rules, d, fired, ts)
                if scoring.crossed_risk(rules, d, new):
                    new = Drift(new.score, new.at, True, new.inactive, new.signals)
                    at_stage = target.name if target is not None else stage
                    x.outputs.append(
                        ChurnRisk(stable_id("risk", cid, ev_id), cid, at_stage, new.score, new.signals, ts)
                    )
                    _nudge(jmap, x, "churn_risk", at_stage, cid, ev_id, ts, _signals_reason(new))
                elif new.at_risk and new.score > rules.risk_at:
                    new = Drift(new.score, new.at, False, new.inactive, new.signals)
                x.drift = d = new
            if rules.loyalty_stage is not None and stage != rules.loyalty_stage and scoring.loyal(rules, d):
                after = target.name if target is not None else stage
                if after in rules.loyalty_from:
                    target = jmap.stage_by_name[rules.loyalty_stage]

    if target is not None:
        here = jmap.stage_by_name[stage]
        if x.stall is not None:
            s = x.stall
            x.outputs.append(Recovered(s.episode_id, cid, s.stage, target.name, ts, ev_id))
            x.stall = None

        def converted(r: NudgeRef) -> bool:
            nudged_at = jmap.stage_by_name[r.stage]
            return not r_converts_on(jmap, r) and target.index > nudged_at.index and not target.exit

        _close_nudges(x, cid, ts, lambda r: converted(r) or ev_type in r_converts_on(jmap, r))
        if rules is not None and target.name == rules.loyalty_stage and here.name != target.name:
            reason = _signals_reason(x.drift) if x.drift is not None else {}
            _nudge(jmap, x, "loyalty", target.name, cid, ev_id, ts, reason)
    elif x.nudges:
        _close_nudges(x, cid, ts, lambda r: ev_type in r_converts_on(jmap, r))
    return target


def r_converts_on(jmap: JourneyMap, r: NudgeRef) -> frozenset[str]:
    policy = jmap.nudges.kind(r.kind)
    return policy.converts_on if policy is not None else frozenset()


def _signals_reason(d: Drift) -> dict[str, Any]:
    return {"score": round(d.score, 3), "signals": [n for n, _, _ in d.signals]}


# How long the core waits for an odds reading before it asks again (the
# worker keeps the questions in memory: a restart loses them, this does not).
ODDS_RETRY_MS = 60_000


def _odds_check(jmap: JourneyMap, stage: str, entered: int, x: Extras) -> int | None:
    """When a low_odds policy wants this stage visit's odds, or None."""
    policy = jmap.nudges.for_trigger("low_odds", stage)
    if policy is None or policy.after_s is None or x.odds_checked == entered:
        return None
    return max(entered + policy.after_s * 1000, x.odds_asked + ODDS_RETRY_MS)


def next_deadline(
    jmap: JourneyMap, stage: str, last_event_at: int, x: Extras, entered: int | None = None
) -> int | None:
    """The earliest time a clock reading can change this customer, or None
    (``entered``: when they entered ``stage``, for the low_odds checkpoint)."""
    due: list[int] = []
    st = jmap.stage_by_name[stage]
    if entered is not None:
        check = _odds_check(jmap, stage, entered, x)
        if check is not None:
            due.append(check)
    if st.stall_after_s is not None and x.stall is None:
        due.append(last_event_at + st.stall_after_s * 1000)
    rules = jmap.drift
    if rules is not None and x.drift is not None and not st.exit:
        if rules.inactive_after_s and not x.drift.inactive:
            due.append(last_event_at + rules.inactive_after_s * 1000)
        due.append(last_event_at + rules.defect_after_s * 1000)
    for r in x.nudges:
        if r.outcome is None:
            due.append(r.window_end + 1)
    if jmap.retention is not None:
        due.append(forget_at(jmap, stage, last_event_at))
    return min(due) if due else None


def forget_at(jmap: JourneyMap, stage: str, last_event_at: int) -> int:
    """When the map's retention forgets a customer idle since ``last_event_at`` (the map has one)."""
    assert jmap.retention is not None
    return last_event_at + jmap.retention.limit_ms(jmap.stage_by_name[stage].exit)


def on_clock(
    jmap: JourneyMap, x: Extras, cid: str, stage: str, stage_entered_at: int, last_event_at: int, now: int
) -> tuple[Stage, int] | None:
    """Apply a clock reading ``now``; return (defection stage, its time) if the
    customer defects for inactivity, else None."""
    st = jmap.stage_by_name[stage]
    if st.stall_after_s is not None and x.stall is None:
        deadline = last_event_at + st.stall_after_s * 1000
        if now >= deadline:
            episode = stable_id("stall", cid, stage, stage_entered_at)
            x.stall = Stall(episode, stage, stage_entered_at, deadline, now)
            x.outputs.append(
                StallRecord(episode, cid, stage, stage_entered_at, st.stall_after_s, deadline, now)
            )
            if now - deadline <= jmap.nudges.max_age_s * 1000:
                _nudge(
                    jmap,
                    x,
                    "stall",
                    stage,
                    cid,
                    episode,
                    now,
                    {"episode_id": episode, "since": stage_entered_at},
                )
    check = _odds_check(jmap, stage, stage_entered_at, x)
    if check is not None and now >= check:
        x.odds_asked = now
        x.outputs.append(OddsDue(cid, stage, stage_entered_at, now))
    _close_nudges(x, cid, now, lambda r: False)
    rules = jmap.drift
    if rules is None or x.drift is None or st.exit:
        return None
    d = x.drift
    if rules.inactive_after_s and not d.inactive:
        spell = last_event_at + rules.inactive_after_s * 1000
        if now >= spell:
            new = scoring.add(rules, d, [(scoring.INACTIVITY, rules.inactive_weight)], spell)
            new = Drift(new.score, new.at, d.at_risk, True, new.signals)
            if scoring.crossed_risk(rules, d, new):
                new = Drift(new.score, new.at, True, True, new.signals)
                key = f"inactive:{spell}"
                x.outputs.append(
                    ChurnRisk(stable_id("risk", cid, key), cid, stage, new.score, new.signals, spell)
                )
                _nudge(jmap, x, "churn_risk", stage, cid, key, now, _signals_reason(new))
            x.drift = new
    gone = last_event_at + rules.defect_after_s * 1000
    if now >= gone and stage != rules.defect_stage:
        if x.stall is not None:
            s = x.stall
            x.outputs.append(
                Recovered(s.episode_id, cid, s.stage, rules.defect_stage, gone, f"inactive:{gone}")
            )
            x.stall = None
        return jmap.stage_by_name[rules.defect_stage], gone
    return None


def on_odds(jmap: JourneyMap, x: Extras, cid: str, stage: str, entered: int, reading: OddsReading) -> None:
    """Apply an odds reading: for the current stage visit only, once; a
    nudge if a low_odds policy's bar is above the odds."""
    if reading.stage != stage or reading.visit != entered or x.odds_checked == entered:
        return
    x.odds_checked = entered
    policy = jmap.nudges.for_trigger("low_odds", stage)
    p = reading.probability
    if policy is None or policy.below is None or p is None or p >= policy.below:
        return
    reason = {"odds": round(p, 4), "below": policy.below, "since": entered}
    _nudge(jmap, x, "low_odds", stage, cid, f"odds:{entered}", reading.at, reason)


def deadline_of(jmap: JourneyMap, state: CustomerState) -> int | None:
    """:func:`next_deadline` of a stored state (an alias of a merged id has none)."""
    if state.merged_into is not None:
        return None
    x = Extras(
        state.stall, state.drift, state.nudges, odds_checked=state.odds_checked, odds_asked=state.odds_asked
    )
    return next_deadline(jmap, state.stage, state.last_event_at, x, state.stage_entered_at)
