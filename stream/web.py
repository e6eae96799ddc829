"""The worker's web views and its watchdog, registered on a runtime.

Web views (port ``JOURNEY_WEB_PORT``, 6066 by default):

* ``GET /customers/{customer_id}``: the customer's state, from whichever
  worker owns the customer's partition (forwarded there once, signed by
  this worker, never with the client's credentials: ``stream.peers``);
  404 for a customer never seen, 503 while no worker owns it.
* ``GET /health``: 200 once the worker owns partitions, is not rebalancing
  and none of them is stalled; 503 otherwise. The body has, per owned
  partition, the fetch position, the processed and committed offsets, the
  log end, the lag and how long since it last made progress.
* ``GET /metrics``: Prometheus text format.

The watchdog (every ``JOURNEY_WATCHDOG_INTERVAL_S``) reads the log end of
every owned partition, so a partition that fetches nothing is seen too. A
partition with lag and no progress, or with processed records not committed,
for longer than ``JOURNEY_STALL_UNREADY_S`` makes the worker unready, is
logged and counted; past ``JOURNEY_STALL_EXIT_S`` the worker exits with
status 75 so that its supervisor restarts it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import aiohttp
from faust.types import TP
from faust.web import Request, Response, View
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from models.events import id_problem
from stream.codec import decode_stored
from stream.faust_compat import missing_topics, owner_url
from stream.lifecycle import Report
from stream.partitioning import key_partition
from stream.peers import FORWARDED_HEADER, peer_headers
from stream.runtime import Runtime

log = logging.getLogger(__name__)

EXIT_STALLED = 75  # EX_TEMPFAIL: a supervisor should start the worker again
EXIT_STOP_TIMEOUT = 75  # a stop that did not finish in JOURNEY_STOP_TIMEOUT_S: nothing more committed
EXIT_TOPICS_GONE = 69  # EX_UNAVAILABLE: the tracker's topics are gone from the cluster
# Checks in a row that must find a topic missing before the worker exits
# (one reading of metadata in the middle of a topic's creation can miss it).
TOPICS_GONE_CHECKS = 2


def stop_timed_out(timeout_s: float, exit: Any = os._exit) -> Any:
    """What the worker does when a stop has not finished in ``timeout_s``."""

    def on_timeout() -> None:
        log.critical(
            "the worker did not stop within %g s (JOURNEY_STOP_TIMEOUT_S): exiting now; what was in hand "
            "is not committed and the next owner replays it",
            timeout_s,
        )
        logging.shutdown()
        exit(EXIT_STOP_TIMEOUT)

    return on_timeout


class Watchdog:
    """Turns the lifecycle's progress into readiness, log lines, counts and, at worst, an exit."""

    def __init__(self, rt: Runtime, exit: Any = os._exit) -> None:
        self.rt = rt
        self.report = Report({}, 0.0)
        self._exit = exit
        self.missing_topics: list[str] = []
        self._missing_checks = 0

    async def check_topics(self) -> None:
        """Exit (after saying so once) when the tracker's topics are gone from
        the cluster: a mistaken deletion, a wiped broker. Without them the
        worker would idle unready for ever, or log an error per record."""
        s = self.rt.settings
        names = [s.touchpoints_topic, s.changelog_topic]
        try:
            missing = await asyncio.wait_for(
                missing_topics(self.rt.app, names), timeout=s.watchdog_interval_s
            )
        except Exception as exc:  # the broker away: that is the stall watchdog's to judge
            log.debug("watchdog: could not read the cluster's topics: %r", exc)
            return
        self._missing_checks = self._missing_checks + 1 if missing else 0
        self.missing_topics = missing
        if missing and self._missing_checks >= TOPICS_GONE_CHECKS:
            self.rt.metrics.ready.set(0)
            log.critical(
                "the tracker's topics %s are gone from the cluster (deleted, or the broker's data wiped): "
                "exiting with status %d for the supervisor; the restart creates them again",
                missing,
                EXIT_TOPICS_GONE,
            )
            logging.shutdown()
            self._exit(EXIT_TOPICS_GONE)

    async def read_ends(self) -> None:
        rt = self.rt
        owned = rt.lifecycle.owned
        if not owned or rt.app.rebalancing:
            return
        topic = rt.settings.touchpoints_topic
        try:
            ends = await asyncio.wait_for(
                rt.app.consumer.highwaters(*(TP(topic, p) for p in owned)),
                timeout=rt.settings.watchdog_interval_s,
            )
        except Exception as exc:  # the broker away: judge on what is known
            log.info("watchdog: could not read log end offsets: %r", exc)
            return
        rt.lifecycle.ends({tp.partition: end for tp, end in ends.items() if end is not None})

    def check(self) -> Report:
        rt, s = self.rt, self.rt.settings
        report = rt.lifecycle.report(s.stall_unready_s)
        self.report = report
        for p in rt.lifecycle.newly_stalled(report):
            problem = report.partitions[p]
            rt.metrics.partition_problems.labels(problem).inc()
            log.error(
                "partition %s[%d] is %s: %s",
                s.touchpoints_topic,
                p,
                problem,
                rt.lifecycle.describe(s.stall_unready_s)[str(p)],
            )
        rt.metrics.ready.set(1 if self.ready() else 0)
        if report.problems and report.worst_idle_s > s.stall_exit_s:
            log.critical(
                "partitions %s made no progress for %.0f s (JOURNEY_STALL_EXIT_S=%g): exiting for a restart",
                sorted(report.problems),
                report.worst_idle_s,
                s.stall_exit_s,
            )
            logging.shutdown()
            self._exit(EXIT_STALLED)
        return report

    async def tick(self) -> None:
        await self.check_topics()
        await self.read_ends()
        self.check()

    def ready(self) -> bool:
        rt = self.rt
        return (
            bool(rt.active_partitions())
            and not rt.app.rebalancing
            and not self.report.problems
            and not self.missing_topics
            and not self.unready_because()
        )

    def unready_because(self) -> list[str]:
        """What the worker's parts say keeps it unready (a spilled nudge outbox...)."""
        return [why for check in self.rt.readiness if (why := check()) is not None]


