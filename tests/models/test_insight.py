"""The insight arithmetic: duration buckets and percentiles, Wilson and
Newcombe intervals, lift from outcome counts, Kaplan-Meier and the odds."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.insight import (
    STEPS,
    bucket,
    compare,
    conversion_times,
    histogram,
    lift,
    mid,
    odds,
    quantile,
    reliability,
    survival,
    upper,
    wilson,
)


@given(st.floats(min_value=0.001, max_value=1e9))
def test_a_duration_lies_in_its_bucket_within_one_ninth_of_its_value(seconds: float) -> None:
    i = bucket(seconds)
    assert seconds <= upper(i) * (1 + 1e-9)
    if i > 0:
        assert seconds > upper(i - 1) * (1 - 1e-9)
        assert abs(mid(i) - seconds) / seconds < 2 ** (1 / STEPS) - 1


def test_percentiles_over_converters_and_over_everyone_who_could_have() -> None:
    durations = [60.0] * 50 + [3600.0] * 40 + [86400.0] * 10
    counts: dict[int, float] = {}
    for d in durations:
        counts[bucket(d)] = counts.get(bucket(d), 0) + 1
    out = conversion_times(counts, waiting=100)
    assert out["converted"] == 100 and out["waiting"] == 100
    assert out["of_converted"]["p50"] == pytest.approx(60, rel=0.05)
    assert out["of_converted"]["p90"] == pytest.approx(3600, rel=0.05)
    assert out["of_converted"]["p99"] == pytest.approx(86400, rel=0.05)
    # Of everyone (200): half converted, the 50th percentile is the last of them;
    # 90% never converted (yet): no p90 is claimed.
    assert out["of_all"]["p50"] == pytest.approx(86400, rel=0.05)
    assert out["of_all"]["p90"] is None
    assert quantile({}, 0.5) is None


def test_the_wilson_interval_matches_the_textbook() -> None:
    # Newcombe (1998), table I: 81/263 -> 0.2553 to 0.3662.
    w = wilson(81, 263)
    assert w is not None
    assert (round(w.low, 4), round(w.high, 4)) == (0.2553, 0.3662)
    assert wilson(0, 0) is None


def test_the_difference_of_two_proportions_matches_newcombes_example() -> None:
    # Newcombe (1998), table II, example (a): 56/70 - 48/80, method 10: 0.0524 to 0.3339.
    c = compare(56, 70, 48, 80)
    assert c is not None
    assert c["difference"] == pytest.approx(0.2, abs=1e-4)
    assert (c["interval"]["low"], c["interval"]["high"]) == (0.0524, 0.3339)
    assert c["significant"] is True
    tie = compare(10, 100, 9, 100)
    assert tie is not None and tie["significant"] is False
    assert compare(1, 0, 1, 10) is None


def test_lift_per_kind_equals_a_direct_comparison_of_its_counts() -> None:
    rng = random.Random(4)
    outcomes: dict[str, float] = {}
    records = []
    for _ in range(500):
        kind = rng.choice(["cart_reminder", "win_back"])
        held = rng.random() < 0.2
        won = rng.random() < (0.2 if held else 0.35)
        records.append((kind, held, won))
        key = f"{kind}|{'held_out' if held else 'nudged'}|{'converted' if won else 'not_converted'}"
        outcomes[key] = outcomes.get(key, 0) + 1
    rows = {r["kind"]: r for r in lift(outcomes, {"cart_reminder": "stall", "win_back": "churn_risk"})}
    for kind in ("cart_reminder", "win_back"):
        n = [r for r in records if r[0] == kind and not r[1]]
        h = [r for r in records if r[0] == kind and r[1]]
        want = compare(sum(r[2] for r in n), len(n), sum(r[2] for r in h), len(h))
        assert rows[kind]["lift"] == want
        assert rows[kind]["nudged"] == {"customers": len(n), "converted": sum(r[2] for r in n)}
    assert rows["win_back"]["trigger"] == "churn_risk"


def test_kaplan_meier_by_hand() -> None:
    # Six customers: conversions at buckets 10, 10, 20; censored at 15 and 30 (x2).
    curve = survival({10: 2, 20: 1}, {15: 1, 30: 2})
    assert [(i, round(s, 4), r) for i, s, r in curve] == [
        (10, round(1 - 2 / 6, 4), 6),
        (15, round(1 - 2 / 6, 4), 4),
        (20, round((1 - 2 / 6) * (1 - 1 / 3), 4), 3),
        (30, round((1 - 2 / 6) * (1 - 1 / 3), 4), 2),
    ]


def test_odds_condition_on_the_time_already_waited() -> None:
    # 100 customers: 60 move on within about a minute, 40 never (censored after a day).
    events = {bucket(60): 60.0}
    censored = {bucket(86400): 40.0}
    fresh = odds(events, censored, waited_s=1, horizon_s=3600)
    late = odds(events, censored, waited_s=7200, horizon_s=3600)
    assert fresh is not None and late is not None
    assert fresh["probability"] == pytest.approx(0.6)
    assert late["probability"] == 0.0  # nobody converts after waiting two hours
    assert fresh["evidence"] == {"customers": 100, "converted": 60, "at_risk": 100}
    assert late["evidence"]["at_risk"] == 40
    lo, hi = fresh["interval"]["low"], fresh["interval"]["high"]
    assert lo < 0.6 < hi
    assert fresh["expected_wait_seconds"] is not None and fresh["expected_wait_seconds"] < 120
    assert odds({}, {}, 1, 10) is None


def test_prometheus_buckets_are_cumulative_and_end_with_everyone() -> None:
    counts = {bucket(30): 3.0, bucket(600): 2.0, bucket(10 * 86400): 1.0, bucket(100 * 86400): 1.0}
    h = histogram(counts)
    assert [n for _, n in h] == sorted(n for _, n in h)
    assert h[-1] == (math.inf, 7.0)
    assert dict(h)[60.0] == 3.0 and dict(h)[900.0] == 5.0


def test_reliability_bins_hold_every_prediction_once() -> None:
    pairs = [(i / 100, i % 3 == 0) for i in range(100)]
    bins = reliability(pairs)
    assert sum(b["customers"] for b in bins) == 100 and len(bins) == 10
    assert bins[0]["predicted"] < bins[-1]["predicted"]
