"""What a customer's state keeps for the insight layer: moves by from/to,
the next step after a stall, nudge outcomes, dimension values and the time
zone; and how a merge of two ids combines them."""

from __future__ import annotations

from pathlib import Path

import pytest

from models import Touchpoint, load_map
from models.events import Clock, Delivery
from models.identity import MergeRecord, merge_id, merge_states
from models.journey_map import parse_map
from models.reducer import fold
from models.state import LATER

MAP = load_map()
T0 = 1_790_000_000_000
H = 3_600_000


def ev(i: int, t: str, at: int, cid: str = "c", **props: object) -> Touchpoint:
    return Touchpoint(f"{cid}-{i}", cid, t, "web", at, props or None)


def test_every_move_is_counted_by_from_and_to_including_skips_backward_moves_and_defection() -> None:
    s = fold(
        MAP,
        [
            ev(0, "page_view", T0),
            ev(1, "add_to_cart", T0 + 1),  # a skip: awareness -> cart
            ev(2, "purchase", T0 + 2),
            ev(3, "review_written", T0 + 3),  # purchase -> loyalty (a move)
            ev(4, "support_ticket", T0 + 4),  # loyalty -> service (backward)
            ev(5, "unsubscribe", T0 + 5),  # defection
        ],
    )["c"]
    assert s.flows == {
        ">awareness": 1,
        "awareness>cart": 1,
        "cart>purchase": 1,
        "purchase>loyalty": 1,
        "loyalty>service": 1,
        "service>defected": 1,
    }


def test_the_first_event_after_a_stall_is_kept_within_the_window_and_later_ones_say_so() -> None:
    items = [
        ev(0, "add_to_cart", T0),
        Clock("c", T0 + 2 * H),  # the cart stalls (1h)
        ev(1, "coupon_redeemed", T0 + 3 * H),  # the next event: moves nobody
        ev(2, "purchase", T0 + 4 * H),  # not the first after the stall: not kept
    ]
    s = fold(MAP, items)["c"]
    assert [(st, t, after) for _, st, t, after in s.after_stall] == [("cart", "coupon_redeemed", "cart")]
    late = fold(MAP, [items[0], items[1], ev(3, "purchase", T0 + 30 * 24 * H)])["c"]
    assert [(st, t, after) for _, st, t, after in late.after_stall] == [("cart", LATER, "purchase")]


def test_nudge_outcomes_are_counted_by_kind_group_and_result() -> None:
    items = [
        ev(0, "add_to_cart", T0),
        Clock("c", T0 + 2 * H),  # a stall and a cart reminder
    ]
    s = fold(MAP, items)["c"]
    (nudge,) = s.nudges
    group = "held_out" if nudge.held_out else "nudged"
    s2 = fold(
        MAP,
        [
            *items,
            Delivery("c", nudge.nudge_id, "held_out" if nudge.held_out else "sent"),
            ev(1, "purchase", T0 + 3 * H),
        ],
    )["c"]
    assert s2.outcomes == {f"cart_reminder|{group}|converted": 1}
    # Not delivered: no outcome record, nothing counted.
    s3 = fold(MAP, [*items, ev(1, "purchase", T0 + 3 * H)])["c"]
    assert s3.outcomes == {}


def test_dimension_values_stick_first_or_follow_the_latest_and_unknown_values_are_other() -> None:
    s = fold(
        MAP,
        [
            ev(0, "page_view", T0, device="mobile", variant="treatment", segment="new"),
            ev(1, "page_view", T0 + 1, device="desktop", variant="control", segment="<script>"),
            ev(2, "page_view", T0 + 2, tz="Asia/Tokyo"),
            ev(3, "page_view", T0 + 3, tz="Nowhere/Land"),  # refused by the parser; ignored here
        ],
    )["c"]
    assert s.dims == {"device": "desktop", "variant": "treatment", "segment": "other"}
    assert s.tz == "Asia/Tokyo"


def test_a_nudge_carries_the_customers_zone() -> None:
    out = fold(MAP, [ev(0, "add_to_cart", T0, tz="Europe/Berlin"), Clock("c", T0 + 2 * H)])
    assert out["c"].tz == "Europe/Berlin"
    from models.reducer import fold_customer

    f = fold_customer(MAP, None, [ev(0, "add_to_cart", T0, tz="Europe/Berlin"), Clock("c", T0 + 2 * H)])
    nudges = [o for o in f.outputs if type(o).__name__ == "Nudge"]
    assert nudges and nudges[0].tz == "Europe/Berlin"  # type: ignore[attr-defined]


def test_a_merge_sums_moves_and_outcomes_and_keeps_the_known_sides_values_first() -> None:
    known = fold(MAP, [ev(0, "page_view", T0, "k", device="desktop"), ev(1, "add_to_cart", T0 + 1, "k")])["k"]
    anon = fold(MAP, [ev(0, "page_view", T0 - 5, "a", device="mobile", variant="control", tz="UTC")])["a"]
    m = MergeRecord(merge_id("a", "k"), "a", "k", T0 + 2, anon)
    merged = merge_states(MAP, known, anon, m).state
    assert merged.flows == {">awareness": 2, "awareness>cart": 1}
    assert merged.dims == {"device": "desktop", "variant": "control"}
    assert merged.tz == "UTC"


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ("dimensions:\n  - {name: device, property: device, values: [other]}\n", "kept for values"),
        ("dimensions:\n  - {name: device, property: device, values: [a], keep: never}\n", "keep must be"),
        ("dimensions:\n  - {name: v, property: v, values: [a], experiment: true}\n", "at least two values"),
        ("insight:\n  odds: {by: nothing}\n", "unknown dimension"),
        ("nudges:\n  time_zone: Mars/Base\n", "not an IANA time zone"),
        ("nudges:\n  daily_cap: 0\n", "daily_cap must be"),
    ],
)
def test_bad_insight_settings_are_refused_by_line(section: str, problem: str) -> None:
    base = "name: m\nchannels: [web]\nstages:\n  - {name: a, enter_on: [x]}\n"
    with pytest.raises(Exception) as err:
        parse_map(base + section, "m.yaml")
    assert problem in str(err.value) and "m.yaml:6:" in str(err.value)


