"""Stalls, drift and nudges in the pure core: worked journeys, then properties."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models import Touchpoint, fold_customer, load_map, parse_map
from models.drift import decayed
from models.errors import MapError
from models.events import Clock, Delivery
from models.nudges import held_out, quiet_release
from models.outputs import ChurnRisk, Nudge, NudgeOutcome, Recovered, StallRecord
from models.rules import QuietHours

MAP = load_map()
T0 = 1_790_000_000_000
MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000
_ids = itertools.count()


def ev(etype: str, at: int, cid: str = "c1", **props: object) -> Touchpoint:
    return Touchpoint(f"e{next(_ids)}", cid, etype, "web", T0 + at, props or None)


def clock(at: int, cid: str = "c1") -> Clock:
    return Clock(cid, T0 + at)


def kinds(outputs: list[object]) -> list[str]:
    return [type(o).__name__ for o in outputs]


def nudged_customer(prefix: str = "n") -> str:
    """A customer id outside the 10% holdout."""
    return next(f"{prefix}{i}" for i in itertools.count() if not held_out(f"{prefix}{i}", 0.10))


def test_an_abandoned_cart_stalls_once_and_earns_one_reminder() -> None:
    cid = nudged_customer()
    out = fold_customer(
        MAP,
        None,
        [ev("page_view", 0, cid), ev("add_to_cart", MIN, cid), clock(MIN + HOUR, cid), clock(2 * HOUR, cid)],
    )
    assert kinds(out.outputs) == ["StallRecord", "Nudge"]
    stall, nudge = out.outputs
    assert isinstance(stall, StallRecord) and isinstance(nudge, Nudge)
    assert stall.stage == "cart" and stall.deadline == T0 + MIN + HOUR and stall.threshold_s == 3600
    assert nudge.kind == "cart_reminder" and nudge.reason["episode_id"] == stall.episode_id
    assert out.state is not None and out.state.stall is not None
    # The gate sent it (the worker's delivery record); buying later ends the
    # episode and converts the reminder.
    after = fold_customer(
        MAP, out.state, [Delivery(cid, nudge.nudge_id, "sent"), ev("purchase", 3 * HOUR, cid)]
    )
    assert kinds(after.outputs) == ["Recovered", "NudgeOutcome"]
    rec, outcome = after.outputs
    assert isinstance(rec, Recovered) and rec.episode_id == stall.episode_id and rec.to_stage == "purchase"
    assert isinstance(outcome, NudgeOutcome) and outcome.converted and not outcome.held_out
    assert after.state is not None and after.state.stall is None


def test_a_customer_who_buys_before_the_threshold_gets_neither() -> None:
    out = fold_customer(
        MAP, None, [ev("add_to_cart", 0), ev("purchase", 30 * MIN), clock(HOUR + 1), clock(2 * HOUR)]
    )
    assert not any(isinstance(o, StallRecord | Nudge) for o in out.outputs)


def test_activity_without_a_move_pushes_the_deadline_and_a_clock_before_it_does_nothing() -> None:
    out = fold_customer(
        MAP, None, [ev("add_to_cart", 0), ev("cart_item_removed", 50 * MIN), clock(HOUR + MIN)]
    )
    assert out.outputs == [] and out.state is not None and out.state.stall is None


def test_a_backfilled_stall_counts_but_earns_no_stale_nudge() -> None:
    out = fold_customer(MAP, None, [ev("add_to_cart", 0), clock(10 * DAY)])
    assert kinds(out.outputs) == ["StallRecord"]


def test_held_out_customers_get_a_held_out_nudge_and_an_outcome() -> None:
    cid = next(f"h{i}" for i in itertools.count() if held_out(f"h{i}", 0.10))
    first = fold_customer(MAP, None, [ev("add_to_cart", 0, cid), clock(HOUR, cid)])
    nudge = next(o for o in first.outputs if isinstance(o, Nudge))
    out = fold_customer(
        MAP, first.state, [Delivery(cid, nudge.nudge_id, "held_out"), clock(HOUR + 3 * DAY, cid)]
    )
    outcome = next(o for o in out.outputs if isinstance(o, NudgeOutcome))
    assert nudge.held_out and outcome.held_out and not outcome.converted


@pytest.mark.parametrize("delivery", [None, "capped", "expired"])
def test_a_nudge_that_never_went_out_closes_without_an_outcome(delivery: str | None) -> None:
    """Outcomes only for nudges sent or held out on purpose: a capped or
    expired one (or one never decided) would skew the holdout's lift."""
    cid = nudged_customer("u")
    first = fold_customer(MAP, None, [ev("add_to_cart", 0, cid), clock(HOUR, cid)])
    nudge = next(o for o in first.outputs if isinstance(o, Nudge))
    items: list[object] = [] if delivery is None else [Delivery(cid, nudge.nudge_id, delivery)]
    out = fold_customer(MAP, first.state, [*items, ev("purchase", 2 * HOUR, cid)])  # type: ignore[list-item]
    assert not any(isinstance(o, NudgeOutcome) for o in out.outputs)
    assert out.state is not None
    ref = next(r for r in out.state.nudges if r.nudge_id == nudge.nudge_id)
    assert (ref.outcome, ref.delivery) == ("undelivered", delivery)


