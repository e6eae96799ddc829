"""Live customers per stage, exact across workers: ``journey_customers{stage}``.

Each worker counts the customers of the partitions it actively owns: built
from one scan of a partition's store when it is assigned and recovered
(``agents.clock.partition_scan``), counted up and down from the transitions
each batch produces, dropped when the partition is revoked. A scrape sums
the owned partitions (no table scan per scrape), so ``sum by (stage)`` over
all workers counts every customer once, right after a rebalance too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class StageCounts(Collector):
    """Per owned partition, customers per stage (a lifecycle listener and a collector)."""

    def __init__(self, stages: Iterable[str], prefix: str = "journey") -> None:
        self._stages = tuple(stages)
        self._name = f"{prefix}_customers"
        self._parts: dict[int, Counter[str]] = {}

    def set_partition(self, partition: int, counts: Counter[str]) -> None:
        self._parts[partition] = counts

    def moved(self, partition: int, from_stage: str | None, to_stage: str) -> None:
        counts = self._parts.get(partition)
        if counts is None:
            return
        if from_stage is not None:
            counts[from_stage] -= 1
        counts[to_stage] += 1

    def removed(self, partition: int, stage: str) -> None:
        counts = self._parts.get(partition)
        if counts is not None:
            counts[stage] -= 1

    def totals(self) -> Counter[str]:
        out: Counter[str] = Counter({s: 0 for s in self._stages})
        for counts in self._parts.values():
            out.update(counts)
        return out

    def collect(self) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily(
            self._name, "Customers per journey stage in the partitions this worker owns", labels=["stage"]
        )
        for stage, n in self.totals().items():
            g.add_metric([stage], n)
        yield g

    # PartitionListener (the scan that fills a partition runs on ready, elsewhere)
    def on_partition_ready(self, partition: int) -> None:
        pass

    def on_partition_revoked(self, partition: int) -> None:
        self._parts.pop(partition, None)
