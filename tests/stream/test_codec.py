"""The stored format: versioned, readable back, version 1 still read, refused by name when it is not ours."""

from __future__ import annotations

import msgspec
import orjson
import pytest
from hypothesis import given, settings

from models import load_map
from models.events import Touchpoint
from models.reducer import fold, fold_customer
from models.state import ID_DIGEST_BYTES, CustomerState, Drift, NudgeRef, Stall, id_digest
from stream.engine.codec import FORMAT_VERSION, decode_stored, encode_stored
from stream.errors import StoredFormatError
from tests.models.strategies import MAP as STRATEGY_MAP
from tests.models.strategies import journeys

MAP = load_map()
STATE = fold(MAP, [Touchpoint("e1", "c1", "add_to_cart", "web", 1_790_000_000_000)])["c1"]

# Values written by version 0.8 (format 1), copied from its encode_stored:
# a stalled cart, and a defected customer with drift signals and a nudge.
V1_STALLED = (
    b'{"c":"c1","s":"cart","se":1790003600000,"st":{"awareness":1790000000000,"cart":1790003600000},'
    b'"fc":"web","fa":1790000000000,"le":1790003600000,"n":2,"tc":{"page_view":1,"add_to_cart":1},'
    b'"r":["e1","e2"],"sl":["2849851bc76a6b7d22a904a121b539f6","cart",1790003600000,1790007200000,'
    b'1790108000000],"o":41,"v":1}'
)
V1_DEFECTED = (
    b'{"c":"cust-3-000163","s":"defected","se":1795320290178,"st":{"awareness":1795178955553,'
    b'"consideration":1795218749681,"cart":1795267275796,"purchase":1795283336593,"service":1795290782492,'
    b'"defected":1795320290178},"fc":"ads","fa":1795178955553,"le":1795320290178,"n":10,'
    b'"tc":{"ad_click":1,"store_visit":1,"email_click":1,"price_compare":1,"add_to_cart":1,'
    b'"checkout_started":1,"purchase":1,"complaint":1,"support_ticket":1,"unsubscribe":1},'
    b'"r":["cust-3-000163-e0","cust-3-000163-e1","cust-3-000163-e2","cust-3-000163-e3",'
    b'"cust-3-000163-e4","cust-3-000163-e5","cust-3-000163-e6","cust-3-000163-e7","cust-3-000163-e8",'
    b'"cust-3-000163-e9"],"dr":[-49.94746323560767,1795320290178,true,false,[["complaint",-20.0,'
    b'1795290782492],["unsubscribe",-30.0,1795320290178]]],"nu":[["12ad153cedb1c0791ac77b5776bcd600",'
    b'"win_back","defected",1795320290178,1796529890178,true,"undelivered"]],"o":1234,"v":1}'
)


def test_round_trip_with_a_version() -> None:
    raw = encode_stored(42, STATE)
    assert msgspec.msgpack.decode(raw)[0] == FORMAT_VERSION == 2
    assert decode_stored(raw) == (42, STATE)


@settings(max_examples=60, deadline=None)
@given(journeys())
def test_any_folded_state_round_trips(events: list) -> None:  # type: ignore[type-arg]
    for state in fold(STRATEGY_MAP, events).values():
        assert decode_stored(encode_stored(7, state)) == (7, state)


def test_a_version_1_value_still_decodes() -> None:
    offset, state = decode_stored(V1_STALLED)
    assert offset == 41
    assert state == CustomerState(
        customer_id="c1",
        stage="cart",
        stage_entered_at=1790003600000,
        stages={"awareness": 1790000000000, "cart": 1790003600000},
        first_touch_channel="web",
        first_touch_at=1790000000000,
        last_event_at=1790003600000,
        events=2,
        type_counts={"page_view": 1, "add_to_cart": 1},
        recent=id_digest("e1") + id_digest("e2"),
        stall=Stall("2849851bc76a6b7d22a904a121b539f6", "cart", 1790003600000, 1790007200000, 1790108000000),
    )
    offset, state = decode_stored(V1_DEFECTED)
    assert offset == 1234 and state.stage == "defected" and state.events == 10
    assert state.drift == Drift(
        -49.94746323560767,
        1795320290178,
        True,
        False,
        (("complaint", -20.0, 1795290782492), ("unsubscribe", -30.0, 1795320290178)),
    )
    assert state.nudges == (
        NudgeRef(
            "12ad153cedb1c0791ac77b5776bcd600",
            "win_back",
            "defected",
            1795320290178,
            1796529890178,
            True,
            "undelivered",
        ),
    )
    assert len(state.recent) == 10 * ID_DIGEST_BYTES


def test_a_version_1_state_goes_on_as_before() -> None:
    """The ids of a version-1 value still de-duplicate, and the next write is version 2."""
    _, state = decode_stored(V1_STALLED)
    again = fold_customer(MAP, state, [Touchpoint("e2", "c1", "checkout_started", "web", 1790003700000)])
    assert again.duplicates == 1 and not again.changed
    on = fold_customer(MAP, state, [Touchpoint("e3", "c1", "checkout_started", "web", 1790003700000)])
    assert on.applied == 1 and on.state is not None
    assert decode_stored(encode_stored(42, on.state)) == (42, on.state)


def test_values_from_before_the_version_still_read() -> None:
    d = orjson.loads(V1_STALLED)
    del d["v"]
    assert decode_stored(orjson.dumps(d)) == decode_stored(V1_STALLED)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (
            msgspec.msgpack.encode([99, 1, msgspec.msgpack.decode(encode_stored(1, STATE))[2]]),
            "format version 99",
        ),
        (msgspec.msgpack.encode([99, "a future layout"]), "format version 99"),
        (orjson.dumps({**orjson.loads(V1_STALLED), "v": 99}), "format version 99"),
        (b"{nope", "not JSON"),
        (orjson.dumps({"v": 1, "o": 3}), "malformed"),
        (orjson.dumps({**orjson.loads(V1_STALLED), "n": "two"}), "wrong type"),
        (b"\x93\x02\x01\xc1", "not readable"),
        (msgspec.msgpack.encode([2, 1, ["c1", "cart"]]), "not readable"),
        (b"", "not readable"),
    ],
)
def test_unreadable_values_are_named(raw: bytes, match: str) -> None:
    with pytest.raises(StoredFormatError, match=match):
        decode_stored(raw)
