"""The deadline index: per owned partition, customers ordered by their next
deadline (a stall, inactivity, a nudge window, retention;
``models.effects.next_deadline``).

Built from the lifecycle's scan of a partition's store when it is assigned
and recovered, updated by every batch, dropped on revoke. A tick pops what
is due in time proportional to what is due, never to the customers held.

Two parts per partition, so that a million idle customers cost a few tens
of megabytes, not an object each:

* **The loaded run**: the customers of the scan, in compact arrays sorted
  by deadline (8 bytes of deadline, 4 of offset and the id's UTF-8 bytes
  in one arena, plus an 8-byte hash and a 4-byte position for finding a
  customer, and a byte that says an entry no longer counts). A cursor
  walks it as deadlines come due.
* **The active part**: customers a batch has set since (a dict of current
  deadlines and a heap with lazy deletion, rebuilt from the dict when stale
  entries outnumber live ones). Setting a customer the run holds marks the
  run's entry dead first, so each customer counts once. When the active
  part outgrows the run, both are merged into a new run at a tick.

The index holds no truth of its own: the table does. A lost entry (a crash,
a clock record that never arrived) is found again at the next scan.
"""

from __future__ import annotations

import heapq
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence

import xxhash

from models.state import CustomerState
from stream.engine.lifecycle import PartitionListener

# Heap entries kept beyond the live ones before the active heap is compacted.
_SLACK = 1024
# The active part is merged into the run when it holds more customers than
# this and than the run's live ones.
MERGE_AT = 50_000


def _hash(customer: bytes) -> int:
    return xxhash.xxh3_64_intdigest(customer)


class _Run:
    """Customers with a deadline, sorted by it, in flat arrays (built once, then only walked and marked)."""

    __slots__ = ("arena", "cursor", "dead", "deadlines", "hashes", "live", "offsets", "order")

    def __init__(self, pairs: Iterable[tuple[int, bytes]]) -> None:
        """``pairs``: (deadline, customer id as UTF-8), each customer once."""
        deadlines: array[int] = array("q")
        ids: list[bytes] = []
        for d, cid in pairs:
            deadlines.append(d)
            ids.append(cid)
        n = len(deadlines)
        by_deadline = sorted(range(n), key=deadlines.__getitem__)
        self.deadlines = array("q", (deadlines[i] for i in by_deadline))
        del deadlines
        self.offsets = array("I", [0])
        arena = bytearray()
        hashes = array("Q")
        for i in by_deadline:
            cid = ids[i]
            arena += cid
            self.offsets.append(len(arena))
            hashes.append(_hash(cid))
        del ids, by_deadline
        self.arena = bytes(arena)
        by_hash = sorted(range(n), key=hashes.__getitem__)
        self.hashes = array("Q", (hashes[i] for i in by_hash))
        self.order = array("I", by_hash)  # for each hash position, the entry's position by deadline
        self.dead = bytearray(n)
        self.cursor = 0
        self.live = n

    def id_at(self, pos: int) -> bytes:
        return self.arena[self.offsets[pos] : self.offsets[pos + 1]]

    def find(self, customer: bytes) -> int:
        """The position of ``customer``'s live entry, or -1."""
        h = _hash(customer)
        hashes, n = self.hashes, len(self.hashes)
        i = bisect_left(hashes, h)
        while i < n and hashes[i] == h:
            pos = self.order[i]
            if not self.dead[pos] and self.id_at(pos) == customer:
                return pos
            i += 1
        return -1

    def kill(self, pos: int) -> None:
        self.dead[pos] = 1
        self.live -= 1

    def head(self) -> int | None:
        """The earliest live deadline (dead entries at the cursor are skipped for good)."""
        dead, n = self.dead, len(self.deadlines)
        while self.cursor < n and dead[self.cursor]:
            self.cursor += 1
        return self.deadlines[self.cursor] if self.cursor < n else None

    def pop_due(self, now: int, limit: int, out: list[str]) -> None:
        deadlines, dead, n = self.deadlines, self.dead, len(self.deadlines)
        i = self.cursor
        while i < n and deadlines[i] <= now and len(out) < limit:
            if not dead[i]:
                dead[i] = 1
                self.live -= 1
                out.append(self.id_at(i).decode())
            i += 1
        self.cursor = i

    def items(self) -> Iterable[tuple[int, bytes]]:
        """The live entries, as (deadline, customer)."""
        dead, deadlines = self.dead, self.deadlines
        for i in range(self.cursor, len(deadlines)):
            if not dead[i]:
                yield deadlines[i], self.id_at(i)

    def nbytes(self) -> int:
        return (
            len(self.arena)
            + self.deadlines.itemsize * len(self.deadlines)
            + self.offsets.itemsize * len(self.offsets)
            + self.hashes.itemsize * len(self.hashes)
            + self.order.itemsize * len(self.order)
            + len(self.dead)
        )


