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


def consumer_state(acked: list[int], committed: int | None, gaps: list[tuple[int, int]] = ()) -> Any:  # type: ignore[assignment]
    from collections import defaultdict

    from faust.types import TP
    from intervaltree import IntervalTree

    tp = TP("t", 0)
    state = SimpleNamespace(
        _acked=defaultdict(list, {tp: list(acked)}),
        _acked_index=defaultdict(set, {tp: set(acked)}),
        _gap=defaultdict(IntervalTree, {tp: IntervalTree.from_tuples(gaps)} if gaps else {}),
        _committed_offset=defaultdict(lambda: None, {tp: committed}),
    )
    return state, tp


def test_duplicated_acks_no_longer_make_the_commit_crawl() -> None:
    from stream.faust_compat import _new_offset

    # What the rebalance test showed: offsets acked twice, committed 1684.
    acked = [o for o in range(1683, 1700) for _ in (0, 1)]
    state, tp = consumer_state(acked, committed=1684)
    assert _new_offset(state, tp) == 1700  # Faust's own gave 1684: one offset per interval
    assert state._acked[tp] == []


def test_same_answers_as_faust_without_duplicates() -> None:
    from stream.faust_compat import _new_offset, faust_new_offset

    cases: list[tuple[list[int], int | None, list[tuple[int, int]], int | None, list[int]]] = [
        ([5, 6, 7, 9, 10], 5, [], 8, [9, 10]),  # stops at the gap
        ([8, 9], 5, [], None, [8, 9]),  # a head gap: nothing to commit
        ([6, 7, 13], 5, [(8, 12)], 12, [13]),  # a known gap inside the acked range is filled in
        ([3, 4], None, [], 5, []),  # nothing committed yet
    ]
    for acked, committed, gaps, want, left in cases:
        ours, tp = consumer_state(acked, committed, gaps)
        theirs, _ = consumer_state(acked, committed, gaps)
        assert _new_offset(ours, tp) == faust_new_offset(theirs, tp) == want
        assert ours._acked[tp] == theirs._acked[tp] == left


def test_the_fix_is_installed_and_faust_still_has_the_original_shape() -> None:
    import inspect

    from faust.transport import consumer

    import stream.app  # noqa: F401  (installs the fix)
    from stream.faust_compat import _new_offset

    assert consumer.Consumer._new_offset is _new_offset
    original = inspect.getsource(consumer).split("def _new_offset(self, tp: TP)")[1].split("    def ")[0]
    for line in (
        "acked.extend(stuff_to_add)",
        "acked.sort()",
        "if min(acked) - committed_offset > 1:",
        "batch = next(consecutive_numbers(acked))",
        "return batch[-1] + 1",
    ):
        assert line in original, line