def test_a_delivery_is_recorded_once_and_survives_storage() -> None:
    from stream.engine.codec import decode_stored, encode_stored

    cid = nudged_customer("d")
    first = fold_customer(MAP, None, [ev("add_to_cart", 0, cid), clock(HOUR, cid)])
    nudge = next(o for o in first.outputs if isinstance(o, Nudge))
    out = fold_customer(
        MAP,
        first.state,
        [
            Delivery(cid, nudge.nudge_id, "sent"),
            Delivery(cid, nudge.nudge_id, "capped"),
            Delivery(cid, "x", "sent"),
        ],
    )
    assert out.changed and out.state is not None
    assert [r.delivery for r in out.state.nudges] == ["sent"]
    assert decode_stored(encode_stored(3, out.state))[1] == out.state
    again = fold_customer(MAP, out.state, [Delivery(cid, nudge.nudge_id, "sent")])
    assert not again.changed
    # The plain, item-by-item fold agrees with the batch fold.
    from models.reducer import fold

    items = [
        ev("add_to_cart", 0, cid),
        clock(HOUR, cid),
        Delivery(cid, nudge.nudge_id, "sent"),
        ev("purchase", 2 * HOUR, cid),
    ]
    assert fold(MAP, items)[cid] == fold_customer(MAP, None, items).state


def test_a_complaining_inactive_customer_ends_at_risk_then_defected() -> None:
    cid = nudged_customer("r")
    events = [
        ev("add_to_cart", 0, cid),
        ev("purchase", HOUR, cid, order_value=50),
        ev("complaint", 2 * HOUR, cid),
        ev("return_requested", 3 * HOUR, cid),
        ev("feedback_submitted", 4 * HOUR, cid, score=2),
    ]
    out = fold_customer(MAP, None, events)
    risks = [o for o in out.outputs if isinstance(o, ChurnRisk)]
    assert len(risks) == 1 and risks[0].score <= -30
    assert [n for n, _, _ in risks[0].signals] == ["complaint", "return", "low_feedback"]
    assert any(isinstance(o, Nudge) and o.kind == "win_back" for o in out.outputs)
    assert out.state is not None and out.state.drift is not None and out.state.drift.at_risk
    gone = fold_customer(MAP, out.state, [clock(200 * DAY, cid)])
    assert gone.state is not None and gone.state.stage == "defected"
    assert [(t.from_stage, t.to_stage, t.event_type) for t in gone.transitions] == [
        ("service", "defected", "inactivity")
    ]


