"""Stall detection at scale, in memory: 1,000,000 customers held, 10,000 due at once.

What a worker does per tick, without Kafka: the deadline index's memory per
customer (tracemalloc, against the dict and heap of tuples it replaced), pop the due customers from the
deadline index (``stream.engine.deadlines``), apply a clock reading to each through
the worker's own batch path (``agents.plan.plan_batch`` over clock records:
load, ``fold_batch``, the stall record and nudge decided) and encode the new
stored values; then the cost of a tick when nothing is due. The index is
built as a partition's assignment builds it, from (customer, deadline)
pairs. Kafka adds one produce of the clock records and one fetch of them
(measured in bench/throughput.py per record). Not a test.

    .venv/bin/python bench/stalls.py [--customers 1000000] [--due 10000] [--partitions 8]
"""

from __future__ import annotations

import argparse
import heapq
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.plan import plan_batch  # noqa: E402
from bench.results import recorded  # noqa: E402
from models import load_map  # noqa: E402
from models.effects import deadline_of  # noqa: E402
from models.events import CLOCK_HEADER, Clock, Touchpoint  # noqa: E402
from models.outputs import StallRecord  # noqa: E402
from models.reducer import fold_customer  # noqa: E402
from stream.engine.codec import decode_stored, encode_stored  # noqa: E402
from stream.engine.deadlines import DeadlineIndex  # noqa: E402
from stream.engine.partitioning import key_partition  # noqa: E402

NOW = 1_795_503_600_000


