"""The nudge policy: which situation earns which nudge, who is held out,
and when quiet hours let a nudge go.

Pure. Caps and cooldowns need every worker's view of what was sent, so the
worker enforces them in Redis (``stream.redis.gate``); the decision here
says only that a nudge is due, with a deterministic id.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from models.journey_map import JourneyMap
from models.outputs import Nudge, stable_id
from models.rules import QuietHours, Trigger
from models.state import NUDGES_KEPT, NudgeRef


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
    tz: str = "",
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
        tz=tz,
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


def quiet_release(quiet: QuietHours | None, now_ms: int, tz: tzinfo = UTC) -> int | None:
    """When a nudge due at ``now_ms`` may go: None if now is outside quiet
    hours in the customer's zone ``tz``, else the end of the quiet span
    (epoch ms). The span is local wall-clock time: 21:00-08:00 in
    Europe/Berlin is eleven hours of UTC in summer and in winter, and ten or
    twelve on the nights the clocks change (a local end that the clocks skip
    is read an hour later)."""
    if quiet is None:
        return None
    local = datetime.fromtimestamp(now_ms / 1000, tz)
    minute = local.hour * 60 + local.minute
    start, end = quiet.start_min, quiet.end_min
    today = local.date()
    if start < end:  # e.g. 01:00-06:00
        release_day = today if start <= minute < end else None
    elif minute >= start:  # across midnight, e.g. 21:00-08:00
        release_day = today + timedelta(days=1)
    elif minute < end:
        release_day = today
    else:
        release_day = None
    if release_day is None:
        return None
    wall = datetime(release_day.year, release_day.month, release_day.day, end // 60, end % 60, tzinfo=tz)
    # A local end the clocks skip (in the spring gap) reads with the offset
    # before the change (fold=0): the same wall time an hour later.
    return max(int(wall.timestamp() * 1000), now_ms + 1)
