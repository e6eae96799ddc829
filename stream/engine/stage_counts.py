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
    # "a>b|bucket": reached b that long after a ("a>+": any later stage)
    ttc: Counter[str] = field(default_factory=Counter)
    ttc_waiting: Counter[str] = field(default_factory=Counter)  # "a>b": reached a, not b yet
    waiting: Counter[str] = field(default_factory=Counter)  # "a|minute": reached a then, no later stage yet
    outcomes: Counter[str] = field(default_factory=Counter)  # "kind|group|outcome": nudge outcomes
    # name -> counter, for the hot path (one dict lookup instead of getattr)
    counters: dict[str, Counter[str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.counters = {name: getattr(self, name) for name in FIGURES}

    def add(
        self, other: Figures, sign: int = 1, names: Iterable[str] | None = None, prefix: str = ""
    ) -> None:
        for name in FIGURES if names is None else names:
            mine: Counter[str] = getattr(self, name)
            for k, v in getattr(other, name).items():
                mine[prefix + k] += sign * v

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
# Changed customers waiting to be counted (StageCounts.update) before a count is forced.
PENDING_MAX = 50_000
ENTRY = "(entry)"  # the "from" of a customer's first stage (flows)
ONWARD = "+"  # time to convert to any later stage that is not an exit ("a>+")


Entry = tuple[str, str, int]  # (figure, key, amount)


def _apply(figures: Figures, contributions: Iterable[Entry], sign: int) -> None:
    counters = figures.counters
    for name, key, amount in contributions:
        mine = counters[name]
        mine[key] = mine.get(key, 0) + sign * amount


def _delta(old: list[Entry], new: list[Entry]) -> list[Entry]:
    """``new`` minus ``old``, as entries, the unchanged ones left out."""
    out: dict[tuple[str, str], int] = {}
    for name, key, n in new:
        out[name, key] = out.get((name, key), 0) + n
    for name, key, n in old:
        out[name, key] = out.get((name, key), 0) - n
    return [(name, key, n) for (name, key), n in out.items() if n]


def _stall_stage(state: CustomerState) -> str | None:
    return state.stall.stage if state.stall is not None else None


def _same_stage(part: Figures, before: CustomerState, after: CustomerState, stall: bool = True) -> None:
    """:meth:`StageCounts.update` when the stage, the stages reached and the
    first touch are the same (most changes: events that move nobody). Only
    the stall, the event counts and the drift score can differ, so only
    they are counted again (the two contributions' difference, without
    building them). ``stall=False``: the stall is counted elsewhere."""
    stage = after.stage
    old_stall, new_stall = _stall_stage(before), _stall_stage(after)
    if stall and old_stall != new_stall:
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
        self._slices: dict[int, dict[str, Figures]] = {}  # per partition, per "dimension=value"
        # Changes not counted yet: per partition, customer -> (state counted, latest state)
        self._pending: dict[int, dict[str, tuple[CustomerState | None, CustomerState | None]]] = {}
        self._waiting = 0
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
        self._dim_index = {d.name: i for i, d in enumerate(self._dims)}
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

    def contributions(self, state: CustomerState) -> list[Entry]:
        """One customer's contribution to all customers' figures: (figure,
        key, amount) triples (its dimension values' are the sliced ones of
        :meth:`_whole`)."""
        only, sliced, waiting, _ = self._whole(state)
        return only + sliced + waiting

    def _whole(self, state: CustomerState) -> tuple[list[Entry], list[Entry], list[Entry], tuple[str, ...]]:
        """A customer's whole contribution: the entries of all customers only,
        those counted for its dimension values too, the odds' waiting
        entries (for the odds' dimension too), and its dimension values."""
        only = self._extras(state)
        if self.jmap is None:
            return only, self._base(state), [], ()
        stage_sliced, unsliced, waiting = self._stages_part(state)
        sliced = self._base(state) + self._flows(state) + self._after(state) + self._outcomes(state)
        return (
            only + unsliced,
            sliced + stage_sliced,
            [("waiting", w, 1) for w in waiting],
            self._values(state),
        )

    def _slice(self, partition: int, d: Dimension, value: str) -> Figures:
        mine = self._slices.setdefault(partition, {})
        key = f"{d.name}={value}"
        out = mine.get(key)
        if out is None:
            out = mine[key] = Figures()
        return out

    def _add(self, partition: int, part: Figures, state: CustomerState, sign: int) -> None:
        """Count a customer in (sign 1) or out (-1) of a partition's figures and its dimension values'."""
        only, sliced, waiting, values = self._whole(state)
        _apply(part, only, sign)
        _apply(part, sliced, sign)
        _apply(part, waiting, sign)
        for d, v in zip(self._dims, values, strict=True):
            figures = self._slice(partition, d, v)
            _apply(figures, sliced, sign)
            if d.name == self._odds_by:
                _apply(figures, waiting, sign)

    # The contribution in parts, each from its own fields of the state, so an
    # update recounts only the parts whose fields changed.
    def _base(self, state: CustomerState) -> list[Entry]:
        """The stage, the stages reached, consecutive conversions, an open stall."""
        stages = state.stages
        out: list[Entry] = [("customers", state.stage, 1)]
        out += [("reached", s, 1) for s in stages]
        for a, b in self._pairs:
            if a in stages and not self._onward[b].isdisjoint(stages):
                out.append(("pairs", f"{a}>{b}", 1))
        if state.stall is not None:
            out.append(("stalled", state.stall.stage, 1))
        return out

    @staticmethod
    def _extras(state: CustomerState) -> list[Entry]:
        """Figures of all customers only: event counts, first-touch channel, drift."""
        stage = state.stage
        out: list[Entry] = [("touchpoints", f"{stage}|{t}", n) for t, n in state.type_counts.items()]
        out.append(("channels", f"{stage}|{state.first_touch_channel}", 1))
        if state.drift is not None:
            out.append(("scored", stage, 1))
            out.append(("score_sum", stage, round(state.drift.score * 1000)))  # milli-points: exact sums
        return out

    @staticmethod
    def _flows(state: CustomerState) -> list[Entry]:
        return [("flows", k, n) for k, n in state.flows.items()]

    @staticmethod
    def _after(state: CustomerState) -> list[Entry]:
        return [("after_stall", f"{st}|{t}|{after}", 1) for _, st, t, after in state.after_stall]

    @staticmethod
    def _outcomes(state: CustomerState) -> list[Entry]:
        return [("outcomes", k, n) for k, n in state.outcomes.items()]

    def _values(self, state: CustomerState) -> tuple[str, ...]:
        return tuple(dim_value(state.dims, d) for d in self._dims)

    def _stages_part(
        self, state: CustomerState, changed: frozenset[str] | None = None
    ) -> tuple[list[Entry], list[Entry], list[str]]:
        """Time to convert from the stages reached: the entries counted per
        dimension value too (consecutive pairs and onward: all pairs times
        every value would be thousands of keys), those of all customers
        only, and the odds' waiting customers (reached a stage, no later one
        yet, by the minute they reached it). ``changed``: only the pairs with
        a stage whose first time changed (an update: the others are the same
        before and after)."""
        stages = state.stages
        sliced: list[Entry] = []
        unsliced: list[Entry] = []
        for a, b in self.ttc_pairs:
            if changed is not None and a not in changed and b not in changed:
                continue
            at = stages.get(a)
            if at is None:
                continue
            bt = stages.get(b)
            pair = f"{a}>{b}"
            if bt is None:
                entry = ("ttc_waiting", pair, 1)
            elif bt >= at:
                entry = ("ttc", f"{pair}|{bucket((bt - at) / 1000)}", 1)
            else:
                continue
            (sliced if pair in self._sliced_ttc else unsliced).append(entry)
        waiting: list[str] = []
        for a, later in self._later.items():
            at = stages.get(a)
            if at is None or not later:
                continue
            if changed is not None and a not in changed and changed.isdisjoint(later):
                continue
            onward = [t for b in later if (t := stages.get(b)) is not None and t >= at]
            if onward:
                sliced.append(("ttc", f"{a}>{ONWARD}|{bucket((min(onward) - at) / 1000)}", 1))
            else:
                sliced.append(("ttc_waiting", f"{a}>{ONWARD}", 1))
                waiting.append(f"{a}|{at // MINUTE_MS}")
        return sliced, unsliced, waiting

    def update(self, partition: int, before: CustomerState | None, after: CustomerState | None) -> None:
        """A customer's state changed from ``before`` to ``after`` (None: absent or erased).

        Counted when the figures are next read (a scrape, ``/funnel``) or
        once :data:`PENDING_MAX` customers wait: a customer changed by many
        batches in between is counted once, from the state the figures hold
        to the latest (catching up on a backlog, most are)."""
        if partition not in self._parts or before is after:
            return
        pending = self._pending.setdefault(partition, {})
        cid = after.customer_id if after is not None else before.customer_id  # type: ignore[union-attr]
        was = pending.get(cid)
        pending[cid] = (was[0] if was is not None else before, after)
        self._waiting += was is None
        if self._waiting >= PENDING_MAX:
            self.flush()

    def flush(self) -> None:
        """Count every change still waiting."""
        for partition, pending in self._pending.items():
            for before, after in pending.values():
                self._update(partition, before, after)
        self._pending.clear()
        self._waiting = 0

    def _update(self, partition: int, before: CustomerState | None, after: CustomerState | None) -> None:
        part = self._parts.get(partition)
        if part is None or before is after:
            return
        if before is not None and before.merged_into is not None:  # an alias counts nowhere
            before = None
        if after is not None and after.merged_into is not None:
            after = None
        if before is None or after is None:
            if before is not None:
                self._add(partition, part, before, -1)
            if after is not None:
                self._add(partition, part, after, 1)
            return
        same_stage = before.stage == after.stage and before.first_touch_channel == after.first_touch_channel
        if self.jmap is None:
            if same_stage and before.stages == after.stages:
                _same_stage(part, before, after)
            else:
                self._add(partition, part, before, -1)
                self._add(partition, part, after, 1)
            return
        values = self._values(after)
        if self._values(before) != values:  # moved to another dimension value: everything, both ways
            self._add(partition, part, before, -1)
            self._add(partition, part, after, 1)
            return
        # The parts whose fields changed, as differences, to all customers and
        # to the customer's (unchanged) dimension values.
        sliced: list[Entry] = []
        if before.stage != after.stage or before.stages != after.stages:
            b_stages, a_stages = before.stages, after.stages
            changed = frozenset(
                [x for x in a_stages if b_stages.get(x) != a_stages[x]]
                + [x for x in b_stages if x not in a_stages]
            )
            sb, ub, wb = self._stages_part(before, changed)
            sa, ua, wa = self._stages_part(after, changed)
            sliced += _delta(self._base(before) + sb, self._base(after) + sa)
            _apply(part, _delta(ub, ua), 1)
            waiting = _delta([("waiting", w, 1) for w in wb], [("waiting", w, 1) for w in wa])
            _apply(part, waiting, 1)
            if self._odds_by is not None:
                i = self._dim_index[self._odds_by]
                _apply(self._slice(partition, self._dims[i], values[i]), waiting, 1)
        elif _stall_stage(before) != _stall_stage(after):
            sliced += _delta(self._base(before), self._base(after))
        if before.flows != after.flows:
            sliced += _delta(self._flows(before), self._flows(after))
        if before.after_stall != after.after_stall:
            sliced += _delta(self._after(before), self._after(after))
        if before.outcomes != after.outcomes:
            sliced += _delta(self._outcomes(before), self._outcomes(after))
        if same_stage:
            _same_stage(part, before, after, stall=False)
        else:
            _apply(part, _delta(self._extras(before), self._extras(after)), 1)
        if sliced:
            _apply(part, sliced, 1)
            for d, v in zip(self._dims, values, strict=True):
                _apply(self._slice(partition, d, v), sliced, 1)

    def totals(self, names: Iterable[str] | None = None) -> Figures:
        self.flush()
        out = Figures(customers=Counter({s: 0 for s in self._stages}))
        for p, part in self._parts.items():
            out.add(part, names=names)
            for key, figures in self._slices.get(p, {}).items():
                out.add(figures, names=names, prefix=f"{key}/")
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
        seg_flows = GaugeMetricFamily(
            f"{p}_segment_flows",
            "Moves between stages per dimension value (the map's dimensions)",
            labels=["dimension", "value", "from_stage", "to_stage"],
        )
        for key, n in sorted(total.flows.items()):
            if not n:
                continue
            slice_, _, bare = key.rpartition("/")
            a, b = bare.split(">", 1)
            if not slice_:
                flows.add_metric([a or ENTRY, b], n)
            else:
                d, v = slice_.split("=", 1)
                seg_flows.add_metric([d, v, a or ENTRY, b], n)
        yield flows
        yield seg_flows
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
        self._slices[partition] = {}
        self._drop_pending(partition)

    def on_partition_loaded(self, partition: int, states: Sequence[CustomerState]) -> None:
        part = self._parts.get(partition)
        if part is not None:
            for s in states:
                if s.merged_into is None:  # an alias counts nowhere
                    self._add(partition, part, s, 1)

    def on_partition_revoked(self, partition: int) -> None:
        self._parts.pop(partition, None)
        self._slices.pop(partition, None)
        self._drop_pending(partition)

    def _drop_pending(self, partition: int) -> None:
        self._waiting -= len(self._pending.pop(partition, {}))
