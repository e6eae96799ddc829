"""Recovery progress: records read and left, rate and estimate, per partition."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from stream.engine.metrics import RecoveryCollector
from stream.engine.recovery import RecoveryProgress


def test_progress_rate_and_estimate_then_recovered(caplog: pytest.LogCaptureFixture) -> None:
    r = RecoveryProgress("cl")
    caplog.set_level(logging.INFO, logger="stream.engine.recovery")
    r.observe(100.0, {0: (1000, 11_000), 1: (-1, 99)})
    f = r.figures(0)
    assert f == {
        "state": "recovering",
        "start": 1000,
        "done": 0,
        "left": 10_000,
        "rate_per_s": None,
        "eta_s": None,
        "seconds": 0.0,
    }
    r.observe(102.0, {0: (5000, 11_000), 1: (99, 99)})
    f = r.figures(0)
    assert f["done"] == 4000 and f["left"] == 6000 and f["rate_per_s"] == 2000.0 and f["eta_s"] == 3.0
    assert r.left() == {0: 6000, 1: 0} and r.recovering == [0, 1]
    assert "recovering cl[0]: 0 records read, 10,000 left" in caplog.text  # the first reading's line

    r.observe(104.0, {})  # both finished
    assert r.recovering == [] and r.left() == {}
    done = r.figures(0)
    assert done["state"] == "recovered" and done["done"] == 10_000 and done["left"] == 0 and done["eta_s"] is None
    assert done["seconds"] == 4.0
    assert "recovered cl[0]: 10000 records in 4.0 s" in caplog.text
    assert set(r.to_dict()) == {"0", "1"}


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
    r.observe(1.0, {})
    r.observe(2.0, {1: (10, 30)})  # assigned again later: the tail only
    assert r.figures(1)["start"] == 10 and r.figures(1)["left"] == 20


def test_the_gauge_shows_records_left_per_partition() -> None:
    r = RecoveryProgress("cl")
    registry = CollectorRegistry()
    registry.register(RecoveryCollector(r))
    r.observe(0.0, {2: (5, 105)})
    assert registry.get_sample_value("journey_recovery_records_left", {"partition": "2"}) == 100
    r.observe(1.0, {})
    assert registry.get_sample_value("journey_recovery_records_left", {"partition": "2"}) is None
