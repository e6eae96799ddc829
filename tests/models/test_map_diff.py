"""``journey map diff``: every kind of change is named, and a map equals itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from models import load_map
from models.journey_map import MapError, parse_map
from models.map_diff import diff_maps

DEMO = Path(__file__).resolve().parents[2] / "deploy" / "local" / "demo-map.yaml"


def test_a_map_has_a_version_from_its_content_or_its_own() -> None:
    text = DEMO.read_text()
    a = parse_map(text, "a")
    assert a.version.startswith("c") and len(a.version) == 13
    assert parse_map("# a comment\n" + text, "b").version == a.version  # comments do not count
    assert parse_map(text.replace("stall_after: 20s", "stall_after: 30s"), "c").version != a.version
    assert parse_map("version: spring-2027\n" + text, "d").version == "spring-2027"
    with pytest.raises(MapError) as err:
        parse_map("version: [1]\n" + text, "e.yaml")
    assert "e.yaml:1" in str(err.value)


def test_nothing_changes_from_a_map_to_itself() -> None:
    assert diff_maps(load_map(DEMO), load_map(DEMO)) == []


def test_every_kind_of_change_is_listed() -> None:
    text = DEMO.read_text()
    new_text = (
        text.replace(
            "  - name: cart\n    enter_on: [add_to_cart, checkout_started]\n    stall_after: 20s",
            "  - name: basket\n    enter_on: [add_to_cart]\n    stall_after: 1m\n"
            "  - name: cart\n    enter_on: [checkout_started]\n    stall_after: 40s",
        )
        .replace("holdout: 0.10", "holdout: 0.20")
        .replace("cooldown: 10m, window: 5m", "cooldown: 15m, window: 5m")
        .replace("channels: [web,", "channels: [kiosk, web,")
    )
    new_text += "\nevent_names: {Wishlist Shared: social_engagement}\n"
    changes = {(c.section, c.what): (c.old, c.new) for c in diff_maps(parse_map(text), parse_map(new_text))}
    assert changes[("stages", "basket")] == (None, "position 3")
    assert changes[("stages", "cart stall_after")] == ("20s", "40s")
    assert changes[("stages", "cart position")] == (3, 4)
    assert changes[("events", "add_to_cart enters")] == ("cart", "basket")
    assert changes[("nudges", "holdout")] == (0.10, 0.20)
    assert changes[("nudges", "cart_reminder.cooldown_s")] == (600, 900)
    assert changes[("channels", "kiosk")] == (None, True)
    assert changes[("event_names", "Wishlist Shared")] == (None, "social_engagement")
    assert ("map", "version") in changes
    lines = [c.line() for c in diff_maps(parse_map(text), parse_map(new_text))]
    assert "~ events: add_to_cart enters: cart -> basket" in lines
