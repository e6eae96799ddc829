"""The clock: finds customers whose deadline came and tells the agent.

Clock policy (README "Clock policy"):

* Deadlines are event time: a stall is due ``stall_after`` after the
  customer's last event, inactivity and defection likewise, a nudge's outcome
  window from its decision.
* They are checked against the worker's clock (injectable: tests pass their
  own), every ``JOURNEY_CLOCK_TICK_S`` (1 s), so a stall is emitted within
  about a tick and a fetch of its deadline.
* A table cannot be written from a timer, and should not be: each due
  customer gets a clock record ``{"clock": now}`` on the touchpoints topic,
  keyed by the customer, with the ``journey-clock`` header. The agent
  applies it in order with the customer's events, so the table stays a plain
  fold of the topic and a replay changes nothing.
* A backfilled event already past its threshold is due at once: it counts
  as a stall, and earns a nudge only if the stall is younger than the
  map's ``nudges.max_age``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from agents.nudges import NudgeDispatcher
from agents.odds import OddsChecker
from models.events import CLOCK_HEADER, GROUP_HEADER, Clock
from stream.engine.batching import NewBatches
from stream.engine.deadlines import DeadlineIndex
from stream.engine.lifecycle import PartitionLifecycle
from stream.engine.metrics import TrackerMetrics

log = logging.getLogger(__name__)

# Clock records sent per partition and tick at most (the rest go next tick).
MAX_PER_TICK = 20_000


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


class ClockTicker:
    """Per tick: clock records for due customers, then the nudge outbox and the odds asked for."""

    def __init__(
        self,
        topic: str,
        lifecycle: PartitionLifecycle,
        index: DeadlineIndex,
        dispatcher: NudgeDispatcher,
        batches: NewBatches,
        metrics: TrackerMetrics,
        clock: Callable[[], int],
        group: str = "",
        odds: OddsChecker | None = None,
    ) -> None:
        """``topic``: the touchpoints topic, where clock records go; ``group``:
        the app id they are marked with (``models.events.GROUP_HEADER``)."""
        self.topic = topic
        self.headers = ((CLOCK_HEADER, b"1"), (GROUP_HEADER, group.encode()))
        self.lifecycle = lifecycle
        self.index = index
        self.dispatcher = dispatcher
        self.batches = batches
        self.metrics = metrics
        self.clock = clock
        self.odds = odds

    async def tick(self) -> int:
        """One tick; returns the clock records sent."""
        now = self.clock()
        out = self.batches()
        due: list[tuple[int, str]] = []
        for p in self.lifecycle.ready:
            for cid in self.index.pop_due(p, now, MAX_PER_TICK):
                out.add(self.topic, p, cid.encode(), Clock(cid, now).to_json(), self.headers)
                due.append((p, cid))
        if due:
            try:
                await out.send()
            except Exception as exc:
                log.warning("sending %d clock records failed, will retry: %r", len(due), exc)
                for p, cid in due:
                    self.index.set(p, cid, now)
                return 0
            self.metrics.clock_readings.inc(len(due))
        await self.dispatcher.flush()
        if self.odds is not None:
            await self.odds.flush()
        return len(due)
