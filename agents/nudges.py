"""The nudge dispatcher: nudges the core decided, through the Redis gate, onto
the ``nudges`` (or ``nudges-held-out``) topic.

An outbox per owned partition holds every nudge not yet decided by the gate:
ones just decided by a batch, ones waiting for quiet hours to end, ones
waiting for Redis to come back. It is memory only, and needs no more: the
customer's table value lists its open nudges, and when a partition is
assigned the lifecycle's scan puts them back here (the gate answers
"already decided" for those that went out). So a crash, a restart or a
Redis outage neither loses nor doubles a nudge.

The outbox is bounded (``JOURNEY_NUDGE_OUTBOX_MAX``). A nudge that finds it
full is not kept in memory and nothing is evicted: it stays in the table
(the customer's open nudges), its partition is marked spilled and counted
(``journey_nudge_outbox_spills_total``), and the worker is unready. Once the
outbox is down to half, each flush rescans one spilled partition's store
and puts its open nudges back, a few thousand customers per loop turn.

While Redis is down the outbox waits; tracking goes on untouched (batches
never call Redis then), the log says so once, ``/health`` shows it and
``journey_nudge_gate_up`` is 0. Each clock tick tries again, so a Redis
that comes back is used without a restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import orjson
from redis.exceptions import RedisError

from agents.erasures import ErasureLedger
from models.events import DELIVERY_HEADER, GROUP_HEADER, Delivery
from models.journey_map import JourneyMap
from models.nudges import quiet_release
from models.outputs import Nudge
from models.state import CustomerState
from models.timeutil import local_day_start, zone
from stream.engine.batching import NewBatches, PartitionBatches
from stream.engine.lifecycle import PartitionListener
from stream.engine.metrics import TrackerMetrics
from stream.redis.gate import Claim, ClaimRequest, GateDown, NudgeGate
from stream.redis.view import ServingView
from stream.settings import Settings

log = logging.getLogger(__name__)

DELIVERY_HEADERS = ((DELIVERY_HEADER, b"1"),)
# Stored customers a spill rescan decodes per loop turn.
RESCAN_CHUNK = 2000


@dataclass(slots=True)
class Pending:
    nudge: Nudge
    partition: int
    not_before: int = 0  # epoch ms: quiet hours hold it until then
    quiet_counted: bool = False


class NudgeDispatcher(PartitionListener):
    """Holds decided nudges until the gate and the broker have taken them."""

    def __init__(
        self,
        settings: Settings,
        jmap: JourneyMap,
        gate: NudgeGate,
        batches: NewBatches,
        metrics: TrackerMetrics,
        clock: Callable[[], int],
        *,
        scan: Callable[[int], Iterable[CustomerState]] = lambda p: (),
        ledger: ErasureLedger | None = None,
        view: ServingView | None = None,
    ) -> None:
        """``scan(p)``: partition ``p``'s stored customers (a spill's rescan);
        ``ledger``: erasures whose Redis deletes are owed; ``view``: its
        hashes go with an erasure too."""
        self._settings = settings
        self._jmap = jmap
        self._gate = gate
        self._batches = batches
        self._metrics = metrics
        self._clock = clock
        self._lock = asyncio.Lock()
        self.pending: dict[str, Pending] = {}
        self.ledger = ledger
        self.view = view
        self.gate_up = True
        self.max_pending = settings.nudge_outbox_max
        self.spilled: set[int] = set()  # partitions with open nudges left in the table
        # Per spilled partition, how many stored customers a rescan may skip
        # (those before it put back everything it had room for).
        self._resume: dict[int, int] = {}
        self._rescanning: int | None = None
        self.owned: set[int] = set()
        self.sending = True  # False in a shadow group's worker (set_active)
        self._delivery_headers = (*DELIVERY_HEADERS, (GROUP_HEADER, settings.app_id.encode()))
        self.promoted: set[int] = set()  # rescanned because the group became active: not a spill
        self.scan = scan
        metrics.nudge_gate_up.set(1)

    def __len__(self) -> int:
        return len(self.pending)

    def set_active(self, active: bool) -> None:
        """Blue/green (``stream.redis.role``): a shadow group's worker sends no
        nudge (its decisions stay in its table); one that becomes active puts
        its customers' open nudges back in the outbox (the gate drops those
        the other group sent already: the ids are the same)."""
        if self.sending == active:
            return
        self.sending = active
        if active:
            for p in self.owned:
                self.spilled.add(p)
                self.promoted.add(p)
                self._resume[p] = 0
        else:
            self.pending.clear()

    def submit(self, partition: int, nudge: Nudge) -> None:
        if not self.sending:
            self._metrics.shadow_nudges.inc()
            return
        if nudge.nudge_id in self.pending:
            return
        if len(self.pending) >= self.max_pending:
            # Full: the nudge stays in the table (the customer's open nudges);
            # the partition is rescanned once there is room. Nothing is evicted.
            if partition not in self.spilled:
                log.warning(
                    "the nudge outbox is full (%d, JOURNEY_NUDGE_OUTBOX_MAX): partition %d's new nudges stay "
                    "in the table until there is room; the worker is unready meanwhile",
                    self.max_pending,
                    partition,
                )
            self.spilled.add(partition)
            if partition != self._rescanning:  # a batch's nudge: it may sit anywhere in the store
                self._resume[partition] = 0
            self._metrics.outbox_spills.inc()
            return
        self.pending[nudge.nudge_id] = Pending(nudge, partition)

    def unready_because(self) -> str | None:
        """Why the worker should not count as ready (the outbox spilled), or None."""
        spilled = self.spilled - self.promoted
        if spilled:
            return f"the nudge outbox spilled partitions {sorted(spilled)} (JOURNEY_NUDGE_OUTBOX_MAX)"
        return None

    async def refill(self) -> None:
        """Rescan spilled partitions while the outbox is at most half full.

        A rescan puts back every open nudge of the partition's stored
        customers, those that went out already too (the gate answers "done"
        for them). Where it fills the outbox again it stops, and the next
        rescan starts at that customer: each pass gets further."""
        while self.spilled and len(self.pending) <= self.max_pending // 2:
            partition = min(self.spilled)
            self.spilled.discard(partition)  # a spill during the rescan marks it again
            self.promoted.discard(partition)
            start = self._resume.pop(partition, 0)
            now, seen = self._clock(), 0
            for state in self.scan(partition):
                if partition not in self.owned:
                    break  # revoked meanwhile: its next owner's scan has them
                if seen >= start and state.nudges:
                    self._rescanning = partition  # a spill here resumes here, not from the start
                    try:
                        self.resubmit_open(partition, state, now)
                    finally:
                        self._rescanning = None
                    if partition in self.spilled:  # full again (a batch's spill may have said 0)
                        self._resume.setdefault(partition, seen)
                        break
                seen += 1
                if seen % RESCAN_CHUNK == 0:
                    await asyncio.sleep(0)
            log.info(
                "nudge outbox: partition %d rescanned from customer %d to %d, %d nudges wait",
                partition,
                start,
                seen,
                len(self),
            )
            if partition in self.spilled:
                return  # room first: the next flush decides what was put back

    def resubmit_open(self, partition: int, state: CustomerState, now: int) -> None:
        """Put back the open nudges of a stored customer (a partition scan)."""
        max_age = self._jmap.nudges.max_age_s * 1000
        for ref in state.nudges:
            if ref.outcome is not None or now - ref.created_at > max_age:
                continue
            policy = self._jmap.nudges.kind(ref.kind)
            if policy is None:
                continue
            self.submit(
                partition,
                Nudge(
                    nudge_id=ref.nudge_id,
                    customer_id=state.customer_id,
                    kind=ref.kind,
                    channel=policy.channel,
                    stage=ref.stage,
                    trigger=policy.trigger,
                    reason={"resumed": True},
                    created_at=ref.created_at,
                    held_out=ref.held_out,
                    cooldown_s=policy.cooldown_s,
                    tz=state.tz,
                ),
            )

    async def flush(self, *, from_batch: bool = False) -> None:
        """Take every due nudge through the gate and produce the ones that go.

        From a batch it does nothing while Redis is down or another flush
        runs, so that tracking never waits for Redis."""
        if from_batch and (not self.gate_up or self._lock.locked()):
            return
        async with self._lock:
            # Erasures first, under the lock: a flush deciding an erased
            # customer's nudge has finished, so its keys go too.
            if self.ledger is not None and len(self.ledger) and not await self._erase_in_redis():
                return
            await self._flush(self._clock())
            if self.spilled and not from_batch and self.gate_up:
                await self.refill()
                await self._flush(self._clock())

    async def _flush(self, now: int) -> None:
        """One round trip to Redis for every due nudge's decision, one produce,
        one round trip to record them done."""
        rules = self._jmap.nudges
        max_age = rules.max_age_s * 1000
        due: list[Pending] = []
        for nudge_id, p in list(self.pending.items()):
            n = p.nudge
            if p.not_before > now:
                continue
            if now - n.created_at > max_age:
                self._count(n.kind, "expired")
                del self.pending[nudge_id]
                continue
            tz = zone(n.tz or rules.time_zone)
            release = quiet_release(rules.quiet_hours, now, tz)
            if release is not None:
                p.not_before = release
                if not p.quiet_counted:
                    p.quiet_counted = True
                    self._count(n.kind, "quiet_hours")
                continue
            due.append(p)
        if not due:
            return
        requests = [
            ClaimRequest(
                customer=p.nudge.customer_id,
                kind=p.nudge.kind,
                nudge_id=p.nudge.nudge_id,
                now_ms=now,
                cooldown_s=p.nudge.cooldown_s,
                cap_count=rules.cap_count,
                cap_window_s=rules.cap_window_s,
                held_out=p.nudge.held_out,
                day_start_ms=local_day_start(now, zone(p.nudge.tz or rules.time_zone))
                if rules.daily_cap
                else 0,
                daily_cap=rules.daily_cap or 0,
            )
            for p in due
        ]
        try:
            claims = await self._gate.claim_many(requests)
        except GateDown as exc:
            self._down(exc)
            return
        self._up()
        out = self._batches()
        going: list[tuple[Pending, Claim]] = []
        repeats = 0
        for p, claim in zip(due, claims, strict=True):
            n = p.nudge
            if self.pending.get(n.nudge_id) is not p:
                # Erased (or revoked) while Redis decided: it never goes out. The
                # keys the decision wrote go with the erasure's deletes, which
                # wait for this flush (the lock).
                continue
            if claim.decision == "capped":
                self._count(n.kind, "capped")
                del self.pending[n.nudge_id]
            elif not claim.pending:
                del self.pending[n.nudge_id]  # decided and produced before (a replay or a restart)
                self._add_delivery(out, p, claim)  # its delivery record again, in case it was lost
                repeats += 1
            else:
                topic = (
                    self._settings.held_out_topic
                    if claim.decision == "held_out"
                    else self._settings.nudges_topic
                )
                out.add(topic, p.partition, n.customer_id.encode(), orjson.dumps(n.to_record(sent_at=now)))
                # The customer's state learns that it went out, with the nudge
                # (acked together): only such a nudge gets an outcome record.
                self._add_delivery(out, p, claim)
                going.append((p, claim))
        if not going and not repeats:
            return
        try:
            await out.send()
        except Exception as exc:  # the broker: keep them; the gate says pending, so they go again
            log.warning("producing %d nudges failed, will retry: %r", len(going), exc)
            for p, _ in going:
                self._count(p.nudge.kind, "failed")
            return
        try:
            await self._gate.done_many(
                [(p.nudge.customer_id, p.nudge.kind, p.nudge.nudge_id, c.decision) for p, c in going]
            )
        except GateDown as exc:
            self._down(exc)  # produced; a retry re-produces them with the same ids
            return
        for p, claim in going:
            self.pending.pop(p.nudge.nudge_id, None)
            self._count(p.nudge.kind, claim.decision)

    def _add_delivery(self, out: PartitionBatches, p: Pending, claim: Claim) -> None:
        n = p.nudge
        record = Delivery(n.customer_id, n.nudge_id, claim.decision).to_json()
        out.add(
            self._settings.touchpoints_topic,
            p.partition,
            n.customer_id.encode(),
            record,
            self._delivery_headers,
        )

    def forget(self, customer_id: str) -> None:
        """Drop an erased customer's waiting nudges."""
        for nudge_id in [i for i, p in self.pending.items() if p.nudge.customer_id == customer_id]:
            del self.pending[nudge_id]

    async def _erase_in_redis(self) -> bool:
        """The ledger's owed deletes, in one round trip for the gate's keys and
        one for the view's hashes; False while Redis is down (they stay owed)."""
        assert self.ledger is not None
        owed = self.ledger.owed()
        try:
            await self._gate.forget_customers(sorted({cid for _, cid, _ in owed}))
            if self.view is not None:
                await self.view.erase([(cid, offset) for _, cid, offset in owed])
        except GateDown as exc:
            self._down(exc)
            return False
        except (RedisError, OSError) as exc:
            self._down(GateDown(f"redis: {exc!r}"))
            return False
        self._up()
        self.ledger.done(owed)
        return True

    def _count(self, kind: str, outcome: str) -> None:
        self._metrics.nudges.labels(kind, outcome).inc()

    def _down(self, exc: Exception) -> None:
        if self.gate_up:
            log.warning(
                "Redis is down (%s): %d nudges wait and are retried each tick", exc, len(self.pending)
            )
        self.gate_up = False
        self._metrics.nudge_gate_up.set(0)

    def _up(self) -> None:
        if not self.gate_up:
            log.info("Redis is back: sending the %d waiting nudges", len(self.pending))
        self.gate_up = True
        self._metrics.nudge_gate_up.set(1)

    # PartitionListener
    def on_partition_recovered(self, partition: int) -> None:
        self.owned.add(partition)

    def on_partition_loaded(self, partition: int, states: Sequence[CustomerState]) -> None:
        """The open nudges of the stored customers go back to the outbox."""
        now = self._clock()
        for state in states:
            if state.nudges:
                self.resubmit_open(partition, state, now)

    def on_partition_revoked(self, partition: int) -> None:
        self.owned.discard(partition)
        self.spilled.discard(partition)
        self.promoted.discard(partition)
        self._resume.pop(partition, None)
        for nudge_id in [i for i, p in self.pending.items() if p.partition == partition]:
            del self.pending[nudge_id]