async def forward_to_owner(rt: Runtime, view: View, request: Request, partition: int) -> Response:
    """The owning worker's answer to ``request``, forwarded once, without the
    client's credentials (``stream.peers``); 503 while nobody (else) owns it."""
    unavailable = {
        "error": "unavailable",
        "detail": "the customer's partition has no owner now (rebalancing)",
    }
    retry = {"Retry-After": "2"}
    if request.headers.get(FORWARDED_HEADER) is not None:  # forwarded to us already: never again
        return view.json(unavailable, status=503, headers=retry)
    try:
        url = owner_url(rt.app, rt.settings.changelog_topic, partition)
    except Exception as exc:  # the assignor mid-rebalance, topics gone...
        log.info("no owner known for partition %d: %r", partition, exc)
        url = None
    if url is None or url == own_url(rt):
        return view.json(unavailable, status=503, headers=retry)
    path = request.path_qs  # type: ignore[attr-defined]
    headers = peer_headers(rt.settings.token, "GET", path, int(time.time() * 1000))
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
            session.get(f"{url}{path}", headers=headers, allow_redirects=False) as resp,
        ):
            body = await resp.read()
            return view.bytes(body, content_type=resp.content_type, status=resp.status)
    except Exception as exc:
        log.info("forwarding to the owner %s failed: %r", url, exc)
        return view.json(
            {"error": "unavailable", "detail": "the customer's owner did not answer"},
            status=503,
            headers=retry,
        )


def own_url(rt: Runtime) -> str:
    """This worker's URL as the group knows it (Faust's canonical URL)."""
    return str(rt.app.conf.canonical_url).rstrip("/")


def register(rt: Runtime) -> Watchdog:
    """Register the web views and the watchdog timer on ``rt.app``."""
    app, settings = rt.app, rt.settings
    watchdog = Watchdog(rt)

    @app.timer(settings.watchdog_interval_s)
    async def _watchdog() -> None:
        await watchdog.tick()

    @app.page("/customers/{customer_id}")
    class CustomerView(View):
        """One customer's journey state, from the worker that owns it."""

        async def get(self, request: Request, customer_id: str) -> Response:
            problem = id_problem(customer_id, "customer_id")
            if problem is not None:
                return self.json({"error": "bad_customer_id", "detail": problem}, status=400)
            key = customer_id.encode()
            partition = key_partition(key, settings.partitions)
            if partition not in rt.active_partitions():
                return await forward_to_owner(rt, self, request, partition)
            raw = rt.store.get(partition, key)
            if raw is None:
                return self.json({"error": "unknown customer", "customer_id": customer_id}, status=404)
            _, state = decode_stored(raw)
            return self.json(state.to_api())

        async def delete(self, request: Request, customer_id: str) -> Response:
            """Erase the customer (stream.api.erase); any worker takes it."""
            from stream.api import erase

            status, body, headers = await erase(rt, customer_id)
            return self.json(body, status=status, headers=headers)

    @app.page("/health")
    class HealthView(View):
        """Ready once this worker owns partitions, is not rebalancing, and none is stalled."""

        async def get(self, request: Request) -> Response:
            ready = watchdog.ready()
            body: dict[str, Any] = {
                "ready": ready,
                "partitions": rt.active_partitions(),
                "rebalancing": app.rebalancing,
                # Changes with every rebalance of the consumer group.
                "generation": app.consumer_generation_id,
                "problems": {str(p): v for p, v in sorted(watchdog.report.problems.items())},
                "unready_because": watchdog.unready_because(),
                "progress": rt.lifecycle.describe(settings.stall_unready_s),
                **{name: section() for name, section in rt.health.items()},
            }
            return self.json(body, status=200 if ready else 503)

    @app.page("/metrics")
    class MetricsView(View):
        """Prometheus exposition of this worker's registry."""

        async def get(self, request: Request) -> Response:
            return self.bytes(generate_latest(rt.registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    return watchdog
