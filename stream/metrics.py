"""The worker's Prometheus metrics, built against a registry passed in.

Labels are bounded: outcome, rejection reason (a fixed list), and the
stage names of the map (transitions). Never a customer id, an event id or free text.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter

from models.events import REASONS

OUTCOMES = ("applied", "duplicate", "rejected", "replayed")


@dataclass(frozen=True)
class TrackerMetrics:
    """Counters the touchpoints agent updates once per batch."""

    events: Counter
    rejected: Counter
    transitions: Counter
    batches: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry, prefix: str = "journey") -> TrackerMetrics:
        m = cls(
            events=Counter(
                f"{prefix}_events",
                "Touchpoint messages by outcome (replayed: an already-applied Kafka record seen again)",
                ["outcome"],
                registry=registry,
            ),
            rejected=Counter(
                f"{prefix}_rejected_events",
                "Messages sent to the dead-letter topic, by reason",
                ["reason"],
                registry=registry,
            ),
            transitions=Counter(
                f"{prefix}_transitions",
                "Stage transitions published (from 'none' is a first touch)",
                ["from_stage", "to_stage"],
                registry=registry,
            ),
            batches=Counter(f"{prefix}_batches", "Batches folded by the worker", registry=registry),
        )
        # Initialise every label combination up front so dashboards see zeros.
        for outcome in OUTCOMES:
            m.events.labels(outcome)
        for reason in REASONS:
            m.rejected.labels(reason)
        return m
