"""The table's local store, read and written per partition.

Faust's stores pick the partition (the RocksDB shard) from the current
event, for reads as well as writes; the batch path knows the partition of
every customer and says so instead.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Final

from faust.types import TP

# Keys of the table that are not customers (customer ids may not begin so).
RESERVED_KEYS: Final = (b"__faust", b"__journey")


class TableStore:
    """A table's local store, read and written per partition.

    Faust's stores pick the partition (the RocksDB shard) from the current
    event, for reads as well as writes; the batch path knows the partition of
    every customer and says so instead. Writes also record the changelog
    offset, as Faust's own changelog callback does, so that recovery after a
    restart reads the changelog from there on.
    """

    def __init__(self, table: Any, changelog_topic: str) -> None:
        self._table = table
        self._changelog_topic = changelog_topic

    @property
    def _store(self) -> Any:
        return self._table.data

    def _rocksdb(self) -> bool:
        return hasattr(self._store, "_db_for_partition")

    def get(self, partition: int, key: bytes) -> bytes | None:
        store = self._store
        if self._rocksdb():
            value: bytes | None = store._db_for_partition(partition).get(key)
            return value
        return store.data.get(key)

    def scan(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        """Every customer's (key, value) stored for ``partition`` (after its recovery)."""
        store = self._store
        if self._rocksdb():
            for key, value in store._db_for_partition(partition).items():
                if not key.startswith(RESERVED_KEYS):  # Faust's offset key, the erasure ledger
                    yield key, value
            return
        owner = store._key_partition
        for key, value in list(store.data.items()):
            if owner.get(key) == partition and not key.startswith(RESERVED_KEYS):
                yield key, value

    def write(
        self, partition: int, items: Sequence[tuple[bytes, bytes | None]], changelog_offset: int | None
    ) -> None:
        """Store ``items`` of one partition in order (a value of None deletes
        the key: an erasure), then the changelog offset they reached."""
        store = self._store
        if self._rocksdb():
            import rocksdict

            batch = rocksdict.WriteBatch(raw_mode=True)
            for key, value in items:
                if value is None:
                    batch.delete(key)
                else:
                    batch.put(key, value)
            store._db_for_partition(partition).write(batch)
            index = store._key_index
        else:
            index = store._key_partition
            for key, value in items:
                if value is None:
                    store.data.pop(key, None)
                else:
                    store.data[key] = value
        for key, value in items:
            if value is None:
                index.pop(key, None)
            else:
                index[key] = partition
        if changelog_offset is not None:
            store.set_persisted_offset(TP(self._changelog_topic, partition), changelog_offset)
