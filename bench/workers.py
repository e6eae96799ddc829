"""Workers that add up: one worker, then two worker processes, on the same topic.

Needs the local stack (deploy/local/stack.sh up). Produces the simulator's
events (``--customers`` 40,000, about 250,000 events, 8 partitions) to a
fresh topic, then:

1. one ``journey worker`` (its own consumer group) reads them all: its rate;
2. two ``journey worker`` processes (another group) read them again: their
   combined rate, counted from the moment both own their half of the
   partitions (what the first processed alone before the group settled is
   left out).

Prints both rates, the machine's cores, and last ``two_over_one: X``. The
two workers share the machine's cores with the broker and with each other:
on this 2-core machine the second worker's gain is bounded by the core the
broker and the first worker leave free. Not a test.

    .venv/bin/python bench/workers.py [--customers 40000] [--partitions 8]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results import recorded  # noqa: E402
from bench.scale import Worker, ends_of, run_settings  # noqa: E402
from stream.settings import Settings  # noqa: E402
from stream.tools.kafka import ensure_topics, producer, tracker_topics  # noqa: E402
from stream.tools.simulator import generate  # noqa: E402


def group(run: str, topic_run: str, partitions: int, workdir: Path) -> Settings:
    """Settings for one consumer group on the shared touchpoints topic."""
    return run_settings(
        run, touchpoints_topic=f"{topic_run}-touchpoints", partitions=partitions, data_dir=workdir / run
    )


def processed(workers: list[Worker], ends: dict[int, int]) -> tuple[int, bool]:
    """Records processed across the workers, and whether each owns its share and is ready."""
    total, settled = 0, True
    share = len(ends) // len(workers)
    for w in workers:
        try:
            h: dict[str, Any] = w.health()
        except OSError:
            return 0, False
        total += w.processed(h, ends)
        settled = settled and bool(h.get("ready")) and len(h.get("partitions", [])) == share
    return total, settled


def rate(workers: list[Worker], ends: dict[int, int]) -> float:
    """Events per second from the moment all ``workers`` are settled to the end of the topic."""
    want = sum(ends.values())
    t0 = n0 = None
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        n, settled = processed(workers, ends)
        now = time.perf_counter()
        if t0 is None and settled:
            t0, n0 = now, n
        if n >= want:
            if t0 is None or n0 is None or now <= t0:
                raise SystemExit("the workers finished before the group settled: use more --customers")
            return (n - n0) / (now - t0)
        for w in workers:
            if w.proc.poll() is not None:
                raise SystemExit(f"a worker exited {w.proc.returncode}")
        time.sleep(0.05)
    raise SystemExit("the workers did not finish in 30 minutes")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=40_000)
    ap.add_argument("--partitions", type=int, default=8)
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    topic_run = f"workers-{uuid.uuid4().hex[:8]}"
    one = group(f"{topic_run}-one", topic_run, args.partitions, workdir)
    two = group(f"{topic_run}-two", topic_run, args.partitions, workdir)
    ensure_topics(one, tracker_topics(one))
    ensure_topics(two, tracker_topics(two))
    messages = generate(args.customers, seed=5)
    prod = producer(one, max_in_flight_requests_per_connection=5, linger_ms=50, batch_size=512 * 1024)
    for m in messages:
        prod.send(one.touchpoints_topic, key=m.key, value=m.value)
    prod.flush()
    prod.close()
    print(f"events: {len(messages):,}  customers: {args.customers:,}  partitions: {args.partitions}")
    print(f"cores: {os.cpu_count()} (shared with the broker)")

    w = Worker(one, workdir / "one", workdir / "one.log")
    single = w.rate_to(ends_of(one))
    w.stop()
    print(f"one worker: {single:,.0f} events/s")
    pair = [Worker(two, workdir / f"two-{i}", workdir / f"two-{i}.log") for i in range(2)]
    try:
        both = rate(pair, ends_of(two))
    finally:
        for p in pair:
            p.stop()
    print(f"two worker processes, together: {both:,.0f} events/s")
    print(f"two_over_one: {both / single:.2f}")


if __name__ == "__main__":
    with recorded("workers"):
        main()
