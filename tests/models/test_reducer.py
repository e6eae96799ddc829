"""The reducer: worked journeys, then the invariants we claim, by hypothesis."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models import (
    CustomerState,
    Touchpoint,
    decode_state,
    encode_state,
    fold,
    fold_batch,
    fold_customer,
)
from models.events import Clock, Erase
from models.journey_map import JourneyMap
from models.outputs import Erased, Nudge, NudgeOutcome, Recovered, StallRecord
from models.rules import RetentionRules
from models.state import DEDUP_WINDOW, ID_DIGEST_BYTES, id_digest, window_has
from tests.models.strategies import MAP, T0, TYPES, journeys, touchpoints

HOUR = 3_600_000
_ids = itertools.count()


def tp(
    etype: str, t_hours: float = 0, cid: str = "c1", channel: str = "web", eid: str | None = None
) -> Touchpoint:
    return Touchpoint(eid or f"e{next(_ids)}", cid, etype, channel, T0 + int(t_hours * HOUR))


def journey(*events: Touchpoint) -> tuple[CustomerState, list[tuple[str | None, str]]]:
    out = fold_customer(MAP, None, events)
    assert out.state is not None
    return out.state, [(t.from_stage, t.to_stage) for t in out.transitions]


def test_abandoned_cart_journey() -> None:
    state, moves = journey(tp("ad_click", 0, channel="ads"), tp("product_view", 1), tp("add_to_cart", 2))
    assert state.stage == "cart"
    assert state.stage_entered_at == T0 + 2 * HOUR
    assert moves == [(None, "awareness"), ("awareness", "consideration"), ("consideration", "cart")]
    assert state.first_touch_channel == "ads"
    assert list(state.stages) == ["awareness", "consideration", "cart"]
    assert state.events == 3


def test_repeat_purchase_is_loyalty_and_complaint_brings_service() -> None:
    state, moves = journey(tp("purchase", 0), tp("purchase", 24), tp("complaint", 48))
    assert moves == [(None, "purchase"), ("purchase", "loyalty"), ("loyalty", "service")]
    assert state.stage == "service"
    assert state.stages["purchase"] == T0


def test_backward_event_is_counted_but_moves_nothing() -> None:
    state, moves = journey(tp("add_to_cart", 0), tp("page_view", 1), tp("search", 2))
    assert state.stage == "cart"
    assert moves == [(None, "cart")]
    assert state.events == 3
    assert state.type_counts == {"add_to_cart": 1, "page_view": 1, "search": 1}


def test_defection_from_anywhere_and_win_back() -> None:
    state, moves = journey(tp("product_view", 0), tp("unsubscribe", 1), tp("page_view", 2), tp("purchase", 3))
    assert moves == [(None, "consideration"), ("consideration", "defected"), ("defected", "purchase")]
    assert state.stage == "purchase"


def test_loyalty_needs_a_purchase_first() -> None:
    state, moves = journey(tp("page_view", 0), tp("referral_sent", 1), tp("review_written", 2))
    assert state.stage == "awareness"
    assert moves == [(None, "awareness")]


def test_non_moving_first_event_lands_in_first_stage() -> None:
    state, moves = journey(tp("coupon_redeemed", 0))
    assert state.stage == "awareness" and moves == [(None, "awareness")]


def test_late_event_never_gives_negative_stage_time() -> None:
    out = fold_customer(MAP, None, [tp("page_view", 5), tp("product_view", 1)])
    assert out.transitions[1].previous_stage_ms == 0
    assert out.state is not None and out.state.last_event_at == T0 + 5 * HOUR


def test_duplicate_changes_nothing_and_is_reported() -> None:
    first = tp("page_view", 0, eid="same")
    s1 = fold_customer(MAP, None, [first]).state
    step = fold_customer(MAP, s1, [tp("add_to_cart", 1, eid="same")])
    assert step.duplicates == 1 and step.state is s1 and step.transitions == [] and not step.changed


def test_dedup_window_is_bounded() -> None:
    events = [tp("page_view", i) for i in range(DEDUP_WINDOW + 10)]
    state = fold_customer(MAP, None, events).state
    assert state is not None
    assert len(state.recent) == DEDUP_WINDOW * ID_DIGEST_BYTES
    assert state.seen(events[-1].event_id) and state.seen(events[10].event_id)
    assert not state.seen(events[9].event_id)  # the oldest ten left the window
    # so a redelivery of an event that left the window applies again (README says so)
    again = fold_customer(MAP, state, [events[0]])
    assert again.applied == 1 and again.duplicates == 0


def test_an_id_digest_matches_only_at_a_digest_boundary() -> None:
    a, b = id_digest("a"), id_digest("b")
    window = a + b
    straddle = window[4:12]  # the end of one digest and the start of the next
    assert window_has(window, a) and window_has(window, b)
    assert not window_has(window, straddle)
    assert not window_has(b"x" * 4 + window, a)  # misaligned content is never a match


def test_the_stage_table_answers_as_the_rule_does() -> None:
    for current in [None, *MAP.stage_names]:
        for etype in [*MAP.event_types, "not_in_the_map"]:
            assert MAP.target(current, etype) == MAP.stage_rule(current, etype), (current, etype)


def test_transition_ids_are_deterministic() -> None:
    ev = tp("page_view", 0, eid="fixed")
    [a] = fold_customer(MAP, None, [ev]).transitions
    [b] = fold_customer(MAP, None, [ev]).transitions
    [other] = fold_customer(MAP, None, [tp("page_view", 0, eid="other")]).transitions
    assert a.transition_id == b.transition_id != other.transition_id
    rec = a.to_record()
    assert rec["from"] is None and rec["to"] == "awareness" and rec["previous_stage_seconds"] is None


# --- Properties -----------------------------------------------------------


@given(touchpoints())
def test_redelivery_changes_nothing(events: list[Touchpoint]) -> None:
    """Replaying any already-applied event, any number of times, is a no-op."""
    expected = fold(MAP, events)
    replayed = [e for ev in events for e in (ev, ev)]  # every event delivered twice
    assert fold(MAP, replayed) == expected
    assert fold(MAP, events + events[: len(events) // 2]) == expected


# The default map, and the same with retention short enough for the journeys' clock readings (months).
RETAINED = replace(MAP, retention=RetentionRules(idle_s=200 * 86_400, exited_s=60 * 86_400))


@pytest.mark.parametrize("jmap", [MAP, RETAINED], ids=["default", "retention"])
@given(events=journeys(), sizes=st.lists(st.integers(1, 20), min_size=1, max_size=10))
def test_any_batching_equals_the_plain_fold(
    jmap: JourneyMap, events: list[Touchpoint | Clock | Erase], sizes: list[int]
) -> None:
    """The worker's per-batch, per-customer folding ends where the plain fold
    does, clock readings included, and says the same things on the way."""
    MAP = jmap
    states: dict[str, CustomerState | None] = {}
    said: dict[str, list[object]] = {}
    i = 0
    for size in itertools.cycle(sizes):
        if i >= len(events):
            break
        batch = events[i : i + size]
        i += size
        for cid, out in fold_batch(MAP, states, batch).items():
            if out.state is not None:
                states[cid] = out.state
            elif out.erased:
                states.pop(cid, None)  # the worker writes a tombstone
            said.setdefault(cid, []).extend([*out.transitions, *out.outputs])
    assert states == fold(MAP, events)
    plain: dict[str, CustomerState | None] = {}
    want: dict[str, list[object]] = {}
    for ev in events:
        step = fold_customer(MAP, plain.get(ev.customer_id), [ev])
        plain[ev.customer_id] = step.state
        got = want.setdefault(ev.customer_id, [])
        got.extend(step.transitions)
        got.extend(step.outputs)
    # Per customer the same records, though a batch lists its transitions before its outputs.
    for cid, records in want.items():
        assert sorted(map(repr, said.get(cid, []))) == sorted(map(repr, records))


@given(journeys())
def test_a_clock_reading_applied_twice_changes_nothing_more(events: list[Touchpoint | Clock | Erase]) -> None:
    state: CustomerState | None = None
    for ev in events:
        if ev.customer_id != "c0":
            continue
        state = fold_customer(MAP, state, [ev]).state
        if isinstance(ev, Clock) and state is not None:
            again = fold_customer(MAP, state, [ev])
            assert again.state == state and again.transitions == [] and again.outputs == []


@given(journeys())
def test_stalls_recoveries_and_nudges_pair_up(events: list[Touchpoint | Clock | Erase]) -> None:
    """One stall record per episode, a recovery only for an open episode, one
    nudge per id, and an outcome only for a nudge decided before."""
    for cid in {e.customer_id for e in events}:
        out = fold_customer(MAP, None, [e for e in events if e.customer_id == cid])
        open_episode: str | None = None
        episodes: set[str] = set()
        nudges: set[str] = set()
        outcomes: set[str] = set()
        for o in out.outputs:
            if isinstance(o, StallRecord):
                assert open_episode is None and o.episode_id not in episodes
                open_episode = o.episode_id
                episodes.add(o.episode_id)
                assert o.detected_at >= o.deadline
            elif isinstance(o, Recovered):
                assert o.episode_id == open_episode
                open_episode = None
            elif isinstance(o, Nudge):
                assert o.nudge_id not in nudges
                nudges.add(o.nudge_id)
            elif isinstance(o, NudgeOutcome):
                assert o.nudge_id in nudges and o.nudge_id not in outcomes
                outcomes.add(o.nudge_id)
            elif isinstance(o, Erased):
                open_episode = None  # the episode went with the state
        state = out.state
        assert (state is None and open_episode is None) or (
            (state.stall.episode_id if state and state.stall else None) == open_episode
        )


@given(journeys())
def test_transitions_chain_and_move_only_forward_unless_exit_or_move(
    events: list[Touchpoint | Clock | Erase],
) -> None:
    by_customer: dict[str, list[Touchpoint | Clock | Erase]] = {}
    for ev in events:
        by_customer.setdefault(ev.customer_id, []).append(ev)
    final = fold(MAP, events)
    for cid, evs in by_customer.items():
        out = fold_customer(MAP, None, evs)
        assert out.state == final.get(cid)
        if any(isinstance(e, Erase) for e in evs):
            continue  # a new journey after an erasure; the erasure properties cover it
        assert out.state is not None
        prev: str | None = None
        for t in out.transitions:
            assert t.from_stage == prev
            if prev is not None:
                forward = MAP.stage_by_name[t.to_stage].index > MAP.stage_by_name[prev].index
                exit_ = MAP.stage_by_name[t.to_stage].exit
                explicit = any(
                    t.event_type in m.on and prev in m.from_ and t.to_stage == m.to for m in MAP.moves
                )
                by_score = (
                    MAP.drift is not None
                    and t.to_stage == MAP.drift.loyalty_stage
                    and out.state.drift is not None
                )
                assert forward or exit_ or explicit or by_score, t
                assert t.previous_stage_ms is not None and t.previous_stage_ms >= 0
            prev = t.to_stage
        assert prev == out.state.stage
        assert out.state.stage in out.state.stages
        # Distinct ids applied (the window is not reached at this size).
        tps = [e for e in evs if isinstance(e, Touchpoint)]
        assert out.state.events == len({e.event_id for e in tps}) == out.applied
        assert out.applied + out.duplicates == len(tps)
        assert sum(out.state.type_counts.values()) == out.state.events


@settings(max_examples=60)
@given(st.lists(st.tuples(st.integers(0, 3 * DEDUP_WINDOW), st.sampled_from(TYPES)), max_size=500))
def test_the_batch_fold_equals_applying_one_by_one_past_the_dedup_window(
    picks: list[tuple[int, str]],
) -> None:
    """Long runs of one customer, ids repeating from beyond the window: the
    fold of a long run evicts and recognises exactly as event by event does."""
    events = [Touchpoint(f"e{i}", "c1", etype, "web", T0 + n * 1000) for n, (i, etype) in enumerate(picks)]
    state: CustomerState | None = None
    applied = 0
    transitions = []
    for ev in events:
        step = fold_customer(MAP, state, [ev])
        state = step.state
        applied += step.applied
        transitions.extend(step.transitions)
    for cut in (0, len(events) // 3, len(events)):
        first = fold_customer(MAP, None, events[:cut])
        rest = fold_customer(MAP, first.state, events[cut:])
        assert rest.state == state
        assert first.applied + rest.applied == applied
        assert first.transitions + rest.transitions == transitions


@settings(max_examples=200)
@given(journeys())
def test_state_encoding_roundtrips(events: list[Touchpoint | Clock | Erase]) -> None:
    for state in fold(MAP, events).values():
        assert decode_state(encode_state(state)) == state


@given(journeys())
def test_an_erasure_forgets_everything_before_it(events: list[Touchpoint | Clock | Erase]) -> None:
    """After an erasure the customer is what the events after it make, alone."""
    for cid in {e.customer_id for e in events}:
        mine = [e for e in events if e.customer_id == cid]
        last = max((i for i, e in enumerate(mine) if isinstance(e, Erase)), default=None)
        if last is None:
            continue
        after = [e for e in mine[last + 1 :]]
        assert fold(MAP, mine).get(cid) == fold(MAP, after).get(cid)
        out = fold_customer(MAP, None, mine)
        assert out.state == fold(MAP, after).get(cid)
