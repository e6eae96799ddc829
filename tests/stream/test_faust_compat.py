"""The Faust-internals package (``stream.faust``): breaks if Faust moves what it relies on,
and pins the behaviour of the batch consumer's own methods."""

from __future__ import annotations

import asyncio
import inspect
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from stream.engine.lifecycle import PartitionLifecycle
from stream.engine.pipeline import BatchPipeline, Fetch, check_order
from stream.errors import OffsetWentBackwards, UnsupportedFaust
from stream.faust import app as faust_app
from stream.faust import consumer as consumer_module
from stream.faust import version as faust_version
from stream.faust.consumer import batch_consumer_class


def faust_source(name: str) -> str:
    from faust.transport import consumer

    return inspect.getsource(getattr(consumer.Consumer, name))


def test_the_installed_faust_is_supported_and_others_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    faust_version.check_faust_version()
    monkeypatch.setattr(faust_version.faust, "__version__", "0.16.0")
    with pytest.raises(UnsupportedFaust, match=r"0\.16\.0 is installed"):
        faust_version.check_faust_version()


def test_faust_still_has_what_the_batch_path_calls() -> None:
    drain = faust_source("_drain_messages")
    # Our copy keeps Faust's per-message path for other topics, as written there.
    assert (
        "await self.wait_first(\n                                callback(message), self.suspend_flow.wait()"
        in drain
    )
    assert "await self._add_gap(tp, r_offset + 1, offset)" in drain
    getmany = faust_source("getmany")
    assert "await self._wait_next_records(timeout)" in getmany
    assert "await self.perform_seek()" in getmany
    # wait_empty waits on _unacked_messages and drops those whose .acked is set.
    assert "self._unacked_messages" in faust_source("wait_empty")
    assert "if message.acked" in faust_source("_clean_unacked_messages")
    # Commits consider the partitions that have an _acked entry.
    assert "for tp in self._acked" in faust_source("_filter_tps_with_pending_acks")


def test_faust_still_marks_failed_commits_as_committed() -> None:
    """The reason for our _commit_offsets: if Faust fixes this, ours can go."""
    source = faust_source("_commit_offsets")
    tail = source.split("did_commit = await self._commit(committable_offsets)")[1]
    assert "\n        self._committed_offset.update(committable_offsets)" in tail


def test_faust_stores_still_read_the_current_event_and_keep_what_table_store_uses() -> None:
    from faust.stores import memory, rocksdb

    assert "current_event()" in inspect.getsource(rocksdb.Store._set)
    assert "current_event()" in inspect.getsource(rocksdb.Store._get)
    assert callable(rocksdb.Store._db_for_partition)
    assert "self._key_index = " in inspect.getsource(rocksdb.Store.__init__)
    assert "self._key_partition" in inspect.getsource(memory.Store.__post_init__)
    assert callable(memory.Store.set_persisted_offset) and callable(rocksdb.Store.set_persisted_offset)


def test_the_aiokafka_producer_is_where_faust_keeps_it() -> None:
    from faust.transport.drivers import aiokafka

    assert "def _ensure_producer(self) -> aiokafka.AIOKafkaProducer" in inspect.getsource(aiokafka.Producer)


def test_the_worker_still_schedules_its_stop_and_sets_up_logging_where_bounded_worker_hooks_in() -> None:
    from aiokafka.client import AIOKafkaClient
    from faust.worker import Worker
    from mode import worker as mode_worker

    # SIGTERM and SIGINT both go through _schedule_shutdown.
    assert "self._schedule_shutdown(signal.SIGTERM)" in inspect.getsource(mode_worker.Worker._on_sigterm)
    assert "self._schedule_shutdown(signal.SIGINT)" in inspect.getsource(mode_worker.Worker._on_sigint)
    assert "self.on_setup_root_logger(" in inspect.getsource(mode_worker.Worker._setup_logging)
    assert callable(Worker.on_setup_root_logger)
    # The owner lookup and the topics check read these.
    assert callable(AIOKafkaClient.fetch_all_metadata)
    assert "def tables_metadata(self)" in inspect.getsource(
        __import__("faust.assignor.partition_assignor", fromlist=["x"]).PartitionAssignor
    )


