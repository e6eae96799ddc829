"""The erasure ledger and the dispatcher's erasures, without a broker or Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from agents.erasures import ErasureLedger, decode_ledger, encode_ledger, ledger_key
from agents.nudges import NudgeDispatcher
from models import load_map
from models.outputs import Nudge
from stream.engine.lifecycle import PartitionLifecycle
from stream.engine.metrics import TrackerMetrics
from stream.redis.gate import Claim, GateDown
from stream.settings import Settings

MAP = load_map()
NOW = 1_795_503_600_000


def test_the_ledger_round_trips_through_the_table_and_forgets_what_is_done() -> None:
    table: dict[bytes, bytes | None] = {}
    ledger = ErasureLedger(lambda p, k: table.get(k))
    ledger.on_partition_recovered(3)
    ledger.add(3, "a", 10)
    ledger.add(3, "b", 11)
    ledger.add(5, "c", 12)  # not owned: its owner keeps it
    writes = list(ledger.writes())
    assert writes == [(3, ledger_key(3), encode_ledger({"a": 10, "b": 11}))]
    assert list(ledger.writes()) == []  # written once
    table[ledger_key(3)] = writes[0][2]
    # A new owner (after a crash or a revoke) reads what is owed.
    other = ErasureLedger(lambda p, k: table.get(k))
    other.on_partition_recovered(3)
    assert sorted(other.owed()) == [(3, "a", 10), (3, "b", 11)]
    other.add(3, "a", 20)  # erased again meanwhile: the later one stays owed
    other.done([(3, "a", 10), (3, "b", 11)])
    assert other.owed() == [(3, "a", 20)]
    other.done([(3, "a", 20)])
    assert list(other.writes()) == [(3, ledger_key(3), None)]  # empty: a tombstone
    other.on_partition_revoked(3)
    assert len(other) == 0 and decode_ledger(None) == {}


def nudge(cid: str, nid: str) -> Nudge:
    return Nudge(nid, cid, "cart_reminder", "email", "cart", "stall", {}, NOW, False, 3600)


class Gate:
    """A gate whose claims wait until released (Redis slow to answer)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.decided: set[str] = set()
        self.forgotten: list[list[str]] = []
        self.done: list[Any] = []
        self.down = False

    async def claim_many(self, requests: list[Any]) -> list[Claim]:
        """Each nudge id decided once, as the real gate's script does."""
        await self.release.wait()
        out = [Claim("sent", r.nudge_id not in self.decided) for r in requests]
        self.decided.update(r.nudge_id for r in requests)
        return out

    async def done_many(self, items: list[Any]) -> None:
        self.done.extend(items)

    async def forget_customers(self, customers: list[str]) -> None:
        if self.down:
            raise GateDown("redis: down")
        self.forgotten.append(customers)


class Batches:
    """Output batches that keep the nudges produced (not their delivery records)."""

    def __init__(self, out: list[tuple[str, bytes | None]]) -> None:
        self.out = out

    def add(self, topic: str, partition: int, key: bytes | None, value: bytes | None, *rest: Any) -> None:
        if topic != Settings().touchpoints_topic:
            self.out.append((topic, key))

    async def send(self) -> dict[Any, int]:
        return {}


@pytest.fixture
def sent() -> list[tuple[str, bytes | None]]:
    return []


def dispatcher(gate: Gate, sent: list[tuple[str, bytes | None]]) -> NudgeDispatcher:
    metrics = TrackerMetrics.create(CollectorRegistry(), PartitionLifecycle())
    return NudgeDispatcher(
        Settings(),
        MAP,
        gate,  # type: ignore[arg-type]
        lambda: Batches(sent),  # type: ignore[arg-type,return-value]
        metrics,
        lambda: NOW,
    )


def test_a_customer_erased_while_redis_decides_gets_no_nudge_and_no_error(
    sent: list[tuple[str, bytes | None]],
) -> None:
    async def run() -> None:
        gate = Gate()
        d = dispatcher(gate, sent)
        d.ledger = ErasureLedger(lambda p, k: None)
        d.ledger.on_partition_recovered(0)
        d.submit(0, nudge("gone", "n1"))
        d.submit(0, nudge("kept", "n2"))
        flushing = asyncio.ensure_future(d.flush())
        await asyncio.sleep(0)  # the flush waits for Redis's decisions
        d.forget("gone")  # the batch applying the erasure
        d.ledger.add(0, "gone", 7)
        erasing = asyncio.ensure_future(d.flush(from_batch=False))
        gate.release.set()
        await flushing
        await erasing
        assert [k for _, k in sent] == [b"kept"]  # the erased customer's nudge never goes out
        assert gate.forgotten == [["gone"]]  # after the flush that decided it (the lock)
        assert d.ledger.owed() == []

    asyncio.run(run())


def test_owed_deletes_stay_owed_while_redis_is_down(sent: list[tuple[str, bytes | None]]) -> None:
    async def run() -> None:
        gate = Gate()
        gate.down = True
        gate.release.set()
        d = dispatcher(gate, sent)
        d.ledger = ErasureLedger(lambda p, k: None)
        d.ledger.on_partition_recovered(0)
        d.ledger.add(0, "gone", 7)
        await d.flush()
        assert d.ledger.owed() == [(0, "gone", 7)] and not d.gate_up
        gate.down = False
        await d.flush()
        assert d.ledger.owed() == [] and d.gate_up and gate.forgotten == [["gone"]]

    asyncio.run(run())


def test_a_full_outbox_spills_to_the_table_and_is_refilled_by_a_rescan(
    sent: list[tuple[str, bytes | None]],
) -> None:
    """Nothing is evicted: past the bound a nudge stays in the table, its
    partition is marked, counted, the worker unready; once the outbox has
    room the partition's stored open nudges come back."""
    from types import SimpleNamespace

    async def run() -> None:
        gate = Gate()
        gate.release.set()
        d = dispatcher(gate, sent)
        d.max_pending = 4
        d.on_partition_recovered(0)
        stored = [nudge(f"c{i}", f"n{i}") for i in range(10)]
        for n in stored:
            d.submit(0, n)
        assert len(d) == 4 and d.spilled == {0}
        assert d.unready_because() is not None
        assert d._metrics.outbox_spills._value.get() == 6  # type: ignore[attr-defined]
        # The table has every customer's open nudge; a rescan puts them back.
        d.scan = lambda p: [SimpleNamespace(nudges=(n,), nudge=n) for n in stored]  # type: ignore[misc]

        def resubmit(partition: int, state: Any, now: int) -> None:
            d.submit(partition, state.nudge)

        d.resubmit_open = resubmit  # type: ignore[method-assign]
        for _ in range(5):
            await d.flush()
        assert sorted(k for _, k in sent) == sorted(f"c{i}".encode() for i in range(10))
        assert d.spilled == set() and d.unready_because() is None and len(d) == 0

    asyncio.run(run())
