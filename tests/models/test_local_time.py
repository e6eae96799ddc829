"""Quiet hours and daily caps in each customer's own time zone, across
daylight-saving changes; and the zone check on hostile input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models import load_map
from models.events import Rejection, parse_touchpoint
from models.nudges import quiet_release
from models.rules import QuietHours
from models.timeutil import is_zone, local_day_start, zone

NIGHT = QuietHours(21 * 60, 8 * 60)  # 21:00-08:00 local
ZONES = ["Europe/Berlin", "America/New_York", "Australia/Sydney", "Asia/Tokyo", "UTC"]
# Around the 2027 changes: Berlin 28 Mar / 31 Oct, New York 14 Mar / 7 Nov, Sydney 4 Apr / 3 Oct.
AROUND_DST = st.datetimes(min_value=datetime(2027, 3, 10), max_value=datetime(2027, 4, 8)) | st.datetimes(
    min_value=datetime(2027, 9, 30), max_value=datetime(2027, 11, 10)
)


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def local(ms_: int, name: str) -> datetime:
    return datetime.fromtimestamp(ms_ / 1000, zone(name))


@given(AROUND_DST, st.sampled_from(ZONES))
def test_quiet_hours_hold_in_the_customers_zone_across_a_daylight_saving_change(
    naive: datetime, name: str
) -> None:
    now = ms(naive.replace(tzinfo=UTC))
    here = local(now, name)
    minute = here.hour * 60 + here.minute
    quiet = minute >= NIGHT.start_min or minute < NIGHT.end_min
    release = quiet_release(NIGHT, now, zone(name))
    if not quiet:
        assert release is None
        return
    assert release is not None and release > now
    # Released at 08:00 local on the morning after the night began, never
    # earlier and never a day late, whatever the offset did overnight.
    at = local(release, name)
    assert (at.hour, at.minute) == (8, 0)
    assert timedelta(0) < at - here <= timedelta(hours=11, minutes=1)
    # Nothing between now and the release is outside quiet hours.
    for step in range(0, (release - now) // 60_000, 17):
        m = local(now + step * 60_000, name)
        assert m.hour * 60 + m.minute >= NIGHT.start_min or m.hour * 60 + m.minute < NIGHT.end_min


def test_the_night_the_clocks_go_forward_is_an_hour_shorter_in_utc() -> None:
    berlin = zone("Europe/Berlin")
    # 22:00 local on 27 March 2027 (CET, +1) -> 08:00 local on the 28th (CEST, +2): 9 hours.
    before = ms(datetime(2027, 3, 27, 22, 0, tzinfo=berlin))
    release = quiet_release(NIGHT, before, berlin)
    assert release is not None and (release - before) / 3_600_000 == 9
    # In autumn, from 21:30 on 30 October: 10.5 hours on the wall clock, 11.5 in UTC (CEST -> CET).
    autumn = ms(datetime(2027, 10, 30, 21, 30, tzinfo=berlin))
    release = quiet_release(NIGHT, autumn, berlin)
    assert release is not None and (release - autumn) / 3_600_000 == 11.5
    # UTC itself: as before.
    assert quiet_release(NIGHT, ms(datetime(2027, 1, 1, 12, tzinfo=UTC))) is None


@given(AROUND_DST, st.sampled_from(ZONES))
def test_a_daily_cap_counts_from_local_midnight(naive: datetime, name: str) -> None:
    now = ms(naive.replace(tzinfo=UTC))
    start = local_day_start(now, zone(name))
    assert start <= now
    assert local(start, name).date() == local(now, name).date()
    assert (local(start, name).hour, local(start, name).minute) == (0, 0)
    # The previous instant is yesterday, locally.
    assert local(start - 1, name).date() < local(now, name).date()


@pytest.mark.parametrize(
    "bad", ["Mars/Olympus", "../../etc/passwd", "", "x" * 500, 42, ["UTC"], {"tz": "UTC"}, "europe/berlin"]
)
def test_a_time_zone_that_is_not_iana_is_refused_by_name(bad: object) -> None:
    import orjson

    assert not is_zone(bad)
    raw = orjson.dumps(
        {
            "event_id": "e1",
            "customer_id": "c1",
            "type": "page_view",
            "channel": "web",
            "timestamp": 1_790_000_000_000,
            "properties": {"tz": bad},
        }
    )
    got = parse_touchpoint(raw, load_map())
    assert isinstance(got, Rejection) and got.reason == "bad_field" and "tz" in got.detail
    assert zone(bad if isinstance(bad, str) else "") is UTC
