"""Kafka's default partitioner, shared by the agent, the tools and the tests.

Kafka's Java client, kafka-python and aiokafka all place a keyed message on
``murmur2(key) % partitions``. Faust routes table lookups the same way, so a
producer that partitions otherwise (librdkafka's default, for one) would split
a customer's state; the worker moves such an event to its key's partition
instead (``agents.plan.Move``).
"""

from __future__ import annotations

from functools import lru_cache

from aiokafka.partitioner import murmur2


@lru_cache(maxsize=1 << 17)
def key_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for ``key``.

    Cached: aiokafka's murmur2 is pure Python and the worker asks once per
    customer per batch.
    """
    return (murmur2(key) & 0x7FFFFFFF) % partitions
