from pathlib import Path

import pytest

from models import MapError, load_map, parse_map

CONTRACT = {
    "awareness": ["page_view", "ad_click", "email_open", "social_engagement", "store_visit"],
    "consideration": ["product_view", "search", "review_read", "price_compare", "chat_question"],
    "cart": ["add_to_cart", "checkout_started"],
    "purchase": ["purchase"],
    "service": ["support_ticket", "return_requested", "complaint"],
    "defected": ["unsubscribe", "account_closed"],
}

GOOD = """\
name: tiny
channels: [web]
stages:
  - name: a
    enter_on: [x]
  - name: b
    enter_on: [y]
    stall_after: 1h
"""


def test_default_map_has_every_contract_event_type() -> None:
    m = load_map()
    assert m.stage_names == (
        "awareness",
        "consideration",
        "cart",
        "purchase",
        "service",
        "loyalty",
        "defected",
    )
    for stage, types in CONTRACT.items():
        for t in types:
            assert m.entry_stage[t].name == stage, t
    assert m.stage_by_name["defected"].exit
    assert m.stage_by_name["cart"].stall_after_s == 3600
    assert {"web", "mobile_app", "email", "phone", "chat", "store", "ads", "social", "referral"} <= m.channels


def test_load_map_from_file(tmp_path: Path) -> None:
    p = tmp_path / "m.yaml"
    p.write_text(GOOD)
    m = load_map(p)
    assert m.name == "tiny"
    assert m.entry_stage["y"].name == "b"
    assert m.first_stage.name == "a"


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        (
            GOOD.replace("  - name: b\n    enter_on: [y]", "  - name: b\n    enter_on: [x]"),
            7,
            "already moves",
        ),
        (GOOD.replace("stall_after: 1h", "stall_after: soon"), 8, "stall_after"),
        (GOOD.replace("name: b", "name: a"), 6, "defined twice"),
        (GOOD.replace("name: b", "name: B"), 6, "lower-case"),
        (GOOD + "colour: red\n", 9, "unknown key 'colour'"),
        (GOOD.replace("channels: [web]", "channels: web"), 2, "must be a list"),
        (GOOD + "moves:\n  - on: [x]\n    from: [a]\n    to: nowhere\n", 12, "unknown stage 'nowhere'"),
        (GOOD + "moves:\n  - on: [x]\n    from: [zz]\n    to: a\n", 11, "unknown stage 'zz'"),
        (GOOD.replace("channels: [web]", "channels: [web"), 3, "not valid YAML"),
        ("name: x\nchannels: [web]\nstages:\n  - name: d\n    exit: true\n", 4, "must not be an exit"),
        ("name: x\nstages: []\n", 1, "needs a 'channels'"),
    ],
)
def test_bad_maps_name_file_line_and_problem(text: str, line: int, words: str) -> None:
    with pytest.raises(MapError) as info:
        parse_map(text, "maps/bad.yaml")
    assert str(info.value).startswith(f"maps/bad.yaml:{line}: "), str(info.value)
    assert words in str(info.value)


def test_missing_file_is_a_map_error(tmp_path: Path) -> None:
    with pytest.raises(MapError, match="cannot read"):
        load_map(tmp_path / "absent.yaml")
