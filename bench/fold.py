"""The journey core's speed in memory: parse, fold and store codec, no Kafka.

Runs the worker's own per-batch path on one core: ``agents.plan.plan_batch``
(``parse_touchpoint``, the stored state loaded once per customer and batch,
``fold_batch``) and ``stream.engine.codec.encode_stored`` for every changed customer,
over simulator events in batches, with a dict as the table and the garbage
collector tuned as the worker tunes it (``stream.worker.tune_gc``): once decoding
every state from the store, once through the worker's decoded-state cache
(``stream.engine.state_cache``), and through a cache a tenth of the
customers' size, evicting as a worker holding more customers than its
cache does. Prints the parse rate alone, the three, and last
``events_per_s: X`` (with the cache, as the worker runs). Not a test.

``--mix uniform``: the effect-heavy mix of ``bench/throughput.py --mix uniform``
(every event type equally likely) instead of the simulator's personas.

    .venv/bin/python bench/fold.py [--events 200000] [--customers 20000] [--batch 1000] [--mix uniform]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.plan import plan_batch  # noqa: E402
from bench.results import recorded  # noqa: E402
from models import load_map, parse_touchpoint  # noqa: E402
from stream.engine.partitioning import key_partition  # noqa: E402
from stream.engine.state_cache import StateCache  # noqa: E402
from stream.settings import Settings  # noqa: E402
from stream.tools.simulator import generate, uniform  # noqa: E402
from stream.worker import tune_gc  # noqa: E402

PARTITIONS = 8


class Rec:
    __slots__ = ("headers", "key", "offset", "partition", "timestamp", "topic", "value")

    def __init__(self, partition: int, offset: int, key: bytes | None, value: bytes) -> None:
        self.topic, self.partition, self.offset, self.key, self.value = "t", partition, offset, key, value
        self.headers: tuple[tuple[str, bytes], ...] = ()
        self.timestamp: int | None = None


def records(events: int, customers: int, mix: str = "personas") -> list[Rec]:
    """Simulator events for ``customers``, repeated with fresh ids up to ``events``."""
    out: list[Rec] = []
    offsets: dict[int, int] = defaultdict(int)
    seed = 1
    batch = uniform(customers, seed=1) if mix == "uniform" else generate(customers, seed=1, duplicates=0.02)
    while len(out) < events:
        for m in batch:
            if len(out) >= events:
                break
            value = m.value.replace(b"-e", f"-r{seed}e".encode()) if seed > 1 else m.value
            p = key_partition(m.key, PARTITIONS) if m.key else 0
            out.append(Rec(p, offsets[p], m.key, value))
            offsets[p] += 1
        seed += 1
    return out


def run(recs: list[Rec], batch: int, cache_size: int) -> float:
    jmap = load_map()
    table: dict[bytes, bytes] = {}
    states = StateCache(lambda p, k: table.get(k), cache_size)
    start = time.perf_counter()
    for i in range(0, len(recs), batch):
        by_partition: dict[int, list[Rec]] = defaultdict(list)
        for r in recs[i : i + batch]:
            by_partition[r.partition].append(r)
        plan = plan_batch(jmap, by_partition, states.load, partitions=PARTITIONS, max_event_bytes=65536)
        for u in plan.changed:
            assert u.fold.state is not None and u.encoded is not None  # encoded by the planner
            key = u.customer_id.encode()
            table[key] = u.encoded
            states.stored(u.partition, key, (u.last_offset, u.fold.state))
    return len(recs) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--mix", choices=("personas", "uniform"), default="personas")
    args = parser.parse_args()
    recs = records(args.events, args.customers, args.mix)
    # The GC as the worker sets it (JOURNEY_GC_THRESHOLD); the input records
    # are frozen out of it with the start-up objects, as the worker's are never held.
    tune_gc(Settings().gc_threshold)
    jmap = load_map()
    start = time.perf_counter()
    for r in recs:
        parse_touchpoint(r.value, jmap, key=r.key)
    parse_rate = len(recs) / (time.perf_counter() - start)
    print(f"events: {len(recs)}  customers: {args.customers}  batch: {args.batch}  mix: {args.mix}")
    print(f"parse_touchpoint alone: {parse_rate:,.0f} events/s")
    cold = run(recs, args.batch, 0)
    print(f"parse + decode + fold_batch + encode, every state decoded from the store: {cold:,.0f} events/s")
    small = run(recs, args.batch, args.customers // 10)
    print(f"the same with a cache of a tenth of the customers (evicting all the time): {small:,.0f} events/s")
    rate = run(recs, args.batch, args.customers)
    print(f"the same with the worker's decoded-state cache: {rate:,.0f} events/s")
    print(f"events_per_s: {rate:.0f}")


if __name__ == "__main__":
    with recorded("fold"):
        main()
