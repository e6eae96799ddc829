import orjson
import pytest

from models import REASONS, Rejection, Touchpoint, load_map, parse_touchpoint

MAP = load_map()


def event(**over: object) -> bytes:
    body: dict[str, object] = {
        "event_id": "e1",
        "customer_id": "c1",
        "type": "page_view",
        "channel": "web",
        "timestamp": "2026-11-24T08:00:00.250+01:00",
    }
    body.update(over)
    return orjson.dumps({k: v for k, v in body.items() if v is not ...})


def test_valid_event_parses_with_utc_millis() -> None:
    tp = parse_touchpoint(event(properties={"order_value": 9.5}), MAP, key=b"c1")
    assert tp == Touchpoint("e1", "c1", "page_view", "web", 1795503600250, {"order_value": 9.5})


def test_epoch_millis_timestamp_and_roundtrip() -> None:
    tp = parse_touchpoint(event(timestamp=1795503600250), MAP)
    assert isinstance(tp, Touchpoint) and tp.ts == 1795503600250
    assert parse_touchpoint(tp.to_json(), MAP) == tp


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe", "not_json"),
        (b"{not json", "not_json"),
        (b"[1,2]", "not_object"),
        (event(event_id=...), "missing_field"),
        (event(timestamp=...), "missing_field"),
        (event(event_id=7), "bad_field"),
        (event(customer_id=""), "bad_field"),
        (event(customer_id="x" * 129), "bad_field"),
        (event(timestamp="2026-11-24T08:00:00"), "bad_field"),
        (event(timestamp=True), "bad_field"),
        (event(timestamp=-5), "bad_field"),
        (event(timestamp=[1]), "bad_field"),
        (event(properties=[1]), "bad_field"),
        (event(type=3), "bad_field"),
        (event(type="teleport"), "unknown_type"),
        (event(channel="carrier_pigeon"), "unknown_channel"),
    ],
)
def test_rejections_have_machine_readable_reasons(raw: bytes, reason: str) -> None:
    out = parse_touchpoint(raw, MAP)
    assert isinstance(out, Rejection)
    assert out.reason == reason
    assert out.reason in REASONS
    assert out.detail


def test_oversize_and_key_mismatch() -> None:
    big = event(properties={"blob": "x" * 2000})
    assert parse_touchpoint(big, MAP, max_bytes=1000) == Rejection(
        "too_large", f"{len(big)} bytes, the limit is 1000"
    )
    out = parse_touchpoint(event(), MAP, key=b"someone-else")
    assert isinstance(out, Rejection) and out.reason == "key_mismatch"


def test_missing_key_is_a_mismatch_unless_unchecked() -> None:
    out = parse_touchpoint(event(), MAP, key=None)
    assert isinstance(out, Rejection) and out.reason == "key_mismatch"
    assert isinstance(parse_touchpoint(event(), MAP), Touchpoint)


def test_none_value_is_rejected_not_raised() -> None:
    out = parse_touchpoint(None, MAP)
    assert isinstance(out, Rejection) and out.reason == "not_json"


# One rule for input: whatever the parser accepts, every later step can carry.


@pytest.mark.parametrize(
    "stamp",
    [
        "9999-12-31T23:59:59-14:00",  # past year 9999 in UTC
        "0001-01-01T00:00:00+14:00",  # before year 1 in UTC
        "1969-12-31T23:59:59.999Z",  # before the range
        "3000-01-01T00:00:00Z",  # the range's end (excluded)
        32_503_680_000_000,
        -1,
        253_402_300_799_999,  # the old epoch-ms bound let this through
    ],
)
def test_timestamps_outside_the_range_are_refused_in_either_form(stamp: object) -> None:
    got = parse_touchpoint(event(timestamp=stamp), MAP)
    assert isinstance(got, Rejection) and got.reason == "bad_field"
    assert "1970-01-01" in got.detail and "3000-01-01" in got.detail


@pytest.mark.parametrize("stamp", ["1970-01-01T00:00:00Z", "2999-12-31T23:59:59.999Z", 0, 32_503_679_999_999])
def test_the_range_ends_are_accepted(stamp: object) -> None:
    assert isinstance(parse_touchpoint(event(timestamp=stamp), MAP), Touchpoint)


def test_a_time_past_not_after_is_in_future() -> None:
    got = parse_touchpoint(event(timestamp=1_000_001), MAP, not_after=1_000_000)
    assert isinstance(got, Rejection) and got.reason == "in_future"
    assert isinstance(parse_touchpoint(event(timestamp=1_000_000), MAP, not_after=1_000_000), Touchpoint)


@pytest.mark.parametrize(
    "over",
    [
        {"customer_id": "__faust\u0000offset__"},
        {"customer_id": "__faust"},
        {"customer_id": "c\u0000"},
        {"customer_id": "line\nbreak"},
        {"customer_id": "esc\u001b[31m"},
        {"customer_id": "del\u007f"},
        {"customer_id": "c1\u0085"},
        {"event_id": "e\u0000"},
    ],
)
def test_ids_with_control_characters_or_the_reserved_prefix_are_refused(over: dict[str, str]) -> None:
    got = parse_touchpoint(event(**over), MAP)
    assert isinstance(got, Rejection) and got.reason == "bad_field"


def test_an_event_id_may_begin_like_the_reserved_prefix_and_ids_may_be_unicode() -> None:
    assert isinstance(parse_touchpoint(event(event_id="__faust-1", customer_id="kund-ü-客"), MAP), Touchpoint)


def test_clock_and_erasure_records_keep_the_same_rules() -> None:
    from models.events import parse_clock, parse_erase

    assert isinstance(parse_clock(b'{"clock": -5, "customer_id": "c"}', None), Rejection)
    assert isinstance(parse_clock(b'{"clock": 5, "customer_id": "__faust"}', None), Rejection)
    got = parse_clock(b'{"clock": 5000, "customer_id": "c"}', None, not_after=4000)
    assert isinstance(got, Rejection) and got.reason == "in_future"
    huge = orjson.dumps({"erase": "c", "erasure_id": "x", "at": 10**17})
    assert isinstance(parse_erase(huge, None), Rejection)


def test_properties_nested_too_deep_are_refused() -> None:
    deep: object = 1
    for _ in range(40):
        deep = {"a": deep}
    got = parse_touchpoint(event(properties=deep), MAP)
    assert isinstance(got, Rejection) and got.reason == "bad_field" and "32 levels" in got.detail
    shallow: object = 1
    for _ in range(31):
        shallow = [shallow]
    many = {f"k{i}": [{}] for i in range(40)}  # many brackets, shallow
    assert isinstance(parse_touchpoint(event(properties={"x": shallow}), MAP), Touchpoint)
    assert isinstance(parse_touchpoint(event(properties=many), MAP), Touchpoint)
