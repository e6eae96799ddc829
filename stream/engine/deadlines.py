"""The deadline index: per owned partition, customers ordered by their next
deadline (a stall, inactivity, a nudge window; ``models.effects.next_deadline``).

Built from the lifecycle's scan of a partition's store when it is assigned
and recovered, updated by every batch, dropped on revoke. A tick pops
what is due in time proportional to what is due, never to the customers
held: a heap with lazy deletion, and a map of each customer's current
deadline that says which heap entries still count. The heap is rebuilt
from the map when stale entries outnumber live ones.

The index holds no truth of its own: the table does. A lost entry (a crash,
a clock record that never arrived) is found again at the next rebuild.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from models.state import CustomerState
from stream.engine.lifecycle import PartitionListener

# Entries kept beyond the live ones before the heap is compacted.
_SLACK = 1024


@dataclass(slots=True)
class _Partition:
    heap: list[tuple[int, str]] = field(default_factory=list)
    due: dict[str, int] = field(default_factory=dict)
    # Loaded in bulk since the heap was last built: the heap is rebuilt from
    # ``due`` once, when it is first read (one heapify, not a push per customer).
    stale: bool = False

    def set(self, customer: str, deadline: int | None) -> None:
        if deadline is None:
            self.due.pop(customer, None)
            return
        if self.due.get(customer) == deadline:
            return
        self.due[customer] = deadline
        if self.stale:
            return
        heapq.heappush(self.heap, (deadline, customer))
        if len(self.heap) > 2 * len(self.due) + _SLACK:
            self.rebuild()

    def load(self, pairs: Iterable[tuple[str, int | None]]) -> None:
        due = self.due
        for customer, deadline in pairs:
            if deadline is not None:
                due[customer] = deadline
        self.stale = True

    def rebuild(self) -> None:
        self.heap = [(d, c) for c, d in self.due.items()]
        heapq.heapify(self.heap)
        self.stale = False

    def top(self) -> list[tuple[int, str]]:
        if self.stale:
            self.rebuild()
        return self.heap

    def pop_due(self, now: int, limit: int) -> list[str]:
        heap, due = self.top(), self.due
        out: list[str] = []
        while heap and heap[0][0] <= now and len(out) < limit:
            deadline, customer = heapq.heappop(heap)
            if due.get(customer) == deadline:
                del due[customer]
                out.append(customer)
        return out


class DeadlineIndex(PartitionListener):
    """Customers by next deadline, per partition (a lifecycle listener)."""

    def __init__(self, deadline_of: Callable[[CustomerState], int | None]) -> None:
        """``deadline_of(state)``: a stored customer's next deadline, or None."""
        self._deadline_of = deadline_of
        self._parts: dict[int, _Partition] = {}

    def __len__(self) -> int:
        return sum(len(p.due) for p in self._parts.values())

    def partitions(self) -> list[int]:
        return sorted(self._parts)

    def set(self, partition: int, customer: str, deadline: int | None) -> None:
        part = self._parts.get(partition)
        if part is not None:  # not (or no longer) owned: nothing to index
            part.set(customer, deadline)

    def pop_due(self, partition: int, now: int, limit: int = 10_000) -> list[str]:
        """Customers of ``partition`` whose deadline is at or before ``now``, taken
        out of the index (a batch puts them back with their next deadline)."""
        part = self._parts.get(partition)
        return part.pop_due(now, limit) if part is not None else []

    def next_due(self, partition: int) -> int | None:
        part = self._parts.get(partition)
        if part is None:
            return None
        heap = part.top()
        while heap:
            deadline, customer = heap[0]
            if part.due.get(customer) == deadline:
                return deadline
            heapq.heappop(heap)
        return None

    def load(self, partition: int, pairs: Iterable[tuple[str, int | None]]) -> None:
        """Add (customer, deadline) pairs to a partition being loaded."""
        part = self._parts.get(partition)
        if part is not None:
            part.load(pairs)

    # PartitionListener
    def on_partition_recovered(self, partition: int) -> None:
        self._parts[partition] = _Partition()

    def on_partition_loaded(self, partition: int, states: Sequence[CustomerState]) -> None:
        deadline_of = self._deadline_of
        self.load(partition, ((s.customer_id, deadline_of(s)) for s in states))

    def on_partition_revoked(self, partition: int) -> None:
        self._parts.pop(partition, None)
