"""Event-time helpers: epoch milliseconds in, ISO-8601 UTC out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def ms_to_iso(ms: int) -> str:
    """Format epoch milliseconds as ISO-8601 UTC with millisecond precision."""
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def iso_to_ms(text: str) -> int | None:
    """Parse ISO-8601 with an explicit zone into epoch ms; None if invalid.

    A timestamp without a zone is refused: guessing the producer's zone would
    silently shift stage times by hours.
    """
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is None or dt.utcoffset() is None:
        return None
    # Integer arithmetic: dt.timestamp() * 1000 loses the last millisecond.
    return (dt - _EPOCH) // _MS
