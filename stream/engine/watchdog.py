"""The watchdog: the lifecycle's progress turned into readiness, log lines, counts and, at worst, an exit.

Every ``JOURNEY_WATCHDOG_INTERVAL_S`` it reads the log end of every owned
partition, so a partition that fetches nothing is seen too. A partition
with lag and no progress, or with processed records not committed, for
longer than ``JOURNEY_STALL_UNREADY_S`` makes the worker unready, is logged
and counted; past ``JOURNEY_STALL_EXIT_S`` the worker exits with status 75
so that its supervisor restarts it. Tracker topics gone from the cluster
end it with status 69. No Faust here: what it reads of the cluster and the
consumer is passed in.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from stream.engine.lifecycle import PartitionLifecycle, Report
from stream.engine.metrics import TrackerMetrics
from stream.settings import Settings

log = logging.getLogger(__name__)

EXIT_STALLED = 75  # EX_TEMPFAIL: a supervisor should start the worker again
EXIT_STOP_TIMEOUT = 75  # a stop that did not finish in JOURNEY_STOP_TIMEOUT_S: nothing more committed
EXIT_TOPICS_GONE = 69  # EX_UNAVAILABLE: the tracker's topics are gone from the cluster
# Checks in a row that must find a topic missing before the worker exits
# (one reading of metadata in the middle of a topic's creation can miss it).
TOPICS_GONE_CHECKS = 2


def stop_timed_out(timeout_s: float, exit: Any = os._exit) -> Callable[[], None]:
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
    """Judges every owned partition's progress, and the worker's readiness."""

    def __init__(
        self,
        settings: Settings,
        lifecycle: PartitionLifecycle,
        metrics: TrackerMetrics,
        *,
        active: Callable[[], list[int]],
        rebalancing: Callable[[], bool],
        read_ends: Callable[[list[int]], Awaitable[dict[int, int]]],
        missing_topics: Callable[[list[str]], Awaitable[list[str]]],
        readiness: Sequence[Callable[[], str | None]] = (),
        exit: Callable[[int], Any] = os._exit,
    ) -> None:
        self.settings = settings
        self.lifecycle = lifecycle
        self.metrics = metrics
        self._active = active
        self._rebalancing = rebalancing
        self._read_ends = read_ends
        self._missing_topics = missing_topics
        # Checks that can make the worker unready: each returns why, or None.
        self.readiness = list(readiness)
        self._exit = exit
        self.report = Report({}, 0.0)
        self.missing_topics: list[str] = []
        self._missing_checks = 0

    async def check_topics(self) -> None:
        """Exit (after saying so once) when the tracker's topics are gone from
        the cluster: a mistaken deletion, a wiped broker. Without them the
        worker would idle unready for ever, or log an error per record."""
        s = self.settings
        names = [s.touchpoints_topic, s.changelog_topic]
        try:
            missing = await asyncio.wait_for(self._missing_topics(names), timeout=s.watchdog_interval_s)
        except Exception as exc:  # the broker away: that is the stall watchdog's to judge
            log.debug("watchdog: could not read the cluster's topics: %r", exc)
            return
        self._missing_checks = self._missing_checks + 1 if missing else 0
        self.missing_topics = missing
        if missing and self._missing_checks >= TOPICS_GONE_CHECKS:
            self.metrics.ready.set(0)
            log.critical(
                "the tracker's topics %s are gone from the cluster (deleted, or the broker's data wiped): "
                "exiting with status %d for the supervisor; the restart creates them again",
                missing,
                EXIT_TOPICS_GONE,
            )
            logging.shutdown()
            self._exit(EXIT_TOPICS_GONE)

    async def read_ends(self) -> None:
        owned = self.lifecycle.owned
        if not owned or self._rebalancing():
            return
        try:
            ends = await asyncio.wait_for(self._read_ends(owned), timeout=self.settings.watchdog_interval_s)
        except Exception as exc:  # the broker away: judge on what is known
            log.info("watchdog: could not read log end offsets: %r", exc)
            return
        self.lifecycle.ends(ends)

    def check(self) -> Report:
        s, lifecycle = self.settings, self.lifecycle
        report = lifecycle.report(s.stall_unready_s)
        self.report = report
        for p in lifecycle.newly_stalled(report):
            problem = report.partitions[p]
            self.metrics.partition_problems.labels(problem).inc()
            log.error(
                "partition %s[%d] is %s: %s",
                s.touchpoints_topic,
                p,
                problem,
                lifecycle.describe(s.stall_unready_s)[str(p)],
            )
        self.metrics.ready.set(1 if self.ready() else 0)
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
        return (
            bool(self._active())
            and not self._rebalancing()
            and not self.report.problems
            and not self.missing_topics
            and not self.unready_because()
        )

    def unready_because(self) -> list[str]:
        """What the worker's parts say keeps it unready (a spilled nudge outbox...)."""
        return [why for check in self.readiness if (why := check()) is not None]
