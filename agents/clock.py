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
from models.effects import deadline_of
from models.events import CLOCK_HEADER, Clock
from stream.batching import PartitionBatches
from stream.deadlines import DeadlineIndex
from stream.faust_compat import aiokafka_producer
from stream.runtime import Runtime
from stream.stage_counts import StageCounts

log = logging.getLogger(__name__)

CLOCK_HEADERS = ((CLOCK_HEADER, b"1"),)
# Clock records sent per partition and tick at most (the rest go next tick).
MAX_PER_TICK = 20_000


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


class ClockTicker:
    """Per tick: clock records for due customers, then the nudge outbox."""

    def __init__(
        self, rt: Runtime, index: DeadlineIndex, dispatcher: NudgeDispatcher, clock: Callable[[], int]
    ) -> None:
        self.rt = rt
        self.index = index
        self.dispatcher = dispatcher
        self.clock = clock

    async def tick(self) -> int:
        """One tick; returns the clock records sent."""
        now = self.clock()
        topic = self.rt.settings.touchpoints_topic
        out = PartitionBatches(aiokafka_producer(self.rt.app))
        due: list[tuple[int, str]] = []
        for p in self.rt.lifecycle.ready:
            for cid in self.index.pop_due(p, now, MAX_PER_TICK):
                out.add(topic, p, cid.encode(), Clock(cid, now).to_json(), CLOCK_HEADERS)
                due.append((p, cid))
        if due:
            try:
                await out.send()
            except Exception as exc:
                log.warning("sending %d clock records failed, will retry: %r", len(due), exc)
                for p, cid in due:
                    self.index.set(p, cid, now)
                return 0
            self.rt.metrics.clock_readings.inc(len(due))
        await self.dispatcher.flush()
        return len(due)


def partition_scan(
    rt: Runtime, dispatcher: NudgeDispatcher, stages: StageCounts, clock: Callable[[], int]
) -> Callable[[int], list[tuple[str, int | None]]]:
    """The one scan of a partition's store when it is ready: every stored
    customer's next deadline for the deadline index, its open nudges back to
    the outbox, and the partition's customers per stage."""
    jmap = rt.journey_map

    def load(partition: int) -> list[tuple[str, int | None]]:
        started, now = time.monotonic(), clock()
        out: list[tuple[str, int | None]] = []
        states = []
        for _, state in rt.stored(partition):
            out.append((state.customer_id, deadline_of(jmap, state)))
            states.append(state)
            if state.nudges:
                dispatcher.resubmit_open(partition, state, now)
        stages.set_partition(partition, states)
        log.info(
            "deadline index for partition %d: %d customers scanned in %.2f s",
            partition,
            len(out),
            time.monotonic() - started,
        )
        return out

    return load
