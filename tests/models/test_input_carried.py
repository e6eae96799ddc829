"""One rule for input: whatever the parser accepts, the whole per-customer
path carries: the fold, every output record, the stored encoding."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from models import Touchpoint, load_map, parse_touchpoint
from models.events import Clock, parse_clock
from models.reducer import fold_customer
from models.timeutil import MAX_MS, MIN_MS
from stream.engine.codec import decode_stored, encode_stored

MAP = load_map()

# Times from the edges of the range and from well outside it, both forms.
EDGE_MS = st.sampled_from([MIN_MS - 1, MIN_MS, MIN_MS + 1, MAX_MS - 1, MAX_MS, 253_402_300_799_999])
STAMPS = (
    st.integers(-(2**63), 2**63)
    | EDGE_MS
    | st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat())
    | st.sampled_from(["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "2999-12-31T23:59:59Z"])
)
IDS = st.text(min_size=0, max_size=140) | st.sampled_from(["__faust\x00offset__", "c\x00", "c1"])
PROPS = st.none() | st.dictionaries(
    st.sampled_from(["rating", "score", "sentiment", "order_value", "x"]),
    st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5),
)


@settings(max_examples=300, deadline=None)
@given(
    cid=IDS,
    stamps=st.lists(STAMPS, min_size=1, max_size=4),
    types=st.lists(st.sampled_from(sorted(MAP.event_types)), min_size=4, max_size=4),
    props=PROPS,
    later=st.integers(0, 10**13),
)
def test_accepted_input_is_carried_to_the_end(
    cid: str, stamps: list[object], types: list[str], props: object, later: int
) -> None:
    items: list[Touchpoint | Clock] = []
    for i, stamp in enumerate(stamps):
        body = {
            "event_id": f"e{i}",
            "customer_id": cid,
            "type": types[i],
            "channel": "web",
            "timestamp": stamp,
        }
        if props is not None:
            body["properties"] = props
        tp = parse_touchpoint(orjson.dumps(body), MAP)
        if isinstance(tp, Touchpoint):
            items.append(tp)
    if not items:
        return
    clock = parse_clock(
        orjson.dumps({"clock": min(items[-1].ts + later, MAX_MS - 1), "customer_id": cid}), None
    )
    assert isinstance(clock, Clock)
    items.append(clock)
    fold = fold_customer(MAP, None, items)
    for t in fold.transitions:
        orjson.dumps(t.to_record())
    for o in fold.outputs:
        orjson.dumps(o.to_record())
    if fold.state is not None:
        assert decode_stored(encode_stored(7, fold.state)) == (7, fold.state)
