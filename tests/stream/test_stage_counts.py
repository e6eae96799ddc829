"""Customers per stage, per owned partition, summed at scrape."""

from __future__ import annotations

from collections import Counter

from prometheus_client import CollectorRegistry, generate_latest

from stream.stage_counts import StageCounts


def test_counts_follow_transitions_and_forget_revoked_partitions() -> None:
    counts = StageCounts(["awareness", "cart", "purchase"])
    registry = CollectorRegistry()
    registry.register(counts)
    counts.set_partition(0, Counter({"awareness": 3, "cart": 1}))
    counts.set_partition(1, Counter({"cart": 2}))
    counts.moved(0, None, "awareness")  # a first touch
    counts.moved(1, "cart", "purchase")
    counts.moved(7, "cart", "purchase")  # not owned: ignored
    assert counts.totals() == Counter({"awareness": 4, "cart": 2, "purchase": 1})
    text = generate_latest(registry).decode()
    assert 'journey_customers{stage="purchase"} 1.0' in text
    counts.on_partition_revoked(0)
    assert counts.totals() == Counter({"awareness": 0, "cart": 1, "purchase": 1})
    assert 'journey_customers{stage="awareness"} 0.0' in generate_latest(registry).decode()
