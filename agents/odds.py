"""The odds checker: the worker's answer when the core asks for a customer's
next-stage odds (a low_odds nudge policy's checkpoint, ``models.effects``).

The core cannot compute odds itself: they rest on every worker's figures
(``GET /funnel/local``). So at the checkpoint a clock reading makes the
core ask (``models.outputs.OddsDue``); the worker reads the odds from the
summed figures (``models.insight.next_stage``, gathered at most every 15 s)
and sends an odds reading (``models.events.OddsReading``) through the
touchpoints topic, keyed by the customer. The core applies it in order with
the customer's events and decides the nudge: the table stays a plain fold of
the topic, and a replay changes nothing.

The questions wait here, in memory, at most ``max_pending`` of them, until
the next clock tick. One that finds no room, or a worker that cannot gather
the figures, is counted (``journey_odds_checks_total{outcome="deferred"}``)
and not kept: the core asks again a minute later (``ODDS_RETRY_MS``), as it
does after a crash or a rebalance took the questions with it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from models.events import GROUP_HEADER, ODDS_HEADER, OddsReading
from models.insight import next_stage
from models.journey_map import JourneyMap
from models.outputs import OddsDue
from models.state import CustomerState
from stream.engine.batching import NewBatches
from stream.engine.lifecycle import PartitionListener
from stream.engine.metrics import TrackerMetrics
from stream.engine.stage_counts import Figures

log = logging.getLogger(__name__)

MAX_PENDING = 10_000


class OddsChecker(PartitionListener):
    """Questions for the odds, answered on the clock tick."""

    def __init__(
        self,
        topic: str,
        jmap: JourneyMap,
        batches: NewBatches,
        metrics: TrackerMetrics,
        clock: Callable[[], int],
        group: str = "",
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.topic = topic
        self.jmap = jmap
        self.batches = batches
        self.metrics = metrics
        self.clock = clock
        self.headers = ((ODDS_HEADER, b"1"), (GROUP_HEADER, group.encode()))
        self.max_pending = max_pending
        self.pending: dict[str, tuple[int, OddsDue, CustomerState]] = {}
        # Every worker's figures summed (stream.http.funnel.FiguresCache); set once the worker is built.
        self.figures: Callable[[], Awaitable[Figures]] | None = None
        self._failing = False

    def __len__(self) -> int:
        return len(self.pending)

    def submit(self, partition: int, due: OddsDue, state: CustomerState) -> None:
        """The core asked for ``state``'s odds (the customer's state after the batch)."""
        if len(self.pending) >= self.max_pending and due.customer_id not in self.pending:
            self.metrics.odds_checks.labels("deferred").inc()
            return
        self.pending[due.customer_id] = (partition, due, state)

    def forget(self, customer_id: str) -> None:
        self.pending.pop(customer_id, None)

    def on_partition_revoked(self, partition: int) -> None:
        for cid in [c for c, (p, _, _) in self.pending.items() if p == partition]:
            del self.pending[cid]

    async def flush(self) -> int:
        """Read the odds of every waiting question and send the readings; returns how many."""
        if not self.pending or self.figures is None:
            return 0
        try:
            total = await self.figures()
        except Exception as exc:
            if not self._failing:
                log.warning("odds: the workers' figures could not be gathered, will retry: %r", exc)
            self._failing = True
            return 0
        self._failing = False
        now = self.clock()
        out = self.batches()
        outcomes: list[str] = []
        asked = list(self.pending.items())
        for cid, (partition, due, state) in asked:
            answer = next_stage(self.jmap, state, total.ttc, total.waiting, now)
            p = None if answer is None else float(answer["probability"])
            policy = self.jmap.nudges.for_trigger("low_odds", due.stage)
            below = policy.below if policy is not None else None
            outcomes.append(
                "no_estimate" if p is None else ("low" if below is not None and p < below else "not_low")
            )
            out.add(
                self.topic,
                partition,
                cid.encode(),
                OddsReading(cid, due.stage, due.visit, p, now).to_json(),
                self.headers,
            )
        try:
            await out.send()
        except Exception as exc:
            log.warning("sending %d odds readings failed, will retry: %r", len(asked), exc)
            return 0
        for cid, entry in asked:
            if self.pending.get(cid) is entry:
                del self.pending[cid]
        for outcome in outcomes:
            self.metrics.odds_checks.labels(outcome).inc()
        return len(asked)