def test_a_stop_starts_the_timer_once_and_goes_on_as_faust_would(monkeypatch: pytest.MonkeyPatch) -> None:
    import faust
    from faust.worker import Worker

    calls: list[Any] = []
    monkeypatch.setattr(Worker, "_schedule_shutdown", lambda self, sig: calls.append(sig))
    fired: list[str] = []
    app = faust.App("compat-test", broker="kafka://127.0.0.1:1")
    w = faust_app.bounded_worker(app, "info", 30.0, lambda: fired.append("timeout"))
    try:
        w._schedule_shutdown(15)
        timer = w._stop_timer
        assert timer is not None and timer.daemon and timer.interval == 30.0
        w._schedule_shutdown(15)
        assert w._stop_timer is timer  # one timer, however many signals
    finally:
        w._stop_timer.cancel()
    assert calls == [15, 15] and fired == [] and w.spinner is None


def test_offsets_going_backwards_in_a_fetch_are_named() -> None:
    recs = [SimpleNamespace(offset=o) for o in (5, 6, 6)]
    with pytest.raises(OffsetWentBackwards, match=r"t\[2\]: offset 6 came after 6"):
        check_order("t", 2, recs)
    check_order("t", 2, recs[:2])


class FakeBase:
    """Just the consumer state the batch consumer's own methods touch."""

    def __init__(self, commit_ok: bool = True) -> None:
        self._acked: defaultdict[TP, list[int]] = defaultdict(list)
        self._committed_offset: defaultdict[TP, int | None] = defaultdict(lambda: None)
        self._unacked_messages: set[Any] = set()
        self._waiting_for_ack = None
        self.commit_ok = commit_ok
        self.seen_unacked: list[int] = []

    async def _commit_offsets(self, offsets: Any, start_new_transaction: bool = True) -> bool:
        self._committed_offset.update(offsets)  # as Faust: whatever the outcome
        return self.commit_ok


def consumer(route: BatchPipeline, **kw: Any) -> Any:
    return batch_consumer_class(FakeBase, route)(**kw)  # type: ignore[arg-type]


def route_with(handler: Any, fatal: list[BaseException] | None = None) -> BatchPipeline:
    lifecycle = PartitionLifecycle(clock=lambda: 0.0)
    lifecycle.assigned([0, 1])
    return BatchPipeline("t", handler, lifecycle, (fatal if fatal is not None else []).append)


def fetch(**parts: list[int]) -> Fetch:
    return Fetch("t", {int(p[1:]): [SimpleNamespace(offset=o) for o in offs] for p, offs in parts.items()}, 1)


def test_a_processed_fetch_moves_the_commit_position_and_counts_as_unacked_meanwhile() -> None:
    holder: dict[str, Any] = {}

    async def handler(f: Fetch) -> None:
        holder["unacked"] = len(holder["c"]._unacked_messages)

    route = route_with(handler)
    c = holder["c"] = consumer(route)
    asyncio.run(c._run_batch(fetch(p0=[3, 4, 5], p1=[9])))
    assert holder["unacked"] == 1  # wait_empty would have waited for it
    assert c._unacked_messages == set()
    assert route.positions == {0: 6, 1: 10}
    assert TP("t", 0) in c._acked
    assert c._new_offset(TP("t", 0)) == 6
    c._committed_offset[TP("t", 0)] = 6
    assert c._new_offset(TP("t", 0)) is None  # nothing new to commit
    assert route.lifecycle.progress[0].processed == 6


def test_a_partition_revoked_during_the_fetch_keeps_no_position() -> None:
    route: BatchPipeline

    async def handler(f: Fetch) -> None:
        route.revoke([1])

    route = route_with(handler)
    c = consumer(route)
    asyncio.run(c._run_batch(fetch(p0=[1], p1=[2])))
    assert route.positions == {0: 2}


def test_a_cancelled_fetch_is_finished_first_then_the_cancel_goes_on() -> None:
    done: list[bool] = []

    async def handler(f: Fetch) -> None:
        await asyncio.sleep(0.1)
        done.append(True)

    route = route_with(handler)
    c = consumer(route)

    async def scenario() -> None:
        task = asyncio.ensure_future(c._run_batch(fetch(p0=[7])))
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert done == [True] and route.positions == {0: 8}


def test_a_failed_fetch_is_fatal_and_never_committed() -> None:
    fatal: list[BaseException] = []

    async def handler(f: Fetch) -> None:
        raise ConnectionError("broker gone")

    route = route_with(handler, fatal)
    c = consumer(route)
    with pytest.raises(ConnectionError):
        asyncio.run(c._run_batch(fetch(p0=[1])))
    assert len(fatal) == 1 and isinstance(fatal[0], ConnectionError)
    assert route.positions == {} and c._unacked_messages == set()


