"""The composition root: :func:`build_worker` makes every part of one worker, here and only here.

Read top to bottom, it is the data path:

1. the Faust app, the touchpoints topic and the customers table
   (``stream.faust``), the table's store, metrics and the partition lifecycle;
2. Redis: the nudge gate and the serving view (``stream.redis``);
3. the per-partition parts: the state cache, the erasure ledger, the stage
   counts, the deadline index and the nudge dispatcher;
4. the **partition listeners**, in one list, in the order they hear of a
   partition (``stream.engine.lifecycle``);
5. the touchpoints agent (``agents.touchpoints``), fed by the batch
   pipeline (``stream.engine.pipeline``) that the Faust consumer drives;
6. the timers: the clock (``agents.clock``) and the watchdog
   (``stream.engine.watchdog``);
7. the HTTP API (``stream.http``).

Every part gets what it uses through its constructor. ``journey worker``
builds one and runs it; tests build their own parts from fakes.
"""

from __future__ import annotations

import gc
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import faust
from prometheus_client import CollectorRegistry

from agents.clock import ClockTicker, wall_clock_ms
from agents.erasures import ErasureLedger
from agents.nudges import NudgeDispatcher
from agents.odds import OddsChecker
from agents.touchpoints import TouchpointsAgent, exit_on_failure
from models.effects import deadline_of
from models.journey_map import JourneyMap, load_map
from models.state import CustomerState
from stream import http
from stream.engine.batching import NewBatches, PartitionBatches
from stream.engine.codec import decode_stored
from stream.engine.deadlines import DeadlineIndex
from stream.engine.lifecycle import PartitionLifecycle, PartitionListener
from stream.engine.metrics import RecoveryCollector, TrackerMetrics
from stream.engine.pipeline import BatchPipeline
from stream.engine.recovery import RecoveryProgress
from stream.engine.stage_counts import StageCounts
from stream.engine.state_cache import StateCache
from stream.engine.watchdog import Watchdog
from stream.faust import app as faust_app
from stream.faust.consumer import install_batch_path
from stream.faust.store import TableStore
from stream.faust.version import check_faust_version
from stream.http.funnel import FIGURES_CACHE
from stream.redis.gate import NudgeGate
from stream.redis.role import GroupRole
from stream.redis.view import ServingView
from stream.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Worker:
    """Every part of one worker, as :func:`build_worker` made them (the HTTP API reads them)."""

    settings: Settings
    journey_map: JourneyMap
    app: faust.App
    store: TableStore  # the customers table's store (bytes -> stream.engine.codec values)
    registry: CollectorRegistry
    metrics: TrackerMetrics
    lifecycle: PartitionLifecycle
    stage_counts: StageCounts
    agent: TouchpointsAgent
    ticker: ClockTicker
    watchdog: Watchdog
    view: ServingView | None
    batches: NewBatches  # a new set of output batches on the worker's producer
    # Sections of /health: name -> a function returning them.
    health: dict[str, Callable[[], Any]] = field(default_factory=dict)
    role: GroupRole | None = None  # blue/green: whether this worker's group is the active one
    # Who this worker is, for its peers (GET /funnel counts each worker once by it).
    worker_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def active_partitions(self) -> list[int]:
        """Partitions of the input topic this worker actively owns (not standby)."""
        return faust_app.active_partitions(self.app, self.settings.touchpoints_topic)

    def own_url(self) -> str:
        return faust_app.own_url(self.app)


def stored(store: TableStore, partition: int) -> Iterator[tuple[int, CustomerState]]:
    """Every customer stored in one partition, decoded one at a time: (last offset applied, state)."""
    for _, raw in store.scan(partition):
        yield decode_stored(raw)


def stored_states(store: TableStore, partition: int) -> Iterator[CustomerState]:
    """Every customer's state stored in one partition (not the aliases of
    merged ids: they have no journey of their own, ``models.identity``)."""
    for _, state in stored(store, partition):
        if state.merged_into is None:
            yield state