LOW_ODDS = MAP.nudges.policies  # the default map has none: a map with one below
ODDS_MAP = parse_map(
    (Path(__file__).resolve().parents[2] / "models" / "default_map.yaml")
    .read_text()
    .replace(
        "  policies:\n",
        "  policies:\n    - {kind: rescue, on: low_odds, stages: [consideration], below: 0.3, after: 1h,\n"
        "       channel: email, cooldown: 7d, window: 3d}\n",
    ),
    "odds.yaml",
)


def test_a_low_odds_checkpoint_asks_the_worker_once_and_a_low_reading_earns_the_nudge() -> None:
    from models.effects import ODDS_RETRY_MS, deadline_of
    from models.events import OddsReading
    from models.outputs import OddsDue
    from models.reducer import fold_customer

    start = [ev(0, "product_view", T0)]
    s0 = fold(ODDS_MAP, start)["c"]
    assert deadline_of(ODDS_MAP, s0) == T0 + H  # the checkpoint, an hour into the stage
    asked = fold_customer(ODDS_MAP, s0, [Clock("c", T0 + H)])
    assert [o for o in asked.outputs if isinstance(o, OddsDue)] == [OddsDue("c", "consideration", T0, T0 + H)]
    s1 = asked.state
    assert s1 is not None and deadline_of(ODDS_MAP, s1) == T0 + H + ODDS_RETRY_MS  # asked again if no answer
    # An answer for an old visit, or another stage, changes nothing.
    stale = fold_customer(ODDS_MAP, s1, [OddsReading("c", "consideration", T0 - 1, 0.01, T0 + H)])
    assert not stale.changed
    low = fold_customer(ODDS_MAP, s1, [OddsReading("c", "consideration", T0, 0.1, T0 + H + 5)])
    nudges = [o for o in low.outputs if type(o).__name__ == "Nudge"]
    assert len(nudges) == 1 and nudges[0].trigger == "low_odds" and nudges[0].reason["odds"] == 0.1  # type: ignore[attr-defined]
    assert low.state is not None and low.state.odds_checked == T0
    assert deadline_of(ODDS_MAP, low.state) != T0 + H + ODDS_RETRY_MS  # answered: not asked again
    again = fold_customer(ODDS_MAP, low.state, [OddsReading("c", "consideration", T0, 0.1, T0 + H + 9)])
    assert not again.changed and not again.outputs  # a repeated reading: nothing
    high = fold_customer(ODDS_MAP, s1, [OddsReading("c", "consideration", T0, 0.6, T0 + H + 5)])
    assert high.changed and not [o for o in high.outputs if type(o).__name__ == "Nudge"]
    none = fold_customer(ODDS_MAP, s1, [OddsReading("c", "consideration", T0, None, T0 + H + 5)])
    assert none.state is not None and none.state.odds_checked == T0 and not none.outputs
    assert LOW_ODDS  # the default map's own policies parse alongside


def test_a_low_odds_policy_needs_its_bar_and_checkpoint() -> None:
    base = (Path(__file__).resolve().parents[2] / "models" / "default_map.yaml").read_text()
    bad = base.replace(
        "  policies:\n",
        "  policies:\n    - {kind: rescue, on: low_odds, stages: [cart],\n"
        "       channel: email, cooldown: 1d, window: 1d}\n",
    )
    with pytest.raises(Exception, match="needs 'stages', 'below'"):
        parse_map(bad, "bad.yaml")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "not_json"),
        (b"[1, 2]", "not_object"),
        (b'{"odds": 0.1, "stage": "cart", "visit": 1, "at": 2}', "bad_field"),  # no customer
        (b'{"odds": 2, "stage": "cart", "visit": 1, "at": 2, "customer_id": "c"}', "bad_field"),
        (b'{"odds": true, "stage": "cart", "visit": 1, "at": 2, "customer_id": "c"}', "bad_field"),
        (b'{"odds": "low", "stage": "cart", "visit": 1, "at": 2, "customer_id": "c"}', "bad_field"),
        (b'{"odds": 0.1, "stage": {"a": 1}, "visit": 1, "at": 2, "customer_id": "c"}', "bad_field"),
        (
            b'{"odds": 0.1, "stage": "cart", "visit": 99999999999999999, "at": 2, "customer_id": "c"}',
            "bad_field",
        ),
        (b'{"odds": 0.1, "stage": "cart", "visit": 1, "at": -5, "customer_id": "c"}', "bad_field"),
        (b'{"odds": 0.1, "stage": "cart", "visit": 1, "at": 2, "customer_id": "other"}', "key_mismatch"),
    ],
)
def test_an_odds_reading_that_is_not_one_is_refused_with_its_reason(raw: bytes, reason: str) -> None:
    from models.events import Rejection, parse_odds

    got = parse_odds(raw, b"c")
    assert isinstance(got, Rejection) and got.reason == reason


def test_an_odds_reading_parses_and_a_null_means_no_estimate() -> None:
    from models.events import OddsReading, parse_odds

    r = OddsReading("c", "cart", T0, None, T0 + 5)
    assert parse_odds(r.to_json(), b"c") == r
    assert parse_odds(OddsReading("c", "cart", T0, 0.25, T0).to_json(), b"c") == OddsReading(
        "c", "cart", T0, 0.25, T0
    )
