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
