"""The one place that reaches into Faust internals, and why.

A Faust table picks the changelog partition (and the RocksDB shard) of a
write from the *current event*, a context variable the stream sets per event.
Inside a ``take_events`` batch that is whichever event arrived last, so a
batch writing many customers must name each customer's own event first.

``Stream._set_current_event`` would do it, but it also sets
``stream.current_event``, which ``take_events`` reads to record the next
buffered event: calling it from the agent made the buffer record a stale
event in place of a new one, and that event was lost (caught by the
integration test). Setting only the context variable, from the batch's own
task (its context is a copy), changes nothing the stream reads.

The worker also produces whole batches (``stream/batching.py``) through the
aiokafka producer Faust already runs, so the same connection, acks setting
and ``flush()`` before commit cover them: :func:`aiokafka_producer` fetches
it.

``tests/stream/test_faust_compat.py`` breaks if Faust renames what this uses.
"""

from __future__ import annotations

import weakref

import faust
from aiokafka import AIOKafkaProducer
from faust.streams import _current_event, current_event
from faust.types import EventT


def use_event_for_table_writes(event: EventT) -> None:
    """Make ``event`` the current event for table writes in this task's context."""
    _current_event.set(weakref.ref(event))


def aiokafka_producer(app: faust.App) -> AIOKafkaProducer:
    """The started aiokafka producer under Faust's producer service."""
    producer: AIOKafkaProducer = app.producer._ensure_producer()  # type: ignore[attr-defined]
    return producer


__all__ = ["aiokafka_producer", "current_event", "use_event_for_table_writes"]
