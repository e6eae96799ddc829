"""Next-stage odds: calibrated on the simulator's personas (the aim bench/odds.py states)."""

from __future__ import annotations

from bench.odds import AIM, backtest


def test_the_odds_for_the_simulators_personas_are_calibrated_within_the_benchs_aim() -> None:
    b = backtest(customers=5000, seed=11)
    assert b.scored > 1500
    assert b.meets_aim() == [], (b.brier, b.base_brier, b.deciles)
    # Something was learned: the deciles span low and high odds, and the
    # highest decile converts far more often than the lowest.
    assert b.deciles[-1]["observed"] - b.deciles[0]["observed"] > 0.3
    assert b.brier <= AIM["brier_ratio"] * b.base_brier
