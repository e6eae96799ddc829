"""Recovery progress: where it began, records read and left, rate and estimate, per partition."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from stream.engine.metrics import RecoveryCollector
from stream.engine.recovery import RecoveryProgress


def test_progress_rate_and_estimate_then_recovered(caplog: pytest.LogCaptureFixture) -> None:
    r = RecoveryProgress("cl")
    caplog.set_level(logging.INFO, logger="stream.engine.recovery")
    r.begin(99.0, 0, 999)  # the local store held the changelog up to offset 999
    r.begin(99.0, 1, -1)  # nothing held: a full recovery
    r.observe(100.0, {0: (1000, 11_000), 1: (-1, 99)})
    f = r.figures(0)
    assert f["state"] == "recovering" and f["start"] == 999 and f["done"] == 1 and f["left"] == 10_000
    r.observe(102.0, {0: (5000, 11_000), 1: (99, 99)})
    f = r.figures(0)
    assert f["done"] == 4001 and f["left"] == 6000 and f["rate_per_s"] == 1333.7 and f["eta_s"] == 4.5
    assert r.left() == {0: 6000, 1: 0} and r.recovering == [0, 1]
    assert "recovering cl[0]: 1 records read, 10,000 left" in caplog.text  # the first reading's line

    r.finish(104.0, 0, 11_000)
    r.finish(104.0, 1, None)
    assert r.recovering == [] and r.left() == {}
    done = r.figures(0)
    assert done["state"] == "recovered" and done["done"] == 10_001 and done["left"] == 0
    assert done["eta_s"] is None and done["seconds"] == 5.0
    assert r.figures(1)["done"] == 100 and r.figures(1)["start"] == -1
    assert "recovered cl[0]: 10001 records from offset 1000 in 5.0 s" in caplog.text
    assert set(r.to_dict()) == {"0", "1"}


def test_a_recovery_too_short_to_be_seen_still_says_where_it_began() -> None:
    r = RecoveryProgress("cl")
    r.begin(0.0, 2, 4_990)  # a standby replica, or the worker's own RocksDB directory
    r.finish(0.2, 2, 5_000)
    f = r.figures(2)
    assert f["state"] == "recovered" and f["start"] == 4_990 and f["done"] == 10


def test_the_rate_is_taken_over_recent_readings_only() -> None:
    r = RecoveryProgress("cl")
    r.observe(0.0, {3: (0, 1_000_000)})
    r.observe(1.0, {3: (100, 1_000_000)})  # slow at first
    for t in range(2, 40):
        r.observe(float(t), {3: (100 + (t - 1) * 10_000, 1_000_000)})
    assert r.figures(3)["rate_per_s"] == 10_000.0


def test_a_revoked_partition_is_forgotten_and_a_new_recovery_starts_afresh() -> None:
    r = RecoveryProgress("cl")
    r.observe(0.0, {0: (0, 10), 1: (0, 10)})
    r.forget({1})
    assert r.recovering == [1]
    r.finish(1.0, 1, 10)
    r.begin(2.0, 1, 10)  # assigned again later: the tail only
    r.observe(2.5, {1: (12, 30)})
    assert r.figures(1)["start"] == 10 and r.figures(1)["left"] == 18


def test_the_gauge_shows_records_left_per_partition() -> None:
    r = RecoveryProgress("cl")
    registry = CollectorRegistry()
    registry.register(RecoveryCollector(r))
    r.observe(0.0, {2: (5, 105)})
    assert registry.get_sample_value("journey_recovery_records_left", {"partition": "2"}) == 100
    r.finish(1.0, 2, None)
    assert registry.get_sample_value("journey_recovery_records_left", {"partition": "2"}) is None