_EMPTY_RUN = _Run(())


class _Partition:
    __slots__ = ("due", "heap", "loading", "run")

    def __init__(self) -> None:
        self.run = _EMPTY_RUN
        self.loading: list[tuple[int, bytes]] | None = None  # the scan's pairs, until first read
        self.heap: list[tuple[int, str]] = []
        self.due: dict[str, int] = {}

    def __len__(self) -> int:
        self.settle()
        return self.run.live + len(self.due)

    def settle(self) -> None:
        """Build the run from what the scan loaded (once, at the first read)."""
        if self.loading is not None:
            self.run = _Run(self.loading)
            self.loading = None

    def set(self, customer: str, deadline: int | None) -> None:
        self.settle()
        due = self.due
        if customer not in due and self.run.live:
            pos = self.run.find(customer.encode())
            if pos >= 0:
                self.run.kill(pos)  # from now on the active part has the customer
        if deadline is None:
            due.pop(customer, None)
            return
        if due.get(customer) == deadline:
            return
        due[customer] = deadline
        heapq.heappush(self.heap, (deadline, customer))
        if len(self.heap) > 2 * len(due) + _SLACK:
            self.rebuild()

    def load(self, pairs: Iterable[tuple[str, int | None]]) -> None:
        if self.loading is None and (self.run.live or self.due):
            for customer, deadline in pairs:  # loaded after reads: as a batch sets them
                self.set(customer, deadline)
            return
        if self.loading is None:
            self.loading = []
        self.loading.extend((d, c.encode()) for c, d in pairs if d is not None)

    def rebuild(self) -> None:
        self.heap = [(d, c) for c, d in self.due.items()]
        heapq.heapify(self.heap)

    def merge(self) -> None:
        """One run of the live entries of both parts; the active part starts empty."""
        due = self.due
        self.run = _Run([*self.run.items(), *((d, c.encode()) for c, d in due.items())])
        self.heap, self.due = [], {}

    def top(self) -> list[tuple[int, str]]:
        self.settle()
        if len(self.due) > MERGE_AT and len(self.due) > self.run.live:
            self.merge()
        heap, due = self.heap, self.due
        while heap and due.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap

    def next_due(self) -> int | None:
        heap = self.top()
        head = self.run.head()
        if heap and (head is None or heap[0][0] < head):
            return heap[0][0]
        return head

    def pop_due(self, now: int, limit: int) -> list[str]:
        heap, due = self.top(), self.due
        out: list[str] = []
        self.run.pop_due(now, limit, out)
        while heap and heap[0][0] <= now and len(out) < limit:
            deadline, customer = heapq.heappop(heap)
            if due.get(customer) == deadline:
                del due[customer]
                out.append(customer)
        return out

    def nbytes(self) -> int:
        self.settle()
        return self.run.nbytes()


class DeadlineIndex(PartitionListener):
    """Customers by next deadline, per partition (a lifecycle listener)."""

    def __init__(self, deadline_of: Callable[[CustomerState], int | None]) -> None:
        """``deadline_of(state)``: a stored customer's next deadline, or None."""
        self._deadline_of = deadline_of
        self._parts: dict[int, _Partition] = {}

    def __len__(self) -> int:
        return sum(len(p) for p in self._parts.values())

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
        return part.next_due() if part is not None else None

    def load(self, partition: int, pairs: Iterable[tuple[str, int | None]]) -> None:
        """Add (customer, deadline) pairs, each customer once, to a partition being loaded."""
        part = self._parts.get(partition)
        if part is not None:
            part.load(pairs)

    def run_bytes(self) -> int:
        """Bytes the loaded runs' arrays take (what a million idle customers cost)."""
        return sum(p.nbytes() for p in self._parts.values())

    # PartitionListener
    def on_partition_recovered(self, partition: int) -> None:
        self._parts[partition] = _Partition()

    def on_partition_loaded(self, partition: int, states: Sequence[CustomerState]) -> None:
        deadline_of = self._deadline_of
        self.load(partition, ((s.customer_id, deadline_of(s)) for s in states))

    def on_partition_revoked(self, partition: int) -> None:
        self._parts.pop(partition, None)
