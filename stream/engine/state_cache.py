"""Decoded customer states kept between batches, per owned partition.

A customer usually has one event per batch, so decoding the stored value
(orjson and a frozen state) was a third of the batch path. The cache keeps
what this worker last read or wrote, keyed by customer, bounded
(``JOURNEY_STATE_CACHE_SIZE``, oldest entry out first). Only this worker
writes the table partitions it actively owns, so the cache is exact while
it owns them; it is a partition listener, emptied for a partition when it
is revoked and when it is (re)assigned and recovered, since recovery writes
the store from the changelog behind its back.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from models.state import CustomerState
from stream.engine.codec import decode_stored
from stream.engine.lifecycle import PartitionListener

Stored = tuple[int, CustomerState]  # (source offset of the last event applied, state)


class StateCache(PartitionListener):
    """A bounded read-through cache of decoded table values, per partition."""

    def __init__(self, read: Callable[[int, bytes], bytes | None], maxsize: int) -> None:
        self._read = read
        self._maxsize = maxsize
        # key -> (partition, value), oldest first. An OrderedDict, not a dict:
        # taking a dict's first key (next(iter(d))) walks over every entry
        # deleted since its last resize, so with the cache full each eviction
        # scanned tens of thousands of slots (half the worker's time at a
        # million customers, bench/scale.py); popitem(last=False) is O(1).
        self._entries: OrderedDict[bytes, tuple[int, Stored | None]] = OrderedDict()
        # Values planned but not yet in the store (their changelog not yet
        # acked): never evicted, read before the store, until stored().
        self._held: dict[bytes, tuple[int, Stored | None]] = {}
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def load(self, partition: int, key: bytes) -> Stored | None:
        held = self._held.get(key)
        if held is not None and held[0] == partition:
            self.hits += 1
            return held[1]
        entry = self._entries.get(key)
        if entry is not None and entry[0] == partition:
            self.hits += 1
            return entry[1]
        self.misses += 1
        raw = self._read(partition, key)
        value = decode_stored(raw) if raw is not None else None
        self._put(partition, key, value)
        return value

    def hold(self, partition: int, key: bytes, value: Stored | None) -> None:
        """``value`` is the newest for ``key`` but not in the store yet: the next
        batch plans from it, whatever the cache's size, until :meth:`stored`."""
        self._held[key] = (partition, value)

    def stored(self, partition: int, key: bytes, value: Stored | None) -> None:
        """``value`` is now in the store for ``key`` (None: the key was erased).

        A hold on the same value object ends; a newer one (a later batch,
        planned meanwhile) stays."""
        held = self._held.get(key)
        if held is not None and held[1] is value:
            del self._held[key]
        self._put(partition, key, value)

    def _put(self, partition: int, key: bytes, value: Stored | None) -> None:
        entries = self._entries
        entries[key] = (partition, value)
        entries.move_to_end(key)  # the newest last: the oldest entry goes first
        if len(entries) > self._maxsize:
            entries.popitem(last=False)

    def drop_partition(self, partition: int) -> None:
        for entries in (self._entries, self._held):
            for key in [k for k, (p, _) in entries.items() if p == partition]:
                del entries[key]

    # PartitionListener
    def on_partition_recovered(self, partition: int) -> None:
        self.drop_partition(partition)

    def on_partition_revoked(self, partition: int) -> None:
        self.drop_partition(partition)
