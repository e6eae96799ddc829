"""The Faust app, and what the worker asks of it.

:func:`create_app` builds the app from settings (no agents: the batch path
is installed by ``stream.faust.consumer``). The rest reads Faust's state for
the worker: the partitions it actively owns, who owns a table partition (for
forwarding a request), the topics the cluster has, the aiokafka producer
under Faust's producer service, and a worker that stops in bounded time.

All keys and values are raw bytes: the tracker encodes with orjson itself
(``stream.engine.codec``), which is cheaper than Faust's codecs and keeps
table keys identical before and after a changelog recovery.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import faust
from aiokafka import AIOKafkaProducer
from faust.types import TP

from stream.engine.recovery import RecoveryProgress
from stream.settings import Settings

log = logging.getLogger(__name__)


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
        table_standby_replicas=settings.standby_replicas,
        processing_guarantee=settings.processing_guarantee,
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        # One fetch is one batch: at most this many records per poll.
        broker_max_poll_records=settings.batch_size,
        producer_acks=-1,
        # The agent appends whole batches (stream/engine/batching.py): room for a
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


def recovery_positions(app: faust.App, changelog_topic: str) -> dict[int, tuple[int, int]]:
    """(offset applied, last offset) of each partition of ``changelog_topic``
    that Faust's recovery is reading for an active assignment; empty when no
    recovery runs. Read from ``Recovery.active_stats()`` (faust 0.15)."""
    recovery = app.tables.recovery  # type: ignore[attr-defined]  # the TableManager has it; its type does not say so
    if not recovery.in_recovery:
        return {}
    return {
        tp.partition: (stats.offset, stats.highwater)
        for tp, stats in recovery.active_stats().items()
        if tp.topic == changelog_topic and stats.remaining > 0
    }


def watch_recovery(
    app: faust.App,
    table: Any,
    changelog_topic: str,
    recovery: RecoveryProgress,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Feed ``recovery`` from Faust: at each assignment the changelog offset
    the table's local store holds per active partition (its persisted offset,
    -1 for none), every second the positions of a running recovery, and at
    the rebalance's end the offset each recovery reached."""

    # Only watching: whatever goes wrong here is logged and never stops the worker.
    async def assigned(app: faust.App, *args: Any, **kwargs: Any) -> None:
        try:
            now = clock()
            for p in active_partitions(app, changelog_topic):
                held = table.data.persisted_offset(TP(changelog_topic, p))
                recovery.begin(now, p, -1 if held is None else held)
        except Exception:
            log.exception("recovery progress: could not read the stored changelog offsets")

    async def done(app: faust.App, *args: Any, **kwargs: Any) -> None:
        try:
            now = clock()
            offsets = app.tables.recovery.active_offsets  # type: ignore[attr-defined]
            for p in active_partitions(app, changelog_topic):
                recovery.finish(now, p, offsets.get(TP(changelog_topic, p)))
        except Exception:
            log.exception("recovery progress: could not read the recovered offsets")

    async def tick() -> None:
        try:
            recovery.forget(set(active_partitions(app, changelog_topic)))
            recovery.observe(clock(), recovery_positions(app, changelog_topic))
        except Exception:
            log.exception("recovery progress: could not read the recovery's positions")

    app.on_partitions_assigned.connect(assigned)  # type: ignore[arg-type]
    app.on_rebalance_complete.connect(done)  # type: ignore[arg-type]
    app.timer(1.0, name="journey.recovery")(tick)


def active_partitions(app: faust.App, topic: str) -> list[int]:
    """Partitions of ``topic`` this worker actively owns (not standby)."""
    return sorted(tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic)


def peer_urls(app: faust.App) -> list[str]:
    """The web URLs of every worker in the group (this one included), from the
    assignor's view of who holds which table partitions."""
    urls = {str(u).rstrip("/") for u in app.assignor.tables_metadata()}
    return sorted(urls)


def owner_url(app: faust.App, changelog_topic: str, partition: int) -> str | None:
    """The web URL of the worker that actively owns ``partition`` of the table
    (from the assignor's last assignment), or None if nobody is known to."""
    for url, topics in app.assignor.tables_metadata().items():
        if partition in topics.get(changelog_topic, ()):
            return str(url).rstrip("/")
    return None


async def missing_topics(app: faust.App, names: Iterable[str]) -> list[str]:
    """Those of ``names`` the cluster's metadata does not have (read afresh
    through the producer's client, on this loop)."""
    cluster = await aiokafka_producer(app).client.fetch_all_metadata()
    present = cluster.topics()
    return [n for n in names if n not in present]


def aiokafka_producer(app: faust.App) -> AIOKafkaProducer:
    """The started aiokafka producer under Faust's producer service."""
    producer: AIOKafkaProducer = app.producer._ensure_producer()  # type: ignore[attr-defined]
    return producer


def bounded_worker(
    app: faust.App,
    loglevel: str,
    stop_timeout_s: float,
    on_timeout: Callable[[], None],
    log_repeat_s: float = 10.0,
) -> Any:
    """A Faust worker that stops within ``stop_timeout_s`` of SIGTERM or SIGINT.

    Faust's graceful stop flushes the producer, commits and leaves the group;
    with the broker away each of those waits on its own timeouts, which add up
    to minutes. A daemon timer started with the stop calls
    ``on_timeout`` (which exits without committing: the batch in hand is
    replayed by the next owner) if the stop has not finished by then. Its
    root log handlers also hold back repeated warnings and errors
    (``stream.engine.repeat_log``), and the spinner is off.
    """
    from faust.worker import Worker

    from stream.engine.repeat_log import install

    class BoundedWorker(Worker):
        _stop_timer: threading.Timer | None = None

        def on_setup_root_logger(self, logger: Any, level: int) -> None:
            super().on_setup_root_logger(logger, level)
            install(log_repeat_s)

        def _schedule_shutdown(self, signal: Any) -> None:  # mode.Worker's, for SIGTERM and SIGINT
            if self._stop_timer is None:
                self._stop_timer = threading.Timer(stop_timeout_s, on_timeout)
                self._stop_timer.daemon = True
                self._stop_timer.start()
            super()._schedule_shutdown(signal)

    worker = BoundedWorker(app, loglevel=loglevel)
    disable_spinner(worker)
    return worker


def disable_spinner(worker: Any) -> None:
    """Faust's terminal spinner sets the root logger to DEBUG (so it can spin on
    every record) whenever the level is WARNING or above: every Kafka produce
    then builds a debug log record, a tenth of the worker's time when it was measured."""
    worker.spinner = None


async def log_ends(app: faust.App, topic: str, partitions: Iterable[int]) -> dict[int, int]:
    """The log end offset (high watermark) of each of ``topic``'s ``partitions``."""
    from faust.types import TP

    ends = await app.consumer.highwaters(*(TP(topic, p) for p in partitions))
    return {tp.partition: end for tp, end in ends.items() if end is not None}


def own_url(app: faust.App) -> str:
    """This worker's URL as the group knows it (Faust's canonical URL)."""
    return str(app.conf.canonical_url).rstrip("/")