def test_a_repeat_buyer_with_referrals_ends_in_loyalty_by_score() -> None:
    # Without the explicit purchase -> loyalty move, only the score can get them there.
    text = load_map_text().replace(
        "  - on: [purchase, review_written, referral_sent]\n    from: [purchase, service]\n",
        "  - on: [purchase, review_written, referral_sent]\n    from: [service]\n",
    )
    strict = parse_map(text, "strict")
    events = [ev("purchase", 0), ev("referral_sent", DAY), ev("purchase", 2 * DAY, order_value=300)]
    out = fold_customer(strict, None, events)
    assert out.state is not None and out.state.stage == "loyalty"
    assert out.state.drift is not None and out.state.drift.score >= 40
    assert [t.to_stage for t in out.transitions] == ["purchase", "loyalty"]
    assert any(isinstance(o, Nudge) and o.kind == "review_request" for o in out.outputs)


def load_map_text() -> str:
    from importlib import resources

    return resources.files("models").joinpath("default_map.yaml").read_text()


def test_quiet_hours_hold_a_nudge_until_they_end() -> None:
    night = QuietHours(21 * 60, 8 * 60)
    midnight = 1_790_000_000_000 - 1_790_000_000_000 % DAY
    assert quiet_release(night, midnight + 22 * HOUR) == midnight + DAY + 8 * HOUR
    assert quiet_release(night, midnight + 3 * HOUR) == midnight + 8 * HOUR
    assert quiet_release(night, midnight + 12 * HOUR) is None
    assert quiet_release(None, midnight) is None
    early = QuietHours(60, 6 * 60)
    assert quiet_release(early, midnight + 2 * HOUR) == midnight + 6 * HOUR
    assert quiet_release(early, midnight + 7 * HOUR) is None


@given(st.text(min_size=1, max_size=40))
def test_the_holdout_is_stable_and_roughly_its_share(cid: str) -> None:
    assert held_out(cid, 0.1) == held_out(cid, 0.1)
    assert not held_out(cid, 0.0)


def test_the_holdout_share_is_about_right() -> None:
    share = sum(held_out(f"cust-{i}", 0.10) for i in range(20_000)) / 20_000
    assert 0.09 < share < 0.11


@given(
    st.floats(-1000, 1000, allow_nan=False),
    st.integers(0, 10**12),
    st.integers(0, 10**11),
    st.integers(1, 10**8),
)
def test_decay_shrinks_toward_zero_and_never_flips_sign(
    score: float, t0: int, dt: int, half_life: int
) -> None:
    later = decayed(score, t0, t0 + dt, half_life)
    assert abs(later) <= abs(score) and later * score >= 0
    assert decayed(score, t0 + dt, t0, half_life) == score  # no decay backwards


DRIFT = (
    "drift:\n  after: {after}\n  half_life: 1d\n  loyalty_at: 1\n  risk_at: {risk}\n"
    "  defect_after: 9d\n  defect_to: defected\n"
)


@pytest.mark.parametrize(
    ("snippet", "line", "problem"),
    [
        (
            DRIFT.format(after="nowhere", risk=-1),
            2,
            "unknown stage 'nowhere'",
        ),
        (
            DRIFT.format(after="purchase", risk=5),
            5,
            "risk_at (5) must be below loyalty_at (1)",
        ),
        (
            "nudges:\n  policies:\n"
            "    - {kind: x, on: stall, stages: [cart], channel: pigeon, cooldown: 1d, window: 1d}\n",
            3,
            "unknown channel 'pigeon'",
        ),
        ("nudges:\n  holdout: 1.5\n", 2, "holdout must be a share"),
        ('nudges:\n  quiet_hours: {from: "25:00", to: "08:00"}\n', 2, "time of day"),
    ],
)
def test_bad_drift_and_nudge_sections_name_the_line(snippet: str, line: int, problem: str) -> None:
    base = (
        "name: t\nchannels: [web]\nstages:\n  - name: cart\n    enter_on: [add_to_cart]\n"
        "  - name: purchase\n    enter_on: [purchase]\n"
        "  - name: defected\n    exit: true\n    enter_on: [unsubscribe]\n"
    )
    with pytest.raises(MapError) as err:
        parse_map(base + snippet, "m.yaml")
    assert err.value.line == base.count("\n") + line and problem in err.value.problem
