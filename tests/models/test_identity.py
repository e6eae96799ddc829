"""Identity stitching in the core: links, the merge rule, its guards, chains,
erasure, and the properties the written rule promises."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from models import Touchpoint
from models.events import Clock, Erase, Rejection, parse_touchpoint
from models.identity import (
    LINK_HEADER,
    MAX_IDS,
    MERGE_HEADER,
    Link,
    MergeRecord,
    encode_merge,
    merge_id,
    merge_states,
    parse_link,
    parse_merge,
)
from models.journey_map import IDENTIFY
from models.outputs import IdentityRecord, Nudge
from models.reducer import fold, fold_customer, fold_linked
from models.state import CustomerState
from tests.models.strategies import MAP, T0, touchpoints

H = 3_600_000


def tp(etype: str, hours: float, eid: str, cid: str, **props: object) -> Touchpoint:
    return Touchpoint(eid, cid, etype, "web", T0 + int(hours * H), dict(props) if props else None)


def identify(known: str, anon: str | None, hours: float, eid: str) -> Touchpoint:
    return tp(IDENTIFY, hours, eid, known, **({"previous_id": anon} if anon else {}))


def test_an_anonymous_journey_is_merged_into_the_known_customer() -> None:
    events = [
        tp("page_view", 0, "a1", "anon-1"),
        tp("product_view", 1, "a2", "anon-1"),
        tp("add_to_cart", 2, "a3", "anon-1"),
        identify("user-1", "anon-1", 3, "i1"),
    ]
    states = fold_linked(MAP, events)
    user, anon = states["user-1"], states["anon-1"]
    assert anon.merged_into == "user-1" and anon.is_alias and anon.stage == ""
    assert user.stage == "cart" and user.known and user.ids == ("anon-1",)
    assert user.events == 4 and user.first_touch_at == T0 and user.stages["awareness"] == T0
    assert user.type_counts["add_to_cart"] == 1 and user.type_counts[IDENTIFY] == 1


def test_later_events_of_the_anonymous_id_are_rekeyed_and_deduplicated() -> None:
    events = [
        tp("page_view", 0, "a1", "anon-1"),
        identify("user-1", "anon-1", 1, "i1"),
        tp("add_to_cart", 2, "a2", "anon-1"),
        tp("add_to_cart", 2, "a2", "anon-1"),  # the app sent it twice
    ]
    states = fold_linked(MAP, events)
    assert states["user-1"].stage == "cart" and states["user-1"].events == 3
    out = fold_customer(MAP, states["anon-1"], [events[2]])
    (fwd,) = out.forwards
    assert fwd.key == "user-1" and fwd.header == "journey-rekeyed-from" and fwd.header_value == b"anon-1"
    assert orjson.loads(fwd.value)["customer_id"] == "user-1" and out.rekeyed == 1


def test_the_link_on_any_event_merges_too() -> None:
    events = [tp("search", 0, "a1", "dev-1"), tp("purchase", 1, "k1", "user-1", anonymous_id="dev-1")]
    states = fold_linked(MAP, events)
    assert states["user-1"].stage == "purchase" and states["user-1"].ids == ("dev-1",)
    assert states["user-1"].stages["consideration"] == T0


def test_two_known_ids_are_never_merged_and_the_refusal_is_audited() -> None:
    first = fold(MAP, [identify("user-1", None, 0, "i1")])["user-1"]
    assert first.known
    out = fold_customer(MAP, first, [Link("user-1", "user-2", T0)])
    assert out.state is first or out.state is None
    ((item, reason, _),) = out.refused
    assert reason == "merge_refused" and isinstance(item, Link)
    (audit,) = [o for o in out.outputs if isinstance(o, IdentityRecord)]
    assert audit.outcome == "refused" and audit.to_record()["known_id"] == "user-2"
    states = fold_linked(MAP, [identify("user-1", None, 0, "i1"), identify("user-2", "user-1", 1, "i2")])
    assert states["user-1"].merged_into is None and states["user-2"].ids == ()


def test_an_id_merged_into_one_customer_is_not_merged_into_a_second() -> None:
    events = [
        tp("page_view", 0, "a1", "anon-1"),
        identify("user-1", "anon-1", 1, "i1"),
        identify("user-2", "anon-1", 2, "i2"),
    ]
    states = fold_linked(MAP, events)
    assert states["anon-1"].merged_into == "user-1" and states["user-2"].ids == ()


def test_a_chain_resolves_to_one_customer_and_a_cycle_changes_nothing() -> None:
    events = [
        tp("page_view", 0, "a1", "anon-a"),
        tp("add_to_cart", 1, "b1", "anon-b"),
        identify("user-c", "anon-b", 2, "i1"),  # b into c
        identify("anon-b", "anon-a", 3, "i2"),  # re-keyed to c: a into c
        identify("anon-a", "user-c", 4, "i3"),  # re-keyed to c: c into itself
    ]
    states = fold_linked(MAP, events)
    c = states["user-c"]
    assert c.ids == ("anon-b", "anon-a") and c.stage == "cart" and c.events == 5
    assert states["anon-a"].merged_into == "user-c" and states["anon-b"].merged_into == "user-c"


def test_a_merge_delivered_twice_is_applied_once() -> None:
    anon = fold(MAP, [tp("add_to_cart", 0, "a1", "anon-1")])["anon-1"]
    user = fold(MAP, [identify("user-1", "anon-1", 1, "i1")])["user-1"]
    m = MergeRecord(merge_id("anon-1", "user-1"), "anon-1", "user-1", T0 + H, anon)
    once = fold_customer(MAP, user, [m])
    twice = fold_customer(MAP, once.state, [m])
    assert once.merges == 1 and twice.duplicates == 1 and not twice.changed
    assert twice.state == once.state


def test_erasing_the_known_customer_erases_every_merged_id() -> None:
    events = [
        tp("page_view", 0, "a1", "anon-1"),
        tp("page_view", 0, "b1", "anon-2"),
        identify("user-1", "anon-1", 1, "i1"),
        tp("search", 2, "k1", "user-1", anonymous_id="anon-2"),
        Erase("user-1", "er-1", T0 + 3 * H),
    ]
    assert fold_linked(MAP, events) == {}


def test_the_ids_per_customer_are_bounded() -> None:
    events: list[Touchpoint] = []
    for i in range(MAX_IDS + 3):
        events.append(tp("page_view", i, f"a{i}", f"anon-{i}"))
        events.append(tp("search", i, f"k{i}", "user-1", anonymous_id=f"anon-{i}"))
    states = fold_linked(MAP, events)
    assert len(states["user-1"].ids) == MAX_IDS
    assert states[f"anon-{MAX_IDS + 1}"].merged_into is None
    refused = fold_customer(MAP, states["user-1"], [tp("search", 99, "k99", "user-1", anonymous_id="anon-x")])
    assert [o.outcome for o in refused.outputs if isinstance(o, IdentityRecord)] == ["refused"]
    assert refused.forwards == [] and refused.applied == 1


def test_a_stall_on_both_sides_earns_one_reminder() -> None:
    """Both ids abandoned a cart and got a reminder; merged, the customer
    keeps one open stall (no new stall, no third reminder) and both nudges."""
    day = 24
    a = fold(MAP, [tp("add_to_cart", 0, "a1", "anon-1")])["anon-1"]
    a = fold_customer(MAP, a, [Clock("anon-1", T0 + 2 * H)]).state
    k = fold(MAP, [tp("add_to_cart", 1, "k1", "user-1"), identify("user-1", None, 1, "i1")])["user-1"]
    k = fold_customer(MAP, k, [Clock("user-1", T0 + 3 * H)]).state
    assert a is not None and k is not None and a.stall is not None and k.stall is not None
    m = MergeRecord(merge_id("anon-1", "user-1"), "anon-1", "user-1", T0 + 4 * H, a)
    out = fold_customer(MAP, k, [m, Clock("user-1", T0 + 5 * H), Clock("user-1", T0 + day * H)])
    assert out.state is not None and out.state.stall == a.stall  # the one detected first
    assert not [o for o in out.outputs if isinstance(o, Nudge)]
    ids = [n.nudge_id for n in out.state.nudges]
    assert len(ids) == len(set(ids)) == 2


def test_link_and_merge_records_are_checked() -> None:
    assert parse_link(Link("a", "k", T0).to_json(), b"a") == Link("a", "k", T0)
    assert isinstance(parse_link(b'{"link": "a", "known": "", "at": 1}', b"a"), Rejection)
    assert isinstance(parse_link(Link("a", "k", T0).to_json(), b"k"), Rejection)
    anon = fold(MAP, [tp("add_to_cart", 0, "a1", "a")])["a"]
    good = MergeRecord(merge_id("a", "k"), "a", "k", T0, anon)
    assert parse_merge(encode_merge(good), b"k", MAP) == good
    forged = MergeRecord(merge_id("a", "x"), "a", "k", T0, anon)
    assert isinstance(parse_merge(encode_merge(forged), b"k", MAP), Rejection)
    other_map = MergeRecord(good.merge_id, "a", "k", T0, CustomerState("a", "nowhere", 0, {}, "web", 0, 0, 1))
    assert isinstance(parse_merge(encode_merge(other_map), b"k", MAP), Rejection)
    assert isinstance(parse_merge(b"\x93junk", b"k", MAP), Rejection)
    assert LINK_HEADER != MERGE_HEADER


def test_a_link_property_must_be_an_id() -> None:
    raw = orjson.dumps(
        {
            "event_id": "e1",
            "customer_id": "u1",
            "type": IDENTIFY,
            "channel": "web",
            "timestamp": T0,
            "properties": {"previous_id": {"$ne": 1}},
        }
    )
    out = parse_touchpoint(raw, MAP)
    assert isinstance(out, Rejection) and out.reason == "bad_field" and "previous_id" in out.detail


@settings(max_examples=150)
@given(
    anon_events=touchpoints(customers=1, max_events=25),
    known_events=touchpoints(customers=1, max_events=25),
)
def test_the_merge_of_two_plain_folds_follows_the_written_rule(
    anon_events: list[Touchpoint], known_events: list[Touchpoint]
) -> None:
    """Whatever each id did: the linked fold equals the rule applied to each
    id's plain fold, and the rule's promises hold (stage, counts, first touch,
    one stall at most, every nudge once)."""
    anon_events = [  # an anonymous id never identifies itself (that would make it known)
        ev.__class__(ev.event_id, "anon", ev.type, ev.channel, ev.ts, None)
        for ev in anon_events
        if ev.type != IDENTIFY
    ]
    known_events = [
        ev.__class__(f"k{ev.event_id}", "user", ev.type, ev.channel, ev.ts, None) for ev in known_events
    ]
    link = identify("user", "anon", 24 * 60, "the-identify")
    linked = fold_linked(MAP, [*anon_events, *known_events, link])
    anon = fold(MAP, anon_events).get("anon")
    known = fold(MAP, [*known_events, link])["user"]
    if anon is None:
        assert (
            linked["user"]
            == merge_states(
                MAP, known, None, MergeRecord(merge_id("anon", "user"), "anon", "user", link.ts, None)
            ).state
        )
        return
    expected = merge_states(
        MAP, known, anon, MergeRecord(merge_id("anon", "user"), "anon", "user", link.ts, anon)
    ).state
    assert linked["user"] == expected
    assert linked["anon"].merged_into == "user"
    assert expected.events == anon.events + known.events
    assert expected.first_touch_at == min(anon.first_touch_at, known.first_touch_at)
    assert expected.last_event_at == max(anon.last_event_at, known.last_event_at)
    assert set(expected.stages) == set(anon.stages) | set(known.stages)
    for s, at in expected.stages.items():
        assert at == min(x.stages[s] for x in (anon, known) if s in x.stages)
    if not any(MAP.stage_by_name[x.stage].exit for x in (anon, known)):
        rank = MAP.stage_by_name[expected.stage].index
        assert rank == max(MAP.stage_by_name[x.stage].index for x in (anon, known))
    assert expected.stall is None or expected.stall.stage == expected.stage
    ids = [n.nudge_id for n in expected.nudges]
    assert len(ids) == len(set(ids))
    assert set(ids) <= {n.nudge_id for n in (*anon.nudges, *known.nudges)}
    # a redelivered merge changes nothing
    again = fold_customer(
        MAP, linked["user"], [MergeRecord(merge_id("anon", "user"), "anon", "user", link.ts, anon)]
    )
    assert not again.changed


@given(st.data())
def test_a_merge_never_touches_a_third_customer(data: st.DataObject) -> None:
    events = data.draw(touchpoints(customers=3, max_events=30))
    others = fold(MAP, [e for e in events if e.customer_id == "c2"])
    linked = [*[e for e in events if e.customer_id != "c2"], identify("c1", "c0", 24 * 60, "i")]
    linked += [e for e in events if e.customer_id == "c2"]
    states = fold_linked(MAP, linked)
    assert states.get("c2") == others.get("c2")
