"""The stored format: versioned, readable back, refused by name when it is not ours."""

from __future__ import annotations

import orjson
import pytest

from models import load_map
from models.events import Touchpoint
from models.reducer import fold
from stream.engine.codec import FORMAT_VERSION, decode_stored, encode_stored
from stream.errors import StoredFormatError

MAP = load_map()
STATE = fold(MAP, [Touchpoint("e1", "c1", "add_to_cart", "web", 1_790_000_000_000)])["c1"]


def test_round_trip_with_a_version() -> None:
    raw = encode_stored(42, STATE)
    assert orjson.loads(raw)["v"] == FORMAT_VERSION
    assert decode_stored(raw) == (42, STATE)


def test_values_from_before_the_version_still_read() -> None:
    d = orjson.loads(encode_stored(7, STATE))
    del d["v"]
    assert decode_stored(orjson.dumps(d)) == (7, STATE)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (orjson.dumps({**orjson.loads(encode_stored(1, STATE)), "v": 99}), "format version 99"),
        (b"{nope", "not JSON"),
        (orjson.dumps({"v": 1, "o": 3}), "lacks field"),
    ],
)
def test_unreadable_values_are_named(raw: bytes, match: str) -> None:
    with pytest.raises(StoredFormatError, match=match):
        decode_stored(raw)
