"""The batch pipeline without Faust: rests in fetch order, positions after the rest, failures fatal."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from stream.engine.lifecycle import PartitionLifecycle
from stream.engine.pipeline import BatchPipeline, BatchRest, Fetch


def fetch(**parts: list[int]) -> Fetch:
    return Fetch("t", {int(p[1:]): [SimpleNamespace(offset=o) for o in offs] for p, offs in parts.items()}, 1)


def pipeline(handler: Any, fatal: list[BaseException] | None = None) -> BatchPipeline:
    lifecycle = PartitionLifecycle()
    lifecycle.assigned([0, 1])
    return BatchPipeline("t", handler, lifecycle, (fatal if fatal is not None else []).append)


class Done:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def test_rests_run_in_fetch_order_after_the_next_first_part_and_positions_wait_for_them() -> None:
    log: list[str] = []
    gates = {1: asyncio.Event(), 2: asyncio.Event()}

    async def rest(n: int) -> None:
        await gates[n].wait()
        log.append(f"rest {n}")

    async def handler(f: Fetch) -> BatchRest:
        n = f.records[0][0].offset
        log.append(f"first {n}")
        return rest(n)

    async def run() -> None:
        pl, done = pipeline(handler), Done()
        await pl.run(fetch(p0=[1]), done)
        assert pl.positions == {} and pl.expected == {0: 2}  # handed over, its rest not done
        # The next fetch's first part runs meanwhile; its run returns once the
        # rest before it is done (so at most one rest waits).
        second = asyncio.ensure_future(pl.run(fetch(p0=[2]), done))
        await asyncio.sleep(0.01)
        assert log == ["first 1", "first 2"] and not second.done()
        gates[2].set()  # the second rest may not overtake the first
        await asyncio.sleep(0.01)
        assert log == ["first 1", "first 2"] and pl.positions == {}
        gates[1].set()
        await second
        await pl.finish_inflight()
        assert log == ["first 1", "first 2", "rest 1", "rest 2"]
        assert pl.positions == {0: 3} and done.calls == 2
        assert pl.lifecycle.progress[0].processed == 3

    asyncio.run(run())


def test_a_failed_first_part_is_fatal_and_moves_no_position() -> None:
    fatal: list[BaseException] = []

    async def handler(f: Fetch) -> BatchRest | None:
        raise RuntimeError("broker gone")

    async def run() -> None:
        pl, done = pipeline(handler, fatal), Done()
        with pytest.raises(RuntimeError):
            await pl.run(fetch(p0=[5]), done)
        assert pl.positions == {} and done.calls == 1 and [str(e) for e in fatal] == ["broker gone"]

    asyncio.run(run())


def test_a_failed_rest_is_fatal_and_the_next_rest_never_runs() -> None:
    fatal: list[BaseException] = []
    ran: list[int] = []

    async def rest(n: int) -> None:
        ran.append(n)
        if n == 1:
            raise RuntimeError("ack failed")

    async def handler(f: Fetch) -> BatchRest:
        return rest(f.records[0][0].offset)

    async def run() -> None:
        pl, done = pipeline(handler, fatal), Done()
        await pl.run(fetch(p0=[1]), done)
        with pytest.raises(RuntimeError, match="ack failed"):
            await pl.run(fetch(p0=[2]), done)
        await pl.finish_inflight()
        assert ran == [1] and pl.positions == {} and done.calls == 2
        assert [str(e) for e in fatal] == ["ack failed"]

    asyncio.run(run())


def test_a_partition_revoked_before_its_rest_is_done_keeps_no_position() -> None:
    gate = asyncio.Event()

    async def rest() -> None:
        await gate.wait()

    async def handler(f: Fetch) -> BatchRest:
        return rest()

    async def run() -> None:
        pl, done = pipeline(handler), Done()
        await pl.run(fetch(p0=[4], p1=[9]), done)
        pl.revoke([1])
        gate.set()
        await pl.finish_inflight()
        assert pl.positions == {0: 5}  # 1's next owner replays from the committed offset

    asyncio.run(run())


def test_a_fetch_past_the_expected_offset_is_refused_until_the_same_gap_comes_again() -> None:
    pl = pipeline(None)
    pl.sought(0, 10)
    assert pl.contiguous(0, 10) and pl.contiguous(0, 8)  # at or before it: replays are skipped later
    assert not pl.contiguous(0, 12)  # records 10 and 11 would be committed unread
    assert pl.contiguous(0, 12)  # the log really has the gap (transaction markers)
    pl.sought(1, None)
    assert pl.expected[1] == 0  # nothing committed: the start of the log
