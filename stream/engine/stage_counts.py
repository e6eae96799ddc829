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

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

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

    def add(self, other: Figures, sign: int = 1) -> None:
        for name in FIGURES:
            mine: Counter[str] = getattr(self, name)
            for k, v in getattr(other, name).items():
                mine[k] += sign * v

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {name: {k: v for k, v in getattr(self, name).items() if v} for name in FIGURES}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Figures:
        return cls(**{name: Counter(d.get(name, {})) for name in FIGURES})


FIGURES = ("customers", "reached", "pairs", "stalled", "touchpoints", "channels", "scored", "score_sum")


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
        self, stages: Iterable[str], funnel: Iterable[str] | None = None, prefix: str = "journey"
    ) -> None:
        self._stages = tuple(stages)
        # Consecutive pairs of the funnel (the map's non-exit stages, in order),
        # each with the stages from its second on: skipping ahead converts.
        order = tuple(funnel) if funnel is not None else self._stages
        self._pairs = tuple(pairwise(order))
        self._onward = {order[i + 1]: frozenset(order[i + 1 :]) for i in range(len(order) - 1)}
        self._name = f"{prefix}_customers"
        self._shadow_name = f"{prefix}_shadow_customers"
        self.shadow = False  # blue/green: a shadow group exports its gauge under the shadow name
        self._parts: dict[int, Figures] = {}

    def set_active(self, active: bool) -> None:
        """Blue/green (``stream.redis.role``): a shadow group's gauge has the shadow name."""
        self.shadow = not active

    @property
    def pairs(self) -> tuple[tuple[str, str], ...]:
        return self._pairs

    def contributions(self, state: CustomerState) -> list[tuple[str, str, float]]:
        """One customer's contribution: (figure, key, amount) triples (cheaper
        than a Figures of eight Counters, twice per changed customer)."""
        stage = state.stage
        stages = state.stages
        out: list[tuple[str, str, float]] = [("customers", stage, 1)]
        out += [("reached", s, 1) for s in stages]
        for a, b in self._pairs:
            if a in stages and not self._onward[b].isdisjoint(stages):
                out.append(("pairs", f"{a}>{b}", 1))
        if state.stall is not None:
            out.append(("stalled", state.stall.stage, 1))
        out += [("touchpoints", f"{stage}|{t}", n) for t, n in state.type_counts.items()]
        out.append(("channels", f"{stage}|{state.first_touch_channel}", 1))
        if state.drift is not None:
            out.append(("scored", stage, 1))
            out.append(("score_sum", stage, round(state.drift.score * 1000)))  # milli-points: exact sums
        return out

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
        ):
            _same_stage(part, before, after)
            return
        if before is not None:
            _apply(part, self.contributions(before), -1)
        if after is not None:
            _apply(part, self.contributions(after), 1)

    def totals(self) -> Figures:
        out = Figures(customers=Counter({s: 0 for s in self._stages}))
        for part in self._parts.values():
            out.add(part)
        return out

    def collect(self) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily(
            self._shadow_name if self.shadow else self._name,
            "Customers per journey stage in the partitions this worker owns",
            labels=["stage"],
        )
        for stage, n in self.totals().customers.items():
            g.add_metric([stage], n)
        yield g

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
