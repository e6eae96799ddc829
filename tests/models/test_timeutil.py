"""Event-time formatting: the fast ms_to_iso gives what formatting the datetime gives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from models.timeutil import iso_to_ms, ms_to_iso

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Years 1 to 9999: what datetime can hold.
_MIN_MS = (datetime(1, 1, 1, tzinfo=UTC) - _EPOCH) // timedelta(milliseconds=1)
_MAX_MS = (datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC) - _EPOCH) // timedelta(milliseconds=1)


@given(st.integers(min_value=_MIN_MS, max_value=_MAX_MS))
def test_ms_to_iso_is_the_datetime_formatted_and_reads_back(ms: int) -> None:
    dt = _EPOCH + timedelta(milliseconds=ms)
    text = ms_to_iso(ms)
    assert text == dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert iso_to_ms(text) == ms


def test_day_and_millisecond_edges() -> None:
    assert ms_to_iso(0) == "1970-01-01T00:00:00.000Z"
    assert ms_to_iso(-1) == "1969-12-31T23:59:59.999Z"
    assert ms_to_iso(86_400_000 - 1) == "1970-01-01T23:59:59.999Z"
    assert ms_to_iso(1_795_503_600_123) == "2026-11-24T07:00:00.123Z"