class Rec:
    __slots__ = ("headers", "key", "offset", "partition", "topic", "value")

    def __init__(self, partition: int, offset: int, key: bytes, value: bytes) -> None:
        self.topic, self.partition, self.offset, self.key, self.value = "t", partition, offset, key, value
        self.headers = ((CLOCK_HEADER, b"1"),)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--due", type=int, default=10_000)
    ap.add_argument("--partitions", type=int, default=8)
    args = ap.parse_args()
    jmap = load_map()
    cart_s = jmap.stage_by_name["cart"].stall_after_s or 3600

    # One stored customer per id: the due ones left a cart just past its
    # threshold, the rest are in a cart with their deadline ahead.
    started = time.perf_counter()
    table: dict[bytes, bytes] = {}
    pairs: dict[int, list[tuple[str, int | None]]] = {p: [] for p in range(args.partitions)}
    for i in range(args.customers):
        cid = f"c{i:07d}"
        is_due = i < args.due
        at = NOW - cart_s * 1000 - 1000 if is_due else NOW - (i % 3000) * 1000
        state = fold_customer(jmap, None, [Touchpoint(f"e{i}", cid, "add_to_cart", "web", at)]).state
        assert state is not None
        key = cid.encode()
        table[key] = encode_stored(0, state)
        pairs[key_partition(key, args.partitions)].append((cid, deadline_of(jmap, state)))
    print(f"set up {args.customers:,} stored customers in {time.perf_counter() - started:.1f} s")

    # What assignment really costs: decode every stored value and compute its deadline.
    t0 = time.perf_counter()
    decoded = []
    for raw in table.values():
        state = decode_stored(raw)[1]
        deadline_of(jmap, state)
        decoded.append(state)
    print(f"scan of {len(table):,} stored values (decode + next deadline): {time.perf_counter() - t0:.1f} s")

    # The index's memory per customer, and that of the dict and heap of tuples it used to be.
    tracemalloc.start()
    index = DeadlineIndex(lambda state: deadline_of(jmap, state))
    t0 = time.perf_counter()
    for p in range(args.partitions):
        index.on_partition_recovered(p)
        index.load(p, pairs[p])
        index.next_due(p)  # the run is built at the first read
    rebuild_s = time.perf_counter() - t0
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    n = len(index)
    print(f"index loaded with {n:,} (customer, deadline) pairs, built in {rebuild_s:.2f} s under tracemalloc")
    again = DeadlineIndex(lambda state: deadline_of(jmap, state))
    t0 = time.perf_counter()
    for p in range(args.partitions):
        again.on_partition_recovered(p)
        again.load(p, pairs[p])
        again.next_due(p)
    print(f"  and in {time.perf_counter() - t0:.2f} s without it")
    del again
    print(
        f"deadline index memory: {held / 1e6:.1f} MB held ({held / n:.0f} bytes per customer, "
        f"{held / n:.0f} MB per million customers), {peak / 1e6:.0f} MB at the peak of the build"
    )
    tracemalloc.start()
    old: list[tuple[dict[str, int], list[tuple[int, str]]]] = []
    for p in range(args.partitions):
        # the ids copied, as the index held its own strings (a scan's states are let go)
        due_map = {(c + ".")[:-1]: d for c, d in pairs[p] if d is not None}
        heap = [(d, c) for c, d in due_map.items()]
        heapq.heapify(heap)
        old.append((due_map, heap))
    old_held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del old
    print(f"  as a dict and a heap of tuples (before 2026-12-03): {old_held / n:.0f} bytes per customer")
    print(f"index_bytes_per_customer: {held / n:.1f}")

    # The tick with 10,000 due: pop, clock records through the batch path, encode.
    t0 = tick_start = time.perf_counter()
    due: dict[int, list[Rec]] = {}
    for p in range(args.partitions):
        for n, cid in enumerate(index.pop_due(p, NOW, limit=10**9)):
            due.setdefault(p, []).append(Rec(p, n + 1, cid.encode(), Clock(cid, NOW).to_json()))
    popped = sum(len(v) for v in due.values())
    t1 = time.perf_counter()

    def load(partition: int, key: bytes) -> tuple[int, object] | None:
        raw = table.get(key)
        return decode_stored(raw) if raw is not None else None

    plan = plan_batch(jmap, due, load, partitions=args.partitions, max_event_bytes=65536)  # type: ignore[arg-type]
    stalls = sum(1 for u in plan.updates for o in u.fold.outputs if isinstance(o, StallRecord))
    for u in plan.changed:
        assert u.fold.state is not None
        table[u.customer_id.encode()] = encode_stored(u.last_offset, u.fold.state)
        index.set(u.partition, u.customer_id, deadline_of(jmap, u.fold.state))
    t2 = time.perf_counter()
    assert popped == args.due and stalls == args.due, (popped, stalls)
    print(
        f"{args.due:,} due: popped in {1000 * (t1 - t0):.1f} ms, stalls and nudges decided and stored in "
        f"{1000 * (t2 - t1):.0f} ms"
    )

    # A /metrics scrape with the 1M customers counted per stage (per partition).
    from prometheus_client import CollectorRegistry, generate_latest

    from stream.engine.lifecycle import PartitionLifecycle
    from stream.engine.metrics import TrackerMetrics
    from stream.engine.stage_counts import StageCounts

    registry = CollectorRegistry()
    TrackerMetrics.create(registry, PartitionLifecycle()).init_map(jmap)
    counts = StageCounts(jmap.stage_names)
    registry.register(counts)
    for p in range(args.partitions):  # as the assignment scan fills them
        counts.on_partition_recovered(p)
        counts.on_partition_loaded(p, decoded[p :: args.partitions])
    assert counts.totals().customers["cart"] == args.customers
    t0 = time.perf_counter()
    for _ in range(100):
        generate_latest(registry)
    print(
        f"a /metrics scrape with {args.customers:,} customers held: {(time.perf_counter() - t0) * 10:.2f} ms"
    )

    # A tick with nothing due.
    rounds = 1000
    t0 = time.perf_counter()
    for _ in range(rounds):
        for p in range(args.partitions):
            index.pop_due(p, NOW, limit=10**9)
    idle_us = (time.perf_counter() - t0) / rounds * 1e6
    print(f"a tick with nothing due over {args.partitions} partitions: {idle_us:.1f} µs")
    print(f"emit_all_ms: {1000 * (t2 - tick_start):.0f}")


if __name__ == "__main__":
    with recorded("stalls"):
        main()
