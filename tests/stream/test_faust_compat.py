"""The one Faust-internals helper: breaks if Faust moves what it relies on."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from stream.faust_compat import current_event, use_event_for_table_writes


class FakeEvent:
    """Faust keeps a weak reference to the current event, so not a SimpleNamespace."""

    def __init__(self) -> None:
        self.message = SimpleNamespace(partition=3)


def test_sets_the_event_tables_read_only_inside_the_task() -> None:
    ev: Any = FakeEvent()

    async def inner() -> Any:
        use_event_for_table_writes(ev)
        return current_event()

    async def outer() -> tuple[Any, Any]:
        seen = await asyncio.ensure_future(inner())
        return seen, current_event()

    seen, after = asyncio.run(outer())
    assert seen is ev  # what Table.partition_for_key and the RocksDB store read
    assert after is None  # the stream's own context is untouched


def test_faust_tables_still_read_the_current_event() -> None:
    import inspect

    from faust.stores import rocksdb
    from faust.tables import base

    assert "current_event()" in inspect.getsource(base.Collection.partition_for_key)
    assert "current_event" in inspect.getsource(rocksdb.Store)


def test_the_aiokafka_producer_is_where_faust_keeps_it() -> None:
    import inspect

    from faust.transport.drivers import aiokafka

    source = inspect.getsource(aiokafka.Producer)
    assert "def _ensure_producer(self) -> aiokafka.AIOKafkaProducer" in source


def test_stores_take_persisted_offsets() -> None:
    from faust.stores import memory, rocksdb

    assert callable(memory.Store.set_persisted_offset)
    assert callable(rocksdb.Store.set_persisted_offset)
