"""PartitionBatches fills real aiokafka batch builders (no broker needed to fill them)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from aiokafka.producer.message_accumulator import BatchBuilder

from stream.engine.batching import PartitionBatches


class Recorder:
    """A producer whose send_batch resolves at once with consecutive offsets."""

    def __init__(self, max_batch_size: int) -> None:
        self.max_batch_size = max_batch_size
        self.sent: list[tuple[str, int, int]] = []
        self.next_offset: dict[tuple[str, int], int] = {}

    def create_batch(self) -> Any:
        return BatchBuilder(self.max_batch_size, 0)  # 0: no compression

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        base = self.next_offset.get((topic, partition), 0)
        self.next_offset[(topic, partition)] = base + batch.record_count()
        self.sent.append((topic, partition, batch.record_count()))
        fut.set_result(type("Meta", (), {"offset": base})())
        return fut


def test_records_grouped_per_partition_and_split_when_full() -> None:
    async def scenario() -> tuple[Recorder, dict[tuple[str, int], int], int]:
        rec = Recorder(max_batch_size=1024)
        batches = PartitionBatches(rec)  # type: ignore[arg-type]
        for i in range(30):
            batches.add("t", i % 2, b"k%d" % i, b"x" * 100, [("h", b"v")])
        batches.add("u", 0, None, b"y")
        n = batches.records
        return rec, await batches.send(), n

    rec, last, n = asyncio.run(scenario())
    assert n == 31
    assert sum(c for t, _, c in rec.sent if t == "t") == 30
    assert len([s for s in rec.sent if s[:2] == ("t", 0)]) > 1  # 15 x ~110 bytes do not fit in 1 KiB
    assert last == {("t", 0): 14, ("t", 1): 14, ("u", 0): 0}


def test_a_record_larger_than_a_batch_gets_a_batch_of_its_own() -> None:
    async def scenario() -> Recorder:
        rec = Recorder(max_batch_size=256)
        batches = PartitionBatches(rec)  # type: ignore[arg-type]
        batches.add("t", 0, b"a", b"x" * 10)
        batches.add("t", 0, b"b", b"x" * 4096)
        batches.add("t", 0, b"c", b"x" * 10)
        await batches.send()
        return rec

    assert [c for _, _, c in asyncio.run(scenario()).sent] == [1, 1, 1]


def test_a_record_larger_than_a_producer_batch_is_named() -> None:
    import pytest

    from stream.engine.batching import PartitionBatches
    from stream.errors import RecordTooLarge

    class Full:
        def append(self, **kw: object) -> None:
            return None  # aiokafka's answer when the record does not fit

    producer: Any = SimpleNamespace(create_batch=Full)
    with pytest.raises(RecordTooLarge, match=r"t\[3\] is larger"):
        PartitionBatches(producer).add("t", 3, b"k", b"v" * 10)


def test_start_hands_the_batches_over_and_acked_waits_for_them() -> None:
    class Slow(Recorder):
        """Acks come only when released, as from a broker."""

        def __init__(self) -> None:
            super().__init__(max_batch_size=1024)
            self.futures: list[asyncio.Future[Any]] = []

        async def send_batch(self, batch: Any, topic: str, *, partition: int) -> asyncio.Future[Any]:
            done = await super().send_batch(batch, topic, partition=partition)
            fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self.futures.append(fut)
            fut.meta = done.result()  # type: ignore[attr-defined]
            return fut

    async def scenario() -> tuple[list[tuple[str, int, int]], bool, dict[tuple[str, int], int]]:
        rec = Slow()
        batches = PartitionBatches(rec)  # type: ignore[arg-type]
        batches.add("t", 0, b"k", b"v")
        batches.add("t", 0, b"k", b"w")
        sent = await batches.start()
        handed = list(rec.sent)  # produced before any ack
        waiting = asyncio.ensure_future(sent.acked())
        await asyncio.sleep(0)
        not_yet = not waiting.done()
        for fut in rec.futures:
            fut.set_result(fut.meta)  # type: ignore[attr-defined]
        return handed, not_yet, await waiting

    handed, not_yet, last = asyncio.run(scenario())
    assert handed == [("t", 0, 2)]
    assert not_yet  # acked() waits for the broker
    assert last == {("t", 0): 1}
