"""Retention: idle customers are forgotten by a clock reading, as the map says,
and a later event starts a new journey."""

from __future__ import annotations

from dataclasses import replace

import pytest

from models import Touchpoint, load_map
from models.effects import deadline_of
from models.events import Clock
from models.journey_map import MapError, parse_map
from models.outputs import Erased
from models.reducer import fold, fold_customer
from models.rules import RetentionRules

DAY = 86_400_000
T0 = 1_790_000_000_000
BASE = load_map()
MAP = replace(BASE, retention=RetentionRules(idle_s=400 * 86_400, exited_s=90 * 86_400))


def tp(etype: str, day: float, eid: str, cid: str = "c1") -> Touchpoint:
    return Touchpoint(eid, cid, etype, "web", T0 + int(day * DAY))


def test_an_idle_customer_is_forgotten_at_the_limit_and_not_before() -> None:
    state = fold_customer(MAP, None, [tp("add_to_cart", 0, "e1")]).state
    assert state is not None and state.stage == "cart"
    early = fold_customer(MAP, state, [Clock("c1", T0 + 400 * DAY - 1)])
    assert early.state is not None and not early.forgotten
    gone = fold_customer(MAP, early.state, [Clock("c1", T0 + 400 * DAY)])
    assert gone.state is None and gone.erased and gone.forgotten and gone.changed
    assert not any(isinstance(o, Erased) for o in gone.outputs)  # not an erasure: no erasure record


def test_the_next_deadline_includes_the_retention_limit() -> None:
    state = fold_customer(MAP, None, [tp("page_view", 0, "e1")]).state
    assert state is not None
    without = deadline_of(BASE, state)
    with_retention = deadline_of(MAP, state)
    assert with_retention is not None
    assert with_retention <= T0 + 400 * DAY
    assert without is None or with_retention == min(without, T0 + 400 * DAY)


def test_a_defected_customer_is_kept_for_the_exited_limit() -> None:
    events = [tp("purchase", 0, "e1"), tp("unsubscribe", 1, "e2")]
    state = fold(MAP, events)["c1"]
    assert state.stage == "defected"
    kept = fold_customer(MAP, state, [Clock("c1", T0 + 91 * DAY - 1)])
    assert kept.state is not None
    gone = fold_customer(MAP, state, [Clock("c1", T0 + 91 * DAY)])
    assert gone.state is None and gone.forgotten
    # the funnel customer beside them, idle as long, is kept
    other = fold(MAP, [tp("add_to_cart", 1, "x1", cid="c2")])["c2"]
    assert fold_customer(MAP, other, [Clock("c2", T0 + 91 * DAY)]).state is not None


def test_a_later_event_starts_a_new_journey() -> None:
    events = [tp("page_view", 0, "e1"), tp("purchase", 1, "e2"), Clock("c1", T0 + 500 * DAY)]
    assert fold(MAP, events) == {}
    again = fold(MAP, [*events, tp("page_view", 501, "e1")])["c1"]  # even a reused id is new now
    assert again.events == 1 and again.stage == "awareness"
    assert again.first_touch_at == T0 + 501 * DAY and list(again.stages) == ["awareness"]


def test_without_a_retention_section_nobody_is_forgotten() -> None:
    state = fold(BASE, [tp("add_to_cart", 0, "e1")])["c1"]
    out = fold_customer(BASE, state, [Clock("c1", T0 + 5000 * DAY)])
    assert out.state is not None and not out.forgotten


SMALL = """\
name: small
channels: [web]
stages:
  - name: a
    enter_on: [x]
  - name: gone
    enter_on: [y]
    exit: true
"""


def test_the_section_is_read_and_checked_by_line() -> None:
    m = parse_map(SMALL + "retention: {idle: 30d, exited: 7d}\n", "m.yaml")
    assert m.retention == RetentionRules(idle_s=30 * 86_400, exited_s=7 * 86_400)
    assert parse_map(SMALL + "retention: {idle: 30d}\n", "m.yaml").retention == RetentionRules(30 * 86_400)
    with pytest.raises(MapError, match=r"m.yaml:10: .*needs 'idle'"):
        parse_map(SMALL + "retention:\n  exited: 7d\n", "m.yaml")
    with pytest.raises(MapError, match=r"m.yaml:11: idle must be a positive duration"):
        parse_map(SMALL + "retention:\n  exited: 7d\n  idle: soon\n", "m.yaml")
    with pytest.raises(MapError, match=r"m.yaml:11: .*forever"):
        parse_map(SMALL + "retention:\n  idle: 7d\n  forever: true\n", "m.yaml")


def test_durations_past_a_hundred_years_are_refused_by_line() -> None:
    """A deadline is an event time plus a duration and the deadline index keeps it in
    64 bits: an absurd duration is a map error, never an overflow in a clock tick."""
    ok = parse_map(SMALL + "retention: {idle: 36500d}\n", "m.yaml")
    assert ok.retention == RetentionRules(36_500 * 86_400)
    with pytest.raises(MapError, match=r"m.yaml:9: idle must be a positive duration .*at most 36500d"):
        parse_map(SMALL + "retention: {idle: 99999999999999999999d}\n", "m.yaml")
    with pytest.raises(MapError, match=r"m.yaml:5: stall_after must be a positive duration .*at most 36500d"):
        parse_map(SMALL.replace("  - name: a\n", "  - name: a\n    stall_after: 36501d\n"), "m.yaml")
