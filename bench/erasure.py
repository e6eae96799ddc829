"""What one erasure costs the batch path with a million keys in Redis.

Fills Redis (``JOURNEY_REDIS_URL``, the local stack's by default) with
1,000,000 keys under a throwaway prefix, gives one customer nudge decisions,
a cooldown and a send window through the real gate script, then times
``NudgeGate.forget_customers`` for that customer (the round trip the batch
path makes). The aim is at most 10 ms. Removes its keys at the end.

    python bench/erasure.py [--keys N] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.results import recorded
from stream.redis.gate import ClaimRequest, NudgeGate
from stream.settings import Settings


async def run(keys: int, rounds: int) -> None:
    s = Settings()
    prefix = f"bench-erase-{uuid.uuid4().hex[:8]}:"
    r = redis.Redis.from_url(s.redis_url)
    t0 = time.perf_counter()
    for start in range(0, keys, 10_000):
        pipe = r.pipeline(transaction=False)
        pipe.mset({f"{prefix}{{c{i}}}:sent": b"1" for i in range(start, min(start + 10_000, keys))})
        pipe.execute()
    print(f"filled {keys:,} keys in {time.perf_counter() - t0:.1f} s (dbsize {r.dbsize():,})")
    gate = NudgeGate(s.redis_url, prefix, 1.0, 86_400, ("cart_reminder", "win_back"))
    took: list[float] = []
    try:
        for n in range(rounds):
            cid = f"erase-me-{n}"
            await gate.claim_many(
                [
                    ClaimRequest(
                        cid, "cart_reminder", f"n{n}-{k}", 1_795_503_600_000 + k, 60, 100, 3600, False
                    )
                    for k in range(5)
                ]
            )
            t = time.perf_counter()
            await gate.forget_customers([cid])
            took.append((time.perf_counter() - t) * 1000)
            assert not r.keys(f"{prefix}{{{cid}}}:*")
    finally:
        await gate.close()
        for start in range(0, keys, 10_000):
            r.delete(*(f"{prefix}{{c{i}}}:sent" for i in range(start, min(start + 10_000, keys))))
    med, worst = statistics.median(took), max(took)
    print(f"one erasure with {keys:,} keys in Redis: median {med:.2f} ms, max {worst:.2f} ms")
    print(f"erasure_ms: {max(took):.2f} (aim <= 10)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    asyncio.run(run(args.keys, args.rounds))


if __name__ == "__main__":
    with recorded("erasure"):
        main()
