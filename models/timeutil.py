"""Event-time helpers: epoch milliseconds in, ISO-8601 UTC out."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from datetime import tzinfo as datetime_tzinfo
from functools import lru_cache

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()

# The one range of event times, for both timestamp forms (ISO-8601 and epoch
# milliseconds): 1970-01-01T00:00:00Z up to, not including,
# 3000-01-01T00:00:00Z. Every later step adds at most a map's thresholds to a
# time in it and formats the result, and stays far inside datetime's year 9999.
MIN_MS = 0
MAX_MS = 32_503_680_000_000


def in_range(ms: int) -> bool:
    """Whether ``ms`` is an event time the tracker accepts (:data:`MIN_MS` to :data:`MAX_MS`)."""
    return MIN_MS <= ms < MAX_MS


def ms_to_iso(ms: int) -> str:
    """Format epoch milliseconds as ISO-8601 UTC with millisecond precision.

    Integer arithmetic and the date part cached per day: every transition
    and stall record carries times, and ``datetime.strftime`` costs more than
    twice as much. The same text as formatting the datetime.
    """
    days, rem = divmod(ms, 86_400_000)
    secs, msec = divmod(rem, 1000)
    hour, secs = divmod(secs, 3600)
    minute, secs = divmod(secs, 60)
    return f"{_day(days)}T{hour:02d}:{minute:02d}:{secs:02d}.{msec:03d}Z"


@lru_cache(maxsize=4096)
def _day(days: int) -> str:
    return date.fromordinal(_EPOCH_ORDINAL + days).isoformat()


def iso_to_ms(text: str) -> int | None:
    """Parse ISO-8601 with an explicit zone into epoch ms; None if invalid.

    A timestamp without a zone is refused: guessing the producer's zone would
    silently shift stage times by hours. The result may lie outside
    :func:`in_range` (the caller says why it refuses it).
    """
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is None or dt.utcoffset() is None:
        return None
    # Integer arithmetic: dt.timestamp() * 1000 loses the last millisecond.
    # Subtracting two aware datetimes never overflows, even at year 1 or 9999
    # with a zone that moves the instant outside the calendar.
    return (dt - _EPOCH) // _MS


@lru_cache(maxsize=1)
def _zone_names() -> frozenset[str]:
    import zoneinfo

    return frozenset(zoneinfo.available_timezones())


def is_zone(name: object) -> bool:
    """Whether ``name`` is an IANA time zone name (checked against the list,
    never by opening a file named by the input)."""
    return isinstance(name, str) and 0 < len(name) <= 64 and name in _zone_names()


@lru_cache(maxsize=1024)
def zone(name: str) -> datetime_tzinfo:
    """The zone named ``name`` (UTC for an empty or unknown name)."""
    import zoneinfo

    if not is_zone(name) or name == "UTC":
        return UTC
    return zoneinfo.ZoneInfo(name)


def local_day_start(ms: int, tz: datetime_tzinfo) -> int:
    """Epoch ms of the local midnight that starts the calendar day of ``ms`` in ``tz``."""
    local = datetime.fromtimestamp(ms / 1000, tz)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return int(midnight.timestamp() * 1000)
