"""The erasure ledger: the Redis deletes an erasure still owes, kept in the table.

An erasure record (``DELETE /customers/{id}``) removes the customer's state in
the batch that applies it, with a tombstone in the changelog. What it owes
outside the table (the nudge gate's keys and the serving view's hash, both in
Redis) cannot be done in that batch when Redis is away, and memory alone is
not enough: a worker that dies before Redis answers would leave the keys,
with the customer id in them, until their TTL. So the ledger keeps, per
partition, the erasures whose Redis deletes are not done yet, and the same
batch that applies an erasure writes the partition's ledger to the table
under a reserved key (:func:`ledger_key`; customer ids may not begin with
``__journey``), through the changelog like any customer:

* a crash replays nothing needed: the ledger was written with the tombstone,
  and the next owner reads it when the partition is ready;
* a revoke hands it to the next owner the same way;
* the view's overflow cannot drop it: the ledger deletes the view's hash
  itself (a guarded delete: a newer journey's hash is kept).

The deletes are tried with every nudge flush (after each batch, and each
clock tick while Redis is down), under the dispatcher's lock, so a flush
that is deciding a nudge of an erased customer finishes first and its keys
go too. A done erasure leaves the ledger in memory at once and in the table
with the partition's next write (a restart before it redoes the deletes,
which changes nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final

import orjson

from stream.engine.lifecycle import PartitionListener

LEDGER_PREFIX: Final = b"__journey\x00erasures\x00"


def ledger_key(partition: int) -> bytes:
    """The table key of one partition's ledger."""
    return LEDGER_PREFIX + str(partition).encode()


def encode_ledger(pending: dict[str, int]) -> bytes | None:
    """A ledger's table value (customer id -> the erasure's source offset); None: empty (a tombstone)."""
    return orjson.dumps(pending) if pending else None


def decode_ledger(raw: bytes | None) -> dict[str, int]:
    if raw is None:
        return {}
    value = orjson.loads(raw)
    return {str(k): int(v) for k, v in value.items()} if isinstance(value, dict) else {}


class ErasureLedger(PartitionListener):
    """Per owned partition, the erasures whose Redis deletes are still owed."""

    def __init__(self, read: Callable[[int, bytes], bytes | None]) -> None:
        self._read = read  # (partition, key) -> the stored value
        self.pending: dict[int, dict[str, int]] = {}
        self.dirty: set[int] = set()  # partitions whose stored ledger is behind

    def __len__(self) -> int:
        return sum(len(p) for p in self.pending.values())

    def add(self, partition: int, customer_id: str, offset: int) -> None:
        part = self.pending.get(partition)
        if part is None:  # not owned (any more): its next owner has it from the table
            return
        part[customer_id] = max(offset, part.get(customer_id, -1))
        self.dirty.add(partition)

    def owed(self) -> list[tuple[int, str, int]]:
        """Every (partition, customer id, offset) still owed."""
        return [(p, cid, o) for p, part in self.pending.items() for cid, o in part.items()]

    def done(self, items: list[tuple[int, str, int]]) -> None:
        """These deletes are done (an erasure added again meanwhile, with a later offset, stays)."""
        for p, cid, o in items:
            part = self.pending.get(p)
            if part is not None and part.get(cid) == o:
                del part[cid]
                self.dirty.add(p)

    def writes(self) -> Iterator[tuple[int, bytes, bytes | None]]:
        """The ledger records the table is behind on, (partition, key, value),
        and from then on counts them as written."""
        for p in sorted(self.dirty):
            part = self.pending.get(p)
            if part is not None:
                yield p, ledger_key(p), encode_ledger(part)
        self.dirty.clear()

    # PartitionListener
    def on_partition_recovered(self, partition: int) -> None:
        self.pending[partition] = decode_ledger(self._read(partition, ledger_key(partition)))

    def on_partition_revoked(self, partition: int) -> None:
        self.pending.pop(partition, None)
        self.dirty.discard(partition)
