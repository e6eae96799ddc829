"""Segment calls as touchpoints: ids, names, channels, times and links."""

from __future__ import annotations

import base64
import gzip
from dataclasses import replace

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from models import load_map
from models.events import Rejection, Touchpoint, parse_touchpoint
from models.journey_map import IDENTIFY, MapError, parse_map
from models.segment import EVENT_NAMES, from_segment
from stream.http.segment import authorized, gunzip_limited, write_key_of

MAP = load_map()
NOW = "2026-12-04T10:00:00+00:00"


def touchpoint(call: object, call_type: str | None = None) -> Touchpoint | Rejection:
    out = from_segment(call, MAP, received_at=NOW, call_type=call_type)
    if isinstance(out, Rejection):
        return out
    return parse_touchpoint(orjson.dumps(out), MAP)


def test_a_track_call_becomes_a_touchpoint() -> None:
    tp = touchpoint(
        {
            "type": "track",
            "event": "Product Added",
            "messageId": "m-1",
            "anonymousId": "anon-1",
            "timestamp": "2026-12-04T09:00:00.000Z",
            "properties": {"sku": "X", "price": 9.5},
            "context": {"library": {"name": "analytics.js", "version": "2"}},
        }
    )
    assert isinstance(tp, Touchpoint)
    assert (tp.event_id, tp.customer_id, tp.type, tp.channel) == ("m-1", "anon-1", "add_to_cart", "web")
    assert tp.properties == {"sku": "X", "price": 9.5}


def test_the_user_id_wins_and_the_anonymous_id_is_linked() -> None:
    tp = touchpoint(
        {"event": "Order Completed", "messageId": "m", "userId": "u", "anonymousId": "a"}, "track"
    )
    assert isinstance(tp, Touchpoint) and tp.customer_id == "u" and tp.type == "purchase"
    assert tp.properties == {"anonymous_id": "a"}


def test_identify_and_alias_link_the_previous_id() -> None:
    ident = touchpoint({"type": "identify", "messageId": "m1", "userId": "u", "anonymousId": "a"})
    assert isinstance(ident, Touchpoint) and ident.type == IDENTIFY
    assert ident.properties == {"previous_id": "a"}
    alias = touchpoint({"messageId": "m2", "userId": "u", "previousId": "old"}, "alias")
    assert (
        isinstance(alias, Touchpoint)
        and alias.type == IDENTIFY
        and alias.properties == {"previous_id": "old"}
    )
    traits = touchpoint({"type": "identify", "messageId": "m3", "userId": "u", "traits": {"email": "x@y"}})
    assert isinstance(traits, Touchpoint) and traits.properties is None  # traits are profile data, not kept


def test_page_and_screen_are_page_views_and_mobile_libraries_are_the_app() -> None:
    page = touchpoint({"type": "page", "name": "Home", "messageId": "p", "anonymousId": "a"})
    assert isinstance(page, Touchpoint) and page.type == "page_view" and page.properties == {"name": "Home"}
    screen = touchpoint(
        {
            "type": "screen",
            "messageId": "s",
            "anonymousId": "a",
            "context": {"library": {"name": "analytics-ios"}},
        }
    )
    assert isinstance(screen, Touchpoint) and screen.channel == "mobile_app"
    told = touchpoint({"type": "page", "messageId": "t", "anonymousId": "a", "context": {"channel": "email"}})
    assert isinstance(told, Touchpoint) and told.channel == "email"


def test_every_spec_name_in_the_default_map_lands_on_a_type_it_knows() -> None:
    for name, etype in EVENT_NAMES.items():
        tp = touchpoint({"type": "track", "event": name, "messageId": "m", "userId": "u"})
        if etype in MAP.event_types:
            assert isinstance(tp, Touchpoint) and tp.type == etype, name
        else:
            assert isinstance(tp, Rejection) and tp.reason == "unknown_type", name


def test_the_map_adds_its_own_names_and_snake_case_names_pass() -> None:
    jmap = replace(MAP, event_names={"Wishlist Shared": "social_engagement"})
    out = from_segment(
        {"type": "track", "event": "Wishlist Shared", "messageId": "m", "userId": "u"}, jmap, received_at=NOW
    )
    assert isinstance(out, dict) and out["type"] == "social_engagement"
    snake = touchpoint({"type": "track", "event": "Newsletter Signup", "messageId": "m", "userId": "u"})
    assert isinstance(snake, Touchpoint) and snake.type == "newsletter_signup"


def test_the_map_checks_its_event_names_by_line() -> None:
    text = (
        "name: m\nchannels: [web]\nstages:\n  - name: a\n    enter_on: [x]\n"
        "event_names:\n  Thing Done: x\n  Other Thing: nope\n"
    )
    with pytest.raises(MapError) as err:
        parse_map(text, "m.yaml")
    assert "m.yaml:8" in str(err.value) and "nope" in str(err.value)
    assert parse_map(text.replace("  Other Thing: nope\n", ""), "m.yaml").event_names == {"Thing Done": "x"}


@pytest.mark.parametrize(
    ("call", "reason"),
    [
        ([], "not_object"),
        ({"type": "group", "messageId": "m", "userId": "u"}, "unknown_type"),
        ({"type": "track", "event": "Product Added", "userId": "u"}, "missing_field"),
        ({"type": "track", "event": "Product Added", "messageId": "m"}, "missing_field"),
        ({"type": "track", "messageId": "m", "userId": "u"}, "missing_field"),
        ({"type": "track", "event": "Rocket Launched", "messageId": "m", "userId": "u"}, "unknown_type"),
        ({"type": "alias", "messageId": "m", "userId": "u"}, "missing_field"),
        (
            {"type": "track", "event": "Product Added", "messageId": "m", "userId": "u", "properties": 3},
            "bad_field",
        ),
        ({"type": "track", "event": "Product Added", "messageId": {"$ne": 1}, "userId": "u"}, "bad_field"),
        ({"type": "page", "messageId": "m", "userId": "u", "anonymousId": ["x"]}, "bad_field"),
        ({"type": "page", "messageId": "m", "userId": "u", "timestamp": "yesterday"}, "bad_field"),
    ],
)
def test_bad_calls_are_refused_with_a_reason(call: object, reason: str) -> None:
    out = touchpoint(call)
    assert isinstance(out, Rejection) and out.reason == reason, out


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
        max_leaves=20,
    )
)
def test_any_json_is_a_touchpoint_or_a_rejection(call: object) -> None:
    out = touchpoint(call)
    assert isinstance(out, Touchpoint | Rejection)


def test_the_write_key_is_basic_auth_and_gzip_is_bounded() -> None:
    header = "Basic " + base64.b64encode(b"wk-1:").decode()
    assert write_key_of(header) == "wk-1"
    assert authorized("wk-1", header) and not authorized("wk-2", header)
    assert (
        authorized("wk-1", "Bearer wk-1")
        and not authorized("wk-1", "")
        and not authorized("wk-1", "Basic %%%")
    )
    assert authorized(None, "")
    body = gzip.compress(b'{"batch": []}')
    assert gunzip_limited(body, 100) == b'{"batch": []}'
    bomb = gzip.compress(b"0" * 10_000_000)
    assert len(bomb) < 20_000 and gunzip_limited(bomb, 500 * 1024) is None