def test_the_rest_of_a_batch_runs_while_the_next_fetch_is_handled_and_positions_wait_for_it() -> None:
    log: list[str] = []
    acks: dict[int, asyncio.Event] = {}

    async def handler(f: Fetch) -> Any:
        offset = f.records[0][0].offset
        log.append(f"plan {offset}")
        acks[offset] = asyncio.Event()

        async def rest() -> None:
            await acks[offset].wait()  # the broker's acks
            log.append(f"stored {offset}")

        return rest()

    route = route_with(handler)
    c = consumer(route)

    async def scenario() -> None:
        await c._run_batch(fetch(p0=[1]))
        assert route.positions == {} and route.expected == {0: 2}  # handed over, not yet done
        assert len(c._unacked_messages) == 1  # wait_empty waits for it
        second = asyncio.ensure_future(c._run_batch(fetch(p0=[2])))
        await asyncio.sleep(0.01)
        assert log == ["plan 1", "plan 2"]  # planned while the first waits for its acks
        assert not second.done()  # its rest waits for the first's
        acks[2].set()
        await asyncio.sleep(0.01)
        assert log == ["plan 1", "plan 2"]  # in order: the second's rest has not run
        acks[1].set()
        await second
        await c.journey_route.finish_inflight()
        assert log == ["plan 1", "plan 2", "stored 1", "stored 2"]
        assert route.positions == {0: 3} and c._unacked_messages == set()

    asyncio.run(scenario())


def test_a_failed_rest_is_fatal_never_committed_and_stops_the_next_fetch() -> None:
    fatal: list[BaseException] = []
    planned: list[int] = []

    async def handler(f: Fetch) -> Any:
        planned.append(f.records[0][0].offset)

        async def rest() -> None:
            raise ConnectionError("broker gone")

        return rest()

    route = route_with(handler, fatal)
    c = consumer(route)

    async def scenario() -> None:
        await c._run_batch(fetch(p0=[1]))
        with pytest.raises(ConnectionError):
            await c._run_batch(fetch(p0=[2]))

    asyncio.run(scenario())
    assert len(fatal) == 1 and isinstance(fatal[0], ConnectionError)
    assert route.positions == {} and c._unacked_messages == set()
    assert planned == [1, 2]


def test_a_failed_commit_is_not_taken_for_done() -> None:
    route = route_with(None)
    route.positions[0] = 50
    tp = TP("t", 0)
    c = consumer(route, commit_ok=False)
    c._committed_offset[tp] = 20
    assert asyncio.run(c._commit_offsets({tp: 50})) is False
    assert c._committed_offset[tp] == 20
    assert c._new_offset(tp) == 50  # the next commit tries again
    c.commit_ok = True
    assert asyncio.run(c._commit_offsets({tp: 50})) is True
    assert c._committed_offset[tp] == 50 and route.lifecycle.progress[0].committed == 50


def consumer_state(acked: list[int], committed: int | None, gaps: list[tuple[int, int]] = ()) -> Any:  # type: ignore[assignment]
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
    # What the rebalance test showed: offsets acked twice, committed 1684.
    acked = [o for o in range(1683, 1700) for _ in (0, 1)]
    state, tp = consumer_state(acked, committed=1684)
    assert consumer_module._dedup_new_offset(state, tp) == 1700  # Faust's own gave 1684
    assert state._acked[tp] == []


def test_same_answers_as_faust_without_duplicates() -> None:
    cases: list[tuple[list[int], int | None, list[tuple[int, int]], int | None, list[int]]] = [
        ([5, 6, 7, 9, 10], 5, [], 8, [9, 10]),  # stops at the gap
        ([8, 9], 5, [], None, [8, 9]),  # a head gap: nothing to commit
        ([6, 7, 13], 5, [(8, 12)], 12, [13]),  # a known gap inside the acked range is filled in
        ([3, 4], None, [], 5, []),  # nothing committed yet
    ]
    for acked, committed, gaps, want, left in cases:
        ours, tp = consumer_state(acked, committed, gaps)
        theirs, _ = consumer_state(acked, committed, gaps)
        assert (
            consumer_module._dedup_new_offset(ours, tp)
            == consumer_module.faust_new_offset(theirs, tp)
            == want
        )
        assert ours._acked[tp] == theirs._acked[tp] == left


