"""The worker's Prometheus metrics, built against a registry passed in.

Labels are bounded: outcome, rejection reason (a fixed list), the stage
names of the map, and partition numbers of the input topic. Never a
customer id, an event id or free text.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from models.events import REASONS
from models.journey_map import JourneyMap
from stream.engine.lifecycle import PartitionLifecycle
from stream.engine.recovery import RecoveryProgress

ODDS_OUTCOMES = ("low", "not_low", "no_estimate", "deferred")
OUTCOMES = ("applied", "duplicate", "rejected", "replayed", "moved")
PROBLEMS = ("stalled", "commit_stalled")
# What became of a nudge the policy decided (journey_nudges_total{kind,outcome}).
NUDGE_OUTCOMES = ("sent", "held_out", "capped", "quiet_hours", "expired", "failed")
_M, _H, _D = 60.0, 3600.0, 86400.0
# Time in a stage: from minutes (a cart) to months (loyalty).
STAGE_DURATION_BUCKETS = (
    _M,
    5 * _M,
    15 * _M,
    _H,
    4 * _H,
    12 * _H,
    _D,
    3 * _D,
    7 * _D,
    14 * _D,
    30 * _D,
    90 * _D,
    180 * _D,
    365 * _D,
)
# Processing time minus event time: sub-second when live, days for a backfill.
EVENT_LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, _M, 5 * _M, _H, _D, 7 * _D)


class PartitionCollector(Collector):
    """Per owned partition, read from the lifecycle at scrape time."""

    def __init__(self, lifecycle: PartitionLifecycle, prefix: str) -> None:
        self._lifecycle = lifecycle
        self._prefix = prefix

    def collect(self) -> Iterator[GaugeMetricFamily]:
        lag = GaugeMetricFamily(
            f"{self._prefix}_consumer_lag",
            "Records of the input topic behind the end of the log, per owned partition",
            labels=["partition"],
        )
        commit_lag = GaugeMetricFamily(
            f"{self._prefix}_commit_lag",
            "Records processed but not yet committed, per owned partition",
            labels=["partition"],
        )
        for p, pr in sorted(self._lifecycle.progress.items()):
            if pr.lag is not None:
                lag.add_metric([str(p)], pr.lag)
            commit_lag.add_metric([str(p)], pr.commit_lag)
        yield lag
        yield commit_lag


class BatchHistogram(Collector):
    """A Prometheus histogram that takes a batch's observations at once.

    ``prometheus_client.Histogram.observe`` takes a lock and walks the
    buckets in Python for every value: with one event-lag observation per
    event it was 6% of the worker's time on the effect-heavy mix. Here a
    batch's values are counted with one C ``bisect`` each into plain lists,
    and a scrape renders them (the worker's web server runs on the same
    event loop, so nothing races). The exposition is the same: cumulative
    ``_bucket`` series with ``le``, ``_count`` and ``_sum``.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        labelnames: Sequence[str] = (),
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._name, self._doc = name, documentation
        self._bounds = tuple(float(b) for b in buckets)
        self._le = [floatToGoString(b) for b in self._bounds] + ["+Inf"]
        self._labelnames = tuple(labelnames)
        self._series: dict[tuple[str, ...], _Series] = {}
        if registry is not None:
            registry.register(self)

    def observe_many(self, values: Iterable[float], labels: tuple[str, ...] = ()) -> None:
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = _Series([0] * (len(self._bounds) + 1))
        counts, bounds, total = series.counts, self._bounds, 0.0
        for v in values:
            counts[bisect_left(bounds, v)] += 1
            total += v
        series.sum += total

    def observe(self, value: float) -> None:
        self.observe_many((value,))

    def labels(self, *values: str) -> _Child:
        """For one value at a time, as ``Histogram.labels(...).observe`` (tests, rare paths)."""
        return _Child(self, tuple(values))

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self._name, self._doc, labels=self._labelnames)
        for labels, series in sorted(self._series.items()):
            running, buckets = 0, []
            for le, n in zip(self._le, series.counts, strict=True):
                running += n
                buckets.append((le, float(running)))
            family.add_metric(list(labels), buckets, series.sum)
        yield family


@dataclass(slots=True)
class _Series:
    counts: list[int]
    sum: float = 0.0


@dataclass(frozen=True, slots=True)
class _Child:
    histogram: BatchHistogram
    labels: tuple[str, ...]

    def observe(self, value: float) -> None:
        self.histogram.observe_many((value,), self.labels)


class RecoveryCollector(Collector):
    """The changelog records each partition being recovered has left, read at scrape time."""

    def __init__(self, recovery: RecoveryProgress, prefix: str = "journey") -> None:
        self._recovery = recovery
        self._prefix = prefix

    def collect(self) -> Iterator[GaugeMetricFamily]:
        left = GaugeMetricFamily(
            f"{self._prefix}_recovery_records_left",
            "Changelog records a partition being recovered has still to read (none once recovered)",
            labels=["partition"],
        )
        for p, n in sorted(self._recovery.left().items()):
            left.add_metric([str(p)], n)
        yield left


