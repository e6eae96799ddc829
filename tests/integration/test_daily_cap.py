"""The gate's daily cap counts from the local midnight of the customer's zone,
in the real Redis (its Lua script), across a daylight-saving change."""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import datetime

from models.timeutil import local_day_start, zone
from stream.redis.gate import ClaimRequest, NudgeGate

REDIS = os.environ.get("JOURNEY_TEST_REDIS", "redis://127.0.0.1:6379/0")
HOUR = 3_600_000


def test_a_daily_cap_counts_per_local_calendar_day_across_a_daylight_saving_change() -> None:
    berlin = zone("Europe/Berlin")
    prefix = f"it-{uuid.uuid4().hex[:8]}:"

    async def run() -> list[str]:
        gate = NudgeGate(REDIS, prefix, 1.0, 86_400, tuple(f"k{i}" for i in range(5)))
        out = []
        # 27 March 2027, the day before Berlin's clocks go forward: 22:00 and
        # 23:30 local; then 00:30, 04:00 and 23:30 local on the 28th, a day
        # of 23 hours.
        times = [
            datetime(2027, 3, 27, 22, 0, tzinfo=berlin),
            datetime(2027, 3, 27, 23, 30, tzinfo=berlin),
            datetime(2027, 3, 28, 0, 30, tzinfo=berlin),
            datetime(2027, 3, 28, 4, 0, tzinfo=berlin),
            datetime(2027, 3, 28, 23, 30, tzinfo=berlin),
        ]
        for i, t in enumerate(times):
            now = int(t.timestamp() * 1000)
            (claim,) = await gate.claim_many(
                [
                    ClaimRequest(
                        customer="c1",
                        kind=f"k{i}",  # a kind each: no cooldown in the way
                        nudge_id=f"n{i}",
                        now_ms=now,
                        cooldown_s=1,
                        cap_count=100,
                        cap_window_s=7 * 86_400,
                        held_out=False,
                        day_start_ms=local_day_start(now, berlin),
                        daily_cap=2,
                    )
                ]
            )
            out.append(claim.decision)
        await gate.forget_customers(["c1"])
        return out

    # Two on the 27th; on the 28th (a 23-hour day) two go out and the third is capped.
    assert asyncio.run(run()) == ["sent", "sent", "sent", "sent", "capped"]