class FakeDrainBase(FakeBase):
    """Enough of Faust's consumer to run the batch drain loop over scripted fetches.

    Each script step runs while "the consumer thread fetches" (it may
    rebalance) and returns the records the fetch brings back."""

    consumer_stopped_errors = (ConnectionError,)

    def __init__(self, steps: list[Any], route: BatchPipeline) -> None:
        super().__init__()
        self._stopped = asyncio.Event()
        self.app = SimpleNamespace(
            consumer_generation_id=1,
            monitor=SimpleNamespace(track_tp_end_offset=lambda tp, end: None),
        )
        self.transport = SimpleNamespace(app=SimpleNamespace(should_stop=False))
        self.should_stop = False
        self.flow_active = True
        self._buffered_partitions: set[TP] = set()
        self.assigned = {TP("t", 0), TP("t", 1)}
        self.steps = steps
        self.route = route
        self.seeks = 0
        self.sought: list[tuple[int, int]] = []

    def assignment(self) -> set[TP]:
        return self.assigned

    def highwater(self, tp: TP) -> int:
        return 1000

    async def perform_seek(self) -> None:
        self.seeks += 1

    async def seek(self, tp: TP, offset: int) -> None:
        self.sought.append((tp.partition, offset))

    async def _wait_next_records(self, timeout: float) -> tuple[dict[TP, list[Any]], None]:
        if not self.steps:
            self._stopped.set()
            return {}, None
        records = self.steps.pop(0)(self)
        return records, None


def recs(*offsets: int) -> list[Any]:
    return [SimpleNamespace(offset=o) for o in offsets]


def drain(steps: list[Any]) -> tuple[Any, list[Fetch]]:
    handled: list[Fetch] = []

    async def handler(f: Fetch) -> None:
        handled.append(f)

    route = route_with(handler)
    c = batch_consumer_class(FakeDrainBase, route)(steps, route)  # type: ignore[arg-type]
    asyncio.run(c._drain_messages(SimpleNamespace(_stopped=asyncio.Event())))
    return c, handled


def test_a_fetch_that_a_rebalance_overtook_is_dropped_and_the_consumer_seeks_back() -> None:
    def plain(c: Any) -> dict[TP, list[Any]]:
        return {TP("t", 0): recs(0, 1)}

    def rebalanced_meanwhile(c: Any) -> dict[TP, list[Any]]:
        # p1 goes to another worker and comes back, under a new generation,
        # while records fetched from the old position are on their way.
        c.route.revoke([1])
        c.app.consumer_generation_id = 2
        return {TP("t", 1): recs(500, 501)}

    def revoked_same_generation(c: Any) -> dict[TP, list[Any]]:
        c.route.revoke([0])
        return {TP("t", 0): recs(2, 3)}

    def unassigned(c: Any) -> dict[TP, list[Any]]:
        c.assigned = {TP("t", 0)}
        return {TP("t", 1): recs(9)}

    c, handled = drain([plain, rebalanced_meanwhile, revoked_same_generation, unassigned, plain])
    assert [dict(f.records) for f in handled] == [{0: recs(0, 1)}, {0: recs(0, 1)}]
    assert c.seeks == 3
    assert 1 not in c.route.positions  # nothing of the overtaken fetch committed
    # Without the check the stale p1 records would have set a position of 502.


class FakeDeliverBase(FakeDrainBase):
    """Faust's per-message path for other topics (changelogs), recorded."""

    def __init__(self, steps: list[Any], route: BatchPipeline) -> None:
        super().__init__(steps, route)
        self.app.topics = SimpleNamespace(acks_enabled_for=lambda topic: False)
        self._read_offset: dict[TP, int | None] = defaultdict(lambda: None)
        self.suspend_flow = asyncio.Event()
        self.delivered: list[tuple[str, int, int]] = []

    def _to_message(self, tp: TP, rec: Any) -> Any:
        return SimpleNamespace(topic=tp.topic, partition=tp.partition, offset=rec.offset)

    async def callback(self, message: Any) -> None:
        self.delivered.append((message.topic, message.partition, message.offset))

    async def wait_first(self, *coros: Any) -> None:
        await coros[0]
        coros[1].close()