@dataclass(frozen=True)
class TrackerMetrics:
    """Counters the touchpoints agent updates once per batch, and the watchdog's."""

    events: Counter
    rejected: Counter
    transitions: Counter
    batches: Counter
    partition_problems: Counter
    ready: Gauge
    stalls: Counter
    nudges: Counter
    churn_risks: Counter
    win_backs: Counter
    clock_readings: Counter
    forgotten: Counter
    identities: Counter
    nudge_gate_up: Gauge
    outbox_spills: Counter
    shadow_nudges: Counter
    view_writes: Counter
    view_pending: Gauge
    view_up: Gauge
    odds_checks: Counter
    conversions: Counter
    stage_duration: BatchHistogram
    event_lag: BatchHistogram
    events_by_type: Counter

    @classmethod
    def create(
        cls, registry: CollectorRegistry, lifecycle: PartitionLifecycle, prefix: str = "journey"
    ) -> TrackerMetrics:
        m = cls(
            events=Counter(
                f"{prefix}_events",
                "Touchpoint messages by outcome (replayed: an already-applied Kafka record seen again; "
                "moved: produced again to its key's murmur2 partition)",
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
            partition_problems=Counter(
                f"{prefix}_partition_problems",
                "Owned partitions found with lag and no progress (stalled) or with processed "
                "records not committed (commit_stalled) for longer than JOURNEY_STALL_UNREADY_S",
                ["problem"],
                registry=registry,
            ),
            ready=Gauge(
                f"{prefix}_worker_ready",
                "1 when the worker owns partitions, is not rebalancing and none is stalled",
                registry=registry,
            ),
            stalls=Counter(
                f"{prefix}_stalls", "Stall episodes detected, by stage", ["stage"], registry=registry
            ),
            nudges=Counter(
                f"{prefix}_nudges",
                "Nudges by kind and outcome (quiet_hours: held until quiet hours end; "
                "failed: Redis or the broker refused, retried)",
                ["kind", "outcome"],
                registry=registry,
            ),
            churn_risks=Counter(
                f"{prefix}_churn_risk", "Customers whose drift score crossed the risk bar", registry=registry
            ),
            win_backs=Counter(
                f"{prefix}_win_backs",
                "Defected customers who came back (moved out of an exit stage)",
                registry=registry,
            ),
            clock_readings=Counter(
                f"{prefix}_clock_readings",
                "Clock records sent for customers whose stall, inactivity or nudge deadline came",
                registry=registry,
            ),
            forgotten=Counter(
                f"{prefix}_customers_forgotten",
                "Customers forgotten by the map's retention (idle past its limit), by the stage they were in",
                ["stage"],
                registry=registry,
            ),
            identities=Counter(
                f"{prefix}_identities",
                "Identity stitching (models.identity): anonymous ids merged into a known customer, links "
                "refused by the guards, and events of merged ids re-keyed to their customer",
                ["outcome"],
                registry=registry,
            ),
            conversions=Counter(
                f"{prefix}_conversions",
                "Forward moves between stages (to a later, non-exit stage; skipping ahead counts): "
                "conversion from A to B over a window is increase(conversions{A,B}) over the "
                "customers who entered A",
                ["from_stage", "to_stage"],
                registry=registry,
            ),
            stage_duration=BatchHistogram(
                f"{prefix}_stage_duration_seconds",
                "Time spent in a stage before leaving it (event time)",
                STAGE_DURATION_BUCKETS,
                ("stage",),
                registry=registry,
            ),
            event_lag=BatchHistogram(
                f"{prefix}_event_lag_seconds",
                "Processing time minus event time of applied events",
                EVENT_LAG_BUCKETS,
                registry=registry,
            ),
            events_by_type=Counter(
                f"{prefix}_events_by_type",
                "Valid touchpoints by event type and channel (both sets declared by the map)",
                ["type", "channel"],
                registry=registry,
            ),
            nudge_gate_up=Gauge(
                f"{prefix}_nudge_gate_up",
                "1 while Redis (nudge caps and de-duplication) answers; 0 while nudges wait for it",
                registry=registry,
            ),
            outbox_spills=Counter(
                f"{prefix}_nudge_outbox_spills",
                "Nudges left in the table because the outbox was full (its partition is rescanned once "
                "the outbox has room; the worker is unready meanwhile)",
                registry=registry,
            ),
            shadow_nudges=Counter(
                f"{prefix}_shadow_nudges",
                "Nudges a shadow group decided and did not send (blue/green: they stay in its table)",
                registry=registry,
            ),
            view_writes=Counter(
                f"{prefix}_view_writes",
                "Customers written to (or erased from) the Redis serving view",
                registry=registry,
            ),
            view_pending=Gauge(
                f"{prefix}_view_pending",
                "Customers whose latest state waits to be written to the Redis serving view",
                registry=registry,
            ),
            view_up=Gauge(
                f"{prefix}_view_up",
                "1 while Redis takes the serving view's writes; 0 while they wait for it",
                registry=registry,
            ),
            odds_checks=Counter(
                f"{prefix}_odds_checks",
                "Next-stage odds read for a low_odds nudge policy, by outcome (low: below the policy's bar; "
                "deferred: the worker had no room or no figures, the core asks again)",
                ["outcome"],
                registry=registry,
            ),
        )
        for outcome in ODDS_OUTCOMES:
            m.odds_checks.labels(outcome)
        # Initialise every label combination up front so dashboards see zeros.
        for outcome in OUTCOMES:
            m.events.labels(outcome)
        for reason in REASONS:
            m.rejected.labels(reason)
        for problem in PROBLEMS:
            m.partition_problems.labels(problem)
        registry.register(PartitionCollector(lifecycle, prefix))
        return m

    def init_map(self, jmap: JourneyMap) -> None:
        """Zeros for every stage, consecutive conversion and nudge kind the map declares."""
        names = [s.name for s in jmap.stages]
        for stage in names:
            self.stalls.labels(stage)
        forward = [s.name for s in jmap.stages if not s.exit]
        for a, b in pairwise(forward):
            self.conversions.labels(a, b)
        for policy in jmap.nudges.policies:
            for outcome in NUDGE_OUTCOMES:
                self.nudges.labels(policy.kind, outcome)
