"""The nudge policy: which situation earns which nudge, who is held out,
and when quiet hours let a nudge go.

Pure. Caps and cooldowns need every worker's view of what was sent, so the
worker enforces them in Redis (``stream.redis.gate``); the decision here
says only that a nudge is due, with a deterministic id.
"""

from __future__ import annotations

import hashlib
from typing import Any

from models.journey_map import JourneyMap
from models.outputs import Nudge, stable_id
from models.rules import QuietHours, Trigger
from models.state import NUDGES_KEPT, NudgeRef

DAY_MS = 86_400_000
MINUTE_MS = 60_000


def held_out(customer_id: str, share: float) -> bool:
    """Whether a customer is in the holdout: a stable hash of the id below ``share``.

    The same customer is held out (or not) for every kind, on every worker,
    in every run."""
    if share <= 0:
        return False
    h = int.from_bytes(hashlib.blake2b(customer_id.encode(), digest_size=8).digest(), "big")
    return h / 2**64 < share


def decide(
    jmap: JourneyMap,
    trigger: Trigger,
    stage: str,
    customer_id: str,
    key: str,
    at: int,
    reason: dict[str, Any],
) -> tuple[Nudge, NudgeRef] | None:
    """The nudge ``trigger`` earns in ``stage``, if a policy says so.

    ``key`` names the occasion (a stall episode, the event that crossed a
    bar): the nudge id is derived from it, the kind and the customer."""
    policy = jmap.nudges.for_trigger(trigger, stage)
    if policy is None:
        return None
    nudge_id = stable_id("nudge", customer_id, policy.kind, key)
    out = held_out(customer_id, jmap.nudges.holdout)
    nudge = Nudge(
        nudge_id=nudge_id,
        customer_id=customer_id,
        kind=policy.kind,
        channel=policy.channel,
        stage=stage,
        trigger=trigger,
        reason=reason,
        created_at=at,
        held_out=out,
        cooldown_s=policy.cooldown_s,
    )
    return nudge, NudgeRef(nudge_id, policy.kind, stage, at, at + policy.window_s * 1000, out)


def remember(refs: tuple[NudgeRef, ...], ref: NudgeRef) -> tuple[NudgeRef, ...]:
    """``refs`` with ``ref`` added (once), the oldest closed ones dropped past NUDGES_KEPT."""
    if any(r.nudge_id == ref.nudge_id for r in refs):
        return refs
    out = [*refs, ref]
    while len(out) > NUDGES_KEPT:
        closed = next((i for i, r in enumerate(out) if r.outcome is not None), None)
        out.pop(closed if closed is not None else 0)
    return tuple(out)


def quiet_release(quiet: QuietHours | None, now_ms: int) -> int | None:
    """When a nudge due at ``now_ms`` may go: None if now is outside quiet hours,
    else the end of the quiet span (epoch ms, UTC)."""
    if quiet is None:
        return None
    day_start = now_ms - now_ms % DAY_MS
    minute = (now_ms - day_start) // MINUTE_MS
    start, end = quiet.start_min, quiet.end_min
    if start < end:  # e.g. 01:00-06:00
        if start <= minute < end:
            return day_start + end * MINUTE_MS
        return None
    # Across midnight, e.g. 21:00-08:00.
    if minute >= start:
        return day_start + DAY_MS + end * MINUTE_MS
    if minute < end:
        return day_start + end * MINUTE_MS
    return None