def test_changelog_records_fetched_after_a_rebalance_reach_recovery() -> None:
    """The fetch waits out a rebalance (flow stopped), then brings the changelog
    records recovery sought to: they are delivered, as Faust delivers them.
    Dropped, recovery waits for ever for records the position has passed."""

    def rebalance_then_changelog(c: Any) -> dict[TP, list[Any]]:
        c.app.consumer_generation_id = 2  # assigned while the fetch waited for the flow
        return {TP("changelog", 3): recs(0, 1, 2)}

    def more_changelog(c: Any) -> dict[TP, list[Any]]:
        return {TP("changelog", 3): recs(3)}

    route = route_with(lambda f: asyncio.sleep(0))
    c = batch_consumer_class(FakeDeliverBase, route)(  # type: ignore[arg-type]
        [rebalance_then_changelog, more_changelog], route
    )
    asyncio.run(c._drain_messages(SimpleNamespace(_stopped=asyncio.Event())))
    assert c.delivered == [("changelog", 3, 0), ("changelog", 3, 1), ("changelog", 3, 2), ("changelog", 3, 3)]


def test_a_fetch_carries_the_revocations_seen_before_it_was_asked_for() -> None:
    def plain(c: Any) -> dict[TP, list[Any]]:
        return {TP("t", 0): recs(4)}

    c, handled = drain([plain])
    assert handled[0].epochs == {0: 0} and c.route.positions == {0: 5} and c.seeks == 0


class FakeRevokeBase(FakeBase):
    """Faust's revocation and wait_empty as they behave while the app stops:
    neither waits for anything."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        self.events.append("revoked")

    async def wait_empty(self) -> None:
        self.events.append("wait_empty")


@pytest.mark.parametrize("call", ["revoke", "wait_empty"])
@pytest.mark.parametrize("where", ["handler", "rest"])
def test_no_revocation_or_stop_goes_ahead_of_the_batch_in_hand(call: str, where: str) -> None:
    events: list[str] = []

    async def write() -> None:
        await asyncio.sleep(0.05)
        events.append("batch written")

    async def handler(f: Fetch) -> Any:
        if where == "rest":  # the part that waits for the broker's acks
            return write()
        await write()
        return None

    route = route_with(handler)
    c = batch_consumer_class(FakeRevokeBase, route)()  # type: ignore[arg-type]
    c.events = events

    async def scenario() -> None:
        batch = asyncio.ensure_future(c._run_batch(fetch(p0=[5])))
        await asyncio.sleep(0.01)  # the batch is being written
        if call == "revoke":
            await c.on_partitions_revoked({TP("t", 0)})
        else:
            await c.wait_empty()
        await batch

    asyncio.run(scenario())
    assert events == ["batch written", "revoked" if call == "revoke" else "wait_empty"]
    assert route.inflight is None


def test_a_fetch_that_starts_past_the_expected_offset_is_not_processed_until_the_log_confirms_the_gap() -> (
    None
):
    def first(c: Any) -> dict[TP, list[Any]]:
        return {TP("t", 0): recs(0, 1)}

    def skips_ahead(c: Any) -> dict[TP, list[Any]]:
        return {TP("t", 0): recs(5, 6), TP("t", 1): recs(0)}

    def then_from_the_expected_offset(c: Any) -> dict[TP, list[Any]]:
        return {TP("t", 0): recs(2, 3)}

    def a_real_gap(c: Any) -> dict[TP, list[Any]]:
        return {TP("t", 0): recs(9)}  # offsets 4-8 are transaction markers, say

    c, handled = drain([first, skips_ahead, then_from_the_expected_offset, a_real_gap, a_real_gap])
    offsets = [{p: [r.offset for r in rs] for p, rs in f.records.items()} for f in handled]
    assert offsets == [{0: [0, 1]}, {1: [0]}, {0: [2, 3]}, {0: [9]}]
    assert c.sought == [(0, 2), (0, 4)]
    assert c.route.positions[0] == 10


def test_after_a_seek_with_nothing_committed_processing_continues_at_the_start_of_the_log() -> None:
    """The soak's loss: a rebalance before the group's first commit left the
    consumer ahead of what was processed; that fetch must not be processed."""
    handled: list[Fetch] = []

    async def handler(f: Fetch) -> None:
        handled.append(f)

    route = route_with(handler)
    steps = [lambda c: {TP("t", 1): recs(1048, 1049)}, lambda c: {TP("t", 1): recs(0, 1)}]
    c = batch_consumer_class(FakeDrainBase, route)(steps, route)  # type: ignore[arg-type]
    c._committed_offset[TP("t", 0)] = 7

    async def scenario() -> None:
        await c.perform_seek()
        assert route.expected == {0: 7, 1: 0}
        await c._drain_messages(SimpleNamespace(_stopped=asyncio.Event()))

    asyncio.run(scenario())
    assert c.sought == [(1, 0)]
    assert [[r.offset for r in f.records[1]] for f in handled] == [[0, 1]]
