"""Records collected per partition and produced as whole aiokafka batches.

Faust produces one message at a time: a ``FutureMessage``, an awaited
``AIOKafkaProducer.send`` and a callback per record. A batch of the worker
writes hundreds of transitions and changelog records; appending them to one
``BatchBuilder`` per partition and sending each builder once costs a
fraction of that, and gives one future per batch to wait on before the
source offsets may be committed.

Parts that produce are given a :data:`NewBatches` (a factory) when the
worker is built (``stream.worker``); tests pass their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

from stream.errors import RecordTooLarge

Headers = Sequence[tuple[str, bytes]]


class PartitionBatches:
    """Collects records per (topic, partition); :meth:`send` produces and waits,
    :meth:`start` produces and leaves the wait to the caller."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer
        self._builders: dict[tuple[str, int], list[Any]] = {}
        self.records = 0

    def add(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: Headers = (),
        timestamp: int | None = None,
    ) -> None:
        """One record; ``timestamp`` (epoch ms) None: the producer's clock."""
        builders = self._builders.setdefault((topic, partition), [])
        if (
            not builders
            or builders[-1].append(timestamp=timestamp, key=key, value=value, headers=list(headers)) is None
        ):
            builder = self._producer.create_batch()
            if builder.append(timestamp=timestamp, key=key, value=value, headers=list(headers)) is None:
                raise RecordTooLarge(
                    f"a record for {topic}[{partition}] is larger than the producer's batch size"
                )
            builders.append(builder)
        self.records += 1

    async def send(self) -> dict[tuple[str, int], int]:
        """Produce every batch and wait for the broker's acks (:meth:`start`, then :meth:`Sent.acked`)."""
        return await (await self.start()).acked()

    async def start(self) -> Sent:
        """Hand every batch to the producer; the acks come later (:meth:`Sent.acked`).

        The caller may do work that needs no ack meanwhile. It must not act
        on the records as written (ack their source events, say) before
        :meth:`Sent.acked` returns.
        """
        pending: list[tuple[tuple[str, int], int, asyncio.Future[Any]]] = []
        for (topic, partition), builders in self._builders.items():
            for builder in builders:
                count = builder.record_count()
                fut = await self._producer.send_batch(builder, topic, partition=partition)
                pending.append(((topic, partition), count, fut))
        self._builders.clear()
        if pending:
            # Let the producer's sender task run now rather than at the
            # caller's next await: it wakes on the new batches, then starts a
            # produce task, which writes the request (three loop turns). The
            # caller's work meanwhile then overlaps the broker's, not precedes it.
            for _ in range(3):
                await asyncio.sleep(0)
        return Sent(pending)


class Sent:
    """Batches handed to the producer, their acks still to come."""

    def __init__(self, pending: list[tuple[tuple[str, int], int, asyncio.Future[Any]]]) -> None:
        self._pending = pending

    async def acked(self) -> dict[tuple[str, int], int]:
        """Wait for the broker's acks; the offset of the last record written per (topic, partition).

        Raises if any batch fails: the caller must not ack its source events.
        """
        last: dict[tuple[str, int], int] = {}
        if self._pending:
            results = await asyncio.gather(*(fut for _, _, fut in self._pending))
            for (tp, count, _), meta in zip(self._pending, results, strict=True):
                end = meta.offset + count - 1
                if end > last.get(tp, -1):
                    last[tp] = end
        return last


# What producing parts are given: a new, empty set of batches per use.
NewBatches = Callable[[], PartitionBatches]