def nudge_gate(settings: Settings, jmap: JourneyMap) -> NudgeGate:
    """The gate, its keys kept past the longest window the map's nudge rules look back."""
    rules = jmap.nudges
    longest = max(rules.max_age_s, max((p.cooldown_s for p in rules.policies), default=0))
    kinds = tuple(p.kind for p in rules.policies)
    return NudgeGate(
        settings.redis_url, settings.redis_prefix, settings.redis_timeout_s, 2 * longest + 7 * 86_400, kinds
    )


def serving_view(
    settings: Settings, metrics: TrackerMetrics, store: TableStore, clock: Callable[[], int]
) -> ServingView:
    view = ServingView(
        settings.redis_url,
        settings.view_prefix,
        settings.view_ttl_s,
        settings.redis_timeout_s,
        max_pending=settings.view_max_pending,
        retry_s=settings.view_retry_s,
        clock=clock,
        scan=partial(stored, store),
        on_written=metrics.view_writes.inc,
        on_state=lambda up: metrics.view_up.set(int(up)),
    )
    metrics.view_up.set(1)
    metrics.view_pending.set_function(lambda: len(view))
    return view


def build_worker(
    settings: Settings,
    journey_map: JourneyMap | None = None,
    *,
    clock: Callable[[], int] = wall_clock_ms,
    on_fatal: Callable[[BaseException], None] = exit_on_failure,
) -> Worker:
    """One worker for ``settings``, every part built and wired, ready to run."""
    check_faust_version()
    jmap = journey_map if journey_map is not None else load_map(settings.map_path)

    # 1. Faust, the table's store, metrics, the lifecycle.
    app = faust_app.create_app(settings)
    topic = app.topic(
        settings.touchpoints_topic,
        key_type=bytes,
        value_type=bytes,
        partitions=settings.partitions,
        replicas=settings.replication_factor,
    )
    # The consumer subscribes to the topics the conductor knows. The batch
    # path hands its records to the agent, so no Faust stream reads it. The
    # output topics are created by `journey worker` (stream.tools.kafka) and
    # written in whole batches (stream.engine.batching).
    app.topics.add(topic)
    table = app.Table(
        "customers",
        default=None,
        partitions=settings.partitions,
        key_type=bytes,
        value_type=bytes,
        help="Journey state per customer (key: customer id, value: stream.engine.codec)",
    )
    store = TableStore(table, settings.changelog_topic)
    registry = CollectorRegistry()
    lifecycle = PartitionLifecycle(stored=partial(stored_states, store))
    metrics = TrackerMetrics.create(registry, lifecycle)
    metrics.init_map(jmap)

    def batches() -> PartitionBatches:
        return PartitionBatches(faust_app.aiokafka_producer(app))

    # 2. Redis.
    gate = nudge_gate(settings, jmap)
    view = serving_view(settings, metrics, store, clock) if settings.view_ttl_s > 0 else None

    # 3. What the worker keeps per owned partition.
    states = StateCache(store.get, settings.state_cache_size)
    ledger = ErasureLedger(store.get)
    stage_counts = StageCounts.for_map(jmap)
    registry.register(stage_counts)
    deadlines = DeadlineIndex(partial(deadline_of, jmap))
    nudges = NudgeDispatcher(
        settings,
        jmap,
        gate,
        batches,
        metrics,
        clock,
        scan=partial(stored_states, store),
        ledger=ledger,
        view=view,
    )

    odds = OddsChecker(settings.touchpoints_topic, jmap, batches, metrics, clock, settings.app_id)

    # 4. The partition listeners, in the order they run: on a recovered
    # partition each hears it, then each gets every chunk of the one scan
    # of its store; on a revoked one each drops what it kept.
    listeners: list[PartitionListener] = [
        states,  # cached states of the partition go (recovery wrote the store)
        ledger,  # the Redis deletes still owed for its erasures
        stage_counts,  # its customers per stage, for the gauges and the funnel
        deadlines,  # each customer's next deadline
        nudges,  # its open nudges back into the outbox
        odds,  # the odds asked for by its customers go
    ]
    if view is not None:
        listeners.append(view)  # its marks are checked, the partition rewritten if behind
    lifecycle.listeners = listeners

    # 5. The agent, and the batch path that feeds it.
    agent = TouchpointsAgent(
        settings,
        jmap,
        store=store,
        states=states,
        batches=batches,
        metrics=metrics,
        stages=stage_counts,
        deadlines=deadlines,
        nudges=nudges,
        ledger=ledger,
        view=view,
        clock=clock,
        odds=odds,
    )
    install_batch_path(app, BatchPipeline(settings.touchpoints_topic, agent.handle, lifecycle, on_fatal))

    # Blue/green: which group is active (stream.redis.role), read each second.
    role = GroupRole(settings)
    role.listeners += [nudges.set_active, stage_counts.set_active]
    if view is not None:
        role.listeners.append(view.set_active)
    for listener in role.listeners:  # the role without the key, until the first reading
        listener(role.active)

    async def role_tick() -> None:
        await role.poll()

    app.timer(1.0, name="journey.role")(role_tick)

    # 6. Timers: the clock and the watchdog.
    ticker = ClockTicker(
        settings.touchpoints_topic,
        lifecycle,
        deadlines,
        nudges,
        batches,
        metrics,
        clock,
        settings.app_id,
        odds,
    )

    async def clock_tick() -> None:
        try:
            await ticker.tick()
        except Exception:
            log.exception("clock tick failed; the next tick tries again")
        if view is not None:
            view.kick()  # retries while Redis is down

    app.timer(settings.clock_tick_s, name="journey.clock")(clock_tick)
    watchdog = Watchdog(
        settings,
        lifecycle,
        metrics,
        active=lambda: faust_app.active_partitions(app, settings.touchpoints_topic),
        rebalancing=lambda: bool(app.rebalancing),
        read_ends=partial(faust_app.log_ends, app, settings.touchpoints_topic),
        missing_topics=partial(faust_app.missing_topics, app),
        readiness=[nudges.unready_because],
    )

    async def watchdog_tick() -> None:
        await watchdog.tick()

    app.timer(settings.watchdog_interval_s, name="journey.watchdog")(watchdog_tick)

    # Recovery you can watch: where each partition's changelog recovery began, how far it is.
    recovery = RecoveryProgress(settings.changelog_topic)
    registry.register(RecoveryCollector(recovery))
    faust_app.watch_recovery(app, table, settings.changelog_topic, recovery)

    worker = Worker(
        settings,
        jmap,
        app,
        store,
        registry,
        metrics,
        lifecycle,
        stage_counts,
        agent,
        ticker,
        watchdog,
        view,
        batches,
    )
    odds.figures = partial(FIGURES_CACHE.get, worker)  # every worker's figures, gathered at most every 15 s
    worker.health["recovery"] = recovery.to_dict
    worker.health["group"] = role.to_dict
    worker.role = role
    worker.health["memory"] = lambda: {
        "rss_bytes": resident_bytes(),
        "deadline_index": {"customers": len(deadlines), "loaded_run_bytes": deadlines.run_bytes()},
        "state_cache": {"entries": len(states), "limit": settings.state_cache_size},
    }
    worker.health["nudges"] = lambda: {
        "redis": "up" if nudges.gate_up else "down",
        "waiting": len(nudges),
        "deadlines_indexed": len(deadlines),
        "erasures_owed": len(ledger),
    }
    if view is not None:
        worker.health["view"] = lambda: {
            "redis": "up" if view.up else "down",
            "pending": len(view),
            "rewriting_partitions": sorted(view.resync),
        }

    # 7. The HTTP API.
    http.register(worker)
    return worker


def resident_bytes() -> int | None:
    """This process's resident memory (Linux's /proc), or None where there is none."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def tune_gc(threshold: int) -> None:
    """Make Python's cyclic garbage collector cheap for a worker (``JOURNEY_GC_THRESHOLD``).

    A batch allocates many short-lived objects, and the worker keeps many
    long-lived ones (the decoded-state cache, Faust and its libraries). At
    Python's default threshold of 700 the collector ran thousands of times a
    minute, and each full collection walked every cached state
    (``bench/RESULTS.md`` has the fold bench with and without). What the
    worker builds at start-up is frozen (``gc.freeze``) so no collection
    walks it again. The tracker's own data holds no reference cycles, so a
    rarer collection frees the same memory. 0 leaves Python's defaults.
    """
    if threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(threshold, gen1, gen2)
