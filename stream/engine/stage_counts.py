"""Live customers per stage, exact across workers: ``journey_customers{stage}``,
and the funnel figures behind ``GET /funnel``.

Each worker counts the customers of the partitions it actively owns: built
from one scan of a partition's store when it is assigned and recovered
(the lifecycle's scan, ``stream.engine.lifecycle``), changed by each batch from the customers'
states before and after it (erasures included), dropped when the partition
is revoked. A scrape sums the owned partitions (no table scan per scrape),
so ``sum by (stage)`` over all workers counts every customer once, right
after a rebalance too.

Per partition it keeps, from each customer's state: the current stage, the
stages ever reached (their ``stages``), for each consecutive pair (A, B) of
the funnel whether the customer reached A and then B or a later stage
(conversion: skipping ahead counts), and an open stall's stage.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString as format_le

from models.dimensions import Dimension
from models.dimensions import value as dim_value
from models.insight import bucket, histogram, mid
from models.journey_map import JourneyMap
from models.state import CustomerState
from stream.engine.lifecycle import PartitionListener


@dataclass(slots=True)
class Figures:
    """Counts for a set of customers (a partition, a worker, all workers)."""

    customers: Counter[str] = field(default_factory=Counter)  # current stage
    reached: Counter[str] = field(default_factory=Counter)  # stage ever reached
    pairs: Counter[str] = field(default_factory=Counter)  # "a>b": reached both of a consecutive pair
    stalled: Counter[str] = field(default_factory=Counter)  # open stall, by its stage
    touchpoints: Counter[str] = field(
        default_factory=Counter
    )  # "stage|type": events of customers now in stage
    channels: Counter[str] = field(default_factory=Counter)  # "stage|channel": first-touch channel, by stage
    scored: Counter[str] = field(default_factory=Counter)  # customers with a drift score, by stage
    score_sum: Counter[str] = field(default_factory=Counter)  # their scores summed, in milli-points
    # Insight (models.insight), keyed as above and, per dimension value,
    # behind a "dimension=value/" prefix:
    flows: Counter[str] = field(default_factory=Counter)  # "from>to": moves made (">to": first stages)
    after_stall: Counter[str] = field(default_factory=Counter)  # "stage|next type|stage after"
    ttc: Counter[str] = field(
        default_factory=Counter
    )  # "a>b|bucket": reached b that long after a ("a>+": any later)
    ttc_waiting: Counter[str] = field(default_factory=Counter)  # "a>b": reached a, not b yet
    waiting: Counter[str] = field(default_factory=Counter)  # "a|minute": reached a then, no later stage yet
    outcomes: Counter[str] = field(default_factory=Counter)  # "kind|group|outcome": nudge outcomes

    def add(self, other: Figures, sign: int = 1, names: Iterable[str] | None = None) -> None:
        for name in FIGURES if names is None else names:
            mine: Counter[str] = getattr(self, name)
            for k, v in getattr(other, name).items():
                mine[k] += sign * v

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {name: {k: v for k, v in getattr(self, name).items() if v} for name in FIGURES}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Figures:
        return cls(**{name: Counter(d.get(name, {})) for name in FIGURES})


FIGURES = (
    "customers",
    "reached",
    "pairs",
    "stalled",
    "touchpoints",
    "channels",
    "scored",
    "score_sum",
    "flows",
    "after_stall",
    "ttc",
    "ttc_waiting",
    "waiting",
    "outcomes",
)
MINUTE_MS = 60_000
ENTRY = "(entry)"  # the "from" of a customer's first stage (flows)
ONWARD = "+"  # time to convert to any later stage that is not an exit ("a>+")


def _apply(figures: Figures, contributions: list[tuple[str, str, float]], sign: int) -> None:
    for name, key, amount in contributions:
        getattr(figures, name)[key] += sign * amount


def _same_stage(part: Figures, before: CustomerState, after: CustomerState) -> None:
    """:meth:`StageCounts.update` when the stage, the stages reached and the
    first touch are the same (most changes: events that move nobody). Only
    the stall, the event counts and the drift score can differ, so only
    they are counted again (the two contributions' difference, without
    building them)."""
    stage = after.stage
    old_stall = before.stall.stage if before.stall is not None else None
    new_stall = after.stall.stage if after.stall is not None else None
    if old_stall != new_stall:
        if old_stall is not None:
            part.stalled[old_stall] -= 1
        if new_stall is not None:
            part.stalled[new_stall] += 1
    old_counts, new_counts = before.type_counts, after.type_counts
    touchpoints = part.touchpoints
    for t, n in new_counts.items():
        d = n - old_counts.get(t, 0)
        if d:
            touchpoints[f"{stage}|{t}"] += d
    for t, n in old_counts.items():
        if t not in new_counts:
            touchpoints[f"{stage}|{t}"] -= n
    if before.drift is not after.drift:
        if before.drift is not None:
            part.scored[stage] -= 1
            part.score_sum[stage] -= round(before.drift.score * 1000)
        if after.drift is not None:
            part.scored[stage] += 1
            part.score_sum[stage] += round(after.drift.score * 1000)


class StageCounts(Collector, PartitionListener):
    """Per owned partition, the funnel figures (a lifecycle listener and a collector)."""

    def __init__(
        self,
        stages: Iterable[str],
        funnel: Iterable[str] | None = None,
        prefix: str = "journey",
        jmap: JourneyMap | None = None,
    ) -> None:
        """``jmap``: count the insight figures too (flows, time to convert,
        dimensions, nudge outcomes, the odds' waiting customers)."""
        self._stages = tuple(stages)
        # Consecutive pairs of the funnel (the map's non-exit stages, in order),
        # each with the stages from its second on: skipping ahead converts.
        order = tuple(funnel) if funnel is not None else self._stages
        self._pairs = tuple(pairwise(order))
        self._onward = {order[i + 1]: frozenset(order[i + 1 :]) for i in range(len(order) - 1)}
        self._name = f"{prefix}_customers"
        self._prefix = prefix
        self._shadow_name = f"{prefix}_shadow_customers"
        self.shadow = False  # blue/green: a shadow group exports its gauge under the shadow name
        self._parts: dict[int, Figures] = {}
        self.jmap = jmap
        self._dims: tuple[Dimension, ...] = jmap.dimensions if jmap is not None else ()
        self._odds_by = jmap.insight.odds.by if jmap is not None else None
        # Time to convert: every pair (a, b) of a stage that is not an exit and
        # a later one or an exit; and (a, "+"): any later stage that is not an exit.
        self.ttc_pairs: tuple[tuple[str, str], ...] = ()
        self._later: dict[str, tuple[str, ...]] = {}
        if jmap is not None:
            live = [st for st in jmap.stages if not st.exit]
            exits = [st.name for st in jmap.stages if st.exit]
            self.ttc_pairs = tuple((a.name, b.name) for a in live for b in live if b.index > a.index) + tuple(
                (a.name, e) for a in live for e in exits
            )
            self._later = {a.name: tuple(b.name for b in live if b.index > a.index) for a in live}
        self._sliced_ttc = frozenset(f"{a}>{b}" for a, b in self._pairs) | {
            f"{a}>{ONWARD}" for a in self._later
        }

    @classmethod
    def for_map(cls, jmap: JourneyMap, prefix: str = "journey") -> StageCounts:
        """The worker's counts: the funnel of the map's stages that are not exits, and the insight figures."""
        return cls(jmap.stage_names, [s.name for s in jmap.stages if not s.exit], prefix, jmap)

    def set_active(self, active: bool) -> None:
        """Blue/green (``stream.redis.role``): a shadow group's gauge has the shadow name."""
        self.shadow = not active

    @property
    def pairs(self) -> tuple[tuple[str, str], ...]:
        return self._pairs

    def contributions(self, state: CustomerState) -> list[tuple[str, str, float]]:
        """One customer's contribution: (figure, key, amount) triples (cheaper
        than a Figures of many Counters, twice per changed customer)."""
        stage = state.stage
        stages = state.stages
        core: list[tuple[str, str, float]] = [("customers", stage, 1)]
        core += [("reached", s, 1) for s in stages]
        for a, b in self._pairs:
            if a in stages and not self._onward[b].isdisjoint(stages):
                core.append(("pairs", f"{a}>{b}", 1))
        if state.stall is not None:
            core.append(("stalled", state.stall.stage, 1))
        out: list[tuple[str, str, float]] = [
            ("touchpoints", f"{stage}|{t}", n) for t, n in state.type_counts.items()
        ]
        out.append(("channels", f"{stage}|{state.first_touch_channel}", 1))
        if state.drift is not None:
            out.append(("scored", stage, 1))
            out.append(("score_sum", stage, round(state.drift.score * 1000)))  # milli-points: exact sums
        if self.jmap is None:
            return core + out
        core += [("flows", k, n) for k, n in state.flows.items()]
        core += [("after_stall", f"{st}|{t}|{after}", 1) for _, st, t, after in state.after_stall]
        core += [("outcomes", k, n) for k, n in state.outcomes.items()]
        for a, b in self.ttc_pairs:
            at = stages.get(a)
            if at is None:
                continue
            bt = stages.get(b)
            if bt is None:
                core.append(("ttc_waiting", f"{a}>{b}", 1))
            elif bt >= at:
                core.append(("ttc", f"{a}>{b}|{bucket((bt - at) / 1000)}", 1))
        # The odds' censored customers (models.insight.odds): reached a stage,
        # no later one yet, by the minute they reached it.
        waiting: list[str] = []
        for a, later in self._later.items():
            at = stages.get(a)
            if at is None or not later:
                continue
            onward = [t for b in later if (t := stages.get(b)) is not None and t >= at]
            if onward:
                core.append(("ttc", f"{a}>{ONWARD}|{bucket((min(onward) - at) / 1000)}", 1))
            else:
                core.append(("ttc_waiting", f"{a}>{ONWARD}", 1))
                waiting.append(f"{a}|{at // MINUTE_MS}")
        out += [("waiting", w, 1) for w in waiting]
        # Per dimension value, time to convert between consecutive stages
        # (and onward) only: all pairs times every value would be thousands of keys.
        sliced = [c for c in core if c[0] != "ttc" or c[1].rsplit("|", 1)[0] in self._sliced_ttc]
        for d in self._dims:
            v = dim_value(state.dims, d)
            pre = f"{d.name}={v}/"
            out += [(name, pre + key, n) for name, key, n in sliced]
            if d.name == self._odds_by:
                out += [("waiting", pre + w, 1) for w in waiting]
        return core + out

    def update(self, partition: int, before: CustomerState | None, after: CustomerState | None) -> None:
        """A customer's state changed from ``before`` to ``after`` (None: absent or erased)."""
        part = self._parts.get(partition)
        if part is None or before is after:
            return
        if before is not None and before.merged_into is not None:  # an alias counts nowhere
            before = None
        if after is not None and after.merged_into is not None:
            after = None
        if (
            before is not None
            and after is not None
            and before.stage == after.stage
            and before.first_touch_channel == after.first_touch_channel
            and before.stages == after.stages
            and (
                self.jmap is None
                or (
                    before.flows == after.flows
                    and before.after_stall == after.after_stall
                    and before.outcomes == after.outcomes
                    and before.dims == after.dims
                    and (before.stall is None) == (after.stall is None)
                )
            )
        ):
            _same_stage(part, before, after)
            return
        if before is not None:
            _apply(part, self.contributions(before), -1)
        if after is not None:
            _apply(part, self.contributions(after), 1)

    def totals(self, names: Iterable[str] | None = None) -> Figures:
        out = Figures(customers=Counter({s: 0 for s in self._stages}))
        for part in self._parts.values():
            out.add(part, names=names)
        return out

    def collect(self) -> Iterator[Metric]:
        total = self.totals(None if self.jmap is None else ("customers", "flows", "ttc", "outcomes"))
        g = GaugeMetricFamily(
            self._shadow_name if self.shadow else self._name,
            "Customers per journey stage in the partitions this worker owns",
            labels=["stage"],
        )
        for stage, n in total.customers.items():
            if "/" not in stage:
                g.add_metric([stage], n)
        yield g
        if self.jmap is not None:
            yield from self._insight(total)

    def _insight(self, total: Figures) -> Iterator[Metric]:
        """The insight families (README "Metrics"): every label from the map."""
        p = self._prefix
        seg = GaugeMetricFamily(
            f"{p}_segment_customers",
            "Customers per journey stage and dimension value (the map's dimensions)",
            labels=["dimension", "value", "stage"],
        )
        for key, n in total.customers.items():
            if "/" in key:
                dv, stage = key.split("/", 1)
                d, v = dv.split("=", 1)
                seg.add_metric([d, v, stage], n)
        yield seg
        flows = GaugeMetricFamily(
            f"{p}_flows",
            'Moves between stages made by the customers tracked now (from="(entry)": their first stage)',
            labels=["from_stage", "to_stage"],
        )
        for key, n in sorted(total.flows.items()):
            if "/" not in key and n:
                a, b = key.split(">", 1)
                flows.add_metric([a or ENTRY, b], n)
        yield flows
        by_pair: dict[str, dict[int, float]] = {}
        for key, n in total.ttc.items():
            pair, i = key.rsplit("|", 1)
            if n:
                by_pair.setdefault(pair, {})[int(i)] = n
        ttc = HistogramMetricFamily(
            f"{p}_time_to_convert_seconds",
            "Time from first reaching one stage to first reaching a later one (or an exit),"
            " customers tracked now",
            labels=["from_stage", "to_stage"],
        )
        consecutive = {f"{a}>{b}" for a, b in self._pairs}
        seg_ttc = HistogramMetricFamily(
            f"{p}_segment_time_to_convert_seconds",
            "Time to convert between consecutive stages, per dimension value",
            labels=["dimension", "value", "from_stage", "to_stage"],
        )
        for pair, counts in sorted(by_pair.items()):
            slice_, _, bare = pair.rpartition("/")
            a, b = bare.split(">", 1)
            if b == ONWARD:
                continue
            buckets = [(format_le(le), n) for le, n in histogram(counts)]
            total_s = sum(mid(i) * n for i, n in counts.items())
            if not slice_:
                ttc.add_metric([a, b], buckets, total_s)
            elif bare in consecutive:
                d, v = slice_.split("=", 1)
                seg_ttc.add_metric([d, v, a, b], buckets, total_s)
        yield ttc
        yield seg_ttc
        assert self.jmap is not None
        triggers = {pol.kind: pol.trigger for pol in self.jmap.nudges.policies}
        outcomes = GaugeMetricFamily(
            f"{p}_nudge_outcomes",
            "Nudge outcomes of the customers tracked now: nudged or held out,"
            " converted within the window or not",
            labels=["kind", "trigger", "group", "outcome"],
        )
        for key, n in sorted(total.outcomes.items()):
            if "/" not in key and n:
                kind, group, outcome = key.split("|")
                outcomes.add_metric([kind, triggers.get(kind, ""), group, outcome], n)
        yield outcomes

    # PartitionListener
    def on_partition_recovered(self, partition: int) -> None:
        self._parts[partition] = Figures()

    def on_partition_loaded(self, partition: int, states: Sequence[CustomerState]) -> None:
        part = self._parts.get(partition)
        if part is not None:
            for s in states:
                _apply(part, self.contributions(s), 1)

    def on_partition_revoked(self, partition: int) -> None:
        self._parts.pop(partition, None)
