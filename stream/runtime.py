"""The worker's runtime: built from settings, not at import.

:func:`build` returns one :class:`Runtime` holding the Faust app, the
customers table, the input topic, the journey map, the metrics registry and
the partition lifecycle. Agents (``agents/``) and web views
(``stream.web``) register with it; ``journey worker`` builds it, attaches
them and runs it. Tests build as many as they like.

All keys and values are raw bytes: the tracker encodes with orjson itself
(``stream.codec``), which is cheaper than Faust's codecs and keeps table keys
identical before and after a changelog recovery.
"""

from __future__ import annotations

import gc
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import faust
from prometheus_client import CollectorRegistry

from models.journey_map import JourneyMap, load_map
from models.state import CustomerState
from stream.codec import decode_stored
from stream.faust_compat import TableStore, active_partitions, check_faust_version
from stream.lifecycle import PartitionLifecycle
from stream.metrics import TrackerMetrics
from stream.settings import Settings
from stream.stage_counts import StageCounts


def create_app(settings: Settings) -> faust.App:
    """A Faust app configured from ``settings`` (no agents attached)."""
    return faust.App(
        settings.app_id,
        broker=settings.broker,
        store=settings.store,
        datadir=str(settings.data_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_disable_leader=True,
        processing_guarantee=settings.processing_guarantee,
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        # One fetch is one batch: at most this many records per poll.
        broker_max_poll_records=settings.batch_size,
        producer_acks=-1,
        # The agent appends whole batches (stream/batching.py): room for a
        # few hundred records per partition and request, under the broker's
        # 1 MiB message limit.
        producer_max_batch_size=512 * 1024,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        broker_commit_interval=settings.commit_interval_s,
        web_bind=settings.web_bind,
        web_host=settings.web_host or socket.gethostname(),
        web_port=settings.web_port,
        web_in_thread=False,
    )


@dataclass
class Runtime:
    """Everything one worker runs, built once from its settings."""

    settings: Settings
    journey_map: JourneyMap
    app: faust.App
    customers: Any  # faust Table of bytes -> bytes (stream.codec values)
    touchpoints: Any  # faust Topic
    registry: CollectorRegistry
    metrics: TrackerMetrics
    lifecycle: PartitionLifecycle
    stage_counts: StageCounts
    store: TableStore = field(init=False)
    # Sections agents add to /health: name -> a function returning them.
    health: dict[str, Callable[[], Any]] = field(default_factory=dict)
    # Checks that can make the worker unready: each returns why, or None.
    readiness: list[Callable[[], str | None]] = field(default_factory=list)
    # Who this worker is, for its peers (GET /funnel counts each worker once by it).
    worker_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        self.store = TableStore(self.customers, self.settings.changelog_topic)

    def stored(self, partition: int) -> Iterator[tuple[int, CustomerState]]:
        """Every customer stored in one partition: (last offset applied, state)."""
        for _, raw in self.store.scan(partition):
            yield decode_stored(raw)

    def active_partitions(self) -> list[int]:
        """Partitions of the input topic this worker actively owns (not standby)."""
        return active_partitions(self.app, self.settings.touchpoints_topic)


def build(settings: Settings, journey_map: JourneyMap | None = None) -> Runtime:
    """The runtime for ``settings``: app, table, topic, map, metrics and lifecycle."""
    check_faust_version()
    jmap = journey_map if journey_map is not None else load_map(settings.map_path)
    app = create_app(settings)
    registry = CollectorRegistry()
    lifecycle = PartitionLifecycle()
    touchpoints = app.topic(
        settings.touchpoints_topic,
        key_type=bytes,
        value_type=bytes,
        partitions=settings.partitions,
        replicas=settings.replication_factor,
    )
    # The consumer subscribes to the topics the conductor knows. The batch
    # path (stream.faust_compat) hands its records to the agent, so no
    # Faust stream reads it. The transitions and dead-letter topics are
    # created by `journey worker` (stream.kafka_tools.ensure_topics) and
    # written in whole batches (stream.batching).
    app.topics.add(touchpoints)
    customers = app.Table(
        "customers",
        default=None,
        partitions=settings.partitions,
        key_type=bytes,
        value_type=bytes,
        help="Journey state per customer (key: customer id, value: stream.codec)",
    )
    metrics = TrackerMetrics.create(registry, lifecycle)
    metrics.init_map(jmap)
    stage_counts = StageCounts(jmap.stage_names, [s.name for s in jmap.stages if not s.exit])
    registry.register(stage_counts)
    lifecycle.add_listener(stage_counts)
    return Runtime(settings, jmap, app, customers, touchpoints, registry, metrics, lifecycle, stage_counts)


def tune_gc(threshold: int) -> None:
    """Make Python's cyclic garbage collector cheap for a worker (``JOURNEY_GC_THRESHOLD``).

    A batch allocates many short-lived objects, and the worker keeps many
    long-lived ones (the decoded-state cache, Faust and its libraries). At
    Python's default threshold of 700 the collector ran thousands of times a
    minute, and each full collection walked every cached state: the fold
    bench ran at 39k events/s with it and 61k with a threshold of 50,000.
    What the worker builds at start-up is frozen (``gc.freeze``) so no
    collection walks it again. The tracker's own data holds no reference
    cycles, so a rarer collection frees the same memory. 0 leaves Python's
    defaults.
    """
    if threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(threshold, gen1, gen2)
