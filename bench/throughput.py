"""Tracker throughput against bare consumers of the same topic, in one run.

Needs the local stack (deploy/local/stack.sh up). Produces simulator events to
a fresh topic, then measures, each from its first record to its last:

* bare parse: an aiokafka consumer that only parses each value with orjson;
* bare fold: the same consumer running the project's own batch path
  (``agents.plan.plan_batch``, encode, a dict as the table): the ceiling for
  our reducer, with no table, changelog or topics to write;
* worker: a real ``journey worker`` (memory store) on the same topic, read
  off the positions in its /health (start-up and recovery are not counted).

Prints the three rates and, last, ``ratio: X`` (worker / bare parse). Not a
test: the numbers move with the machine's load; compare ratios from one run.

With ``--profile FILE`` py-spy samples the worker while it applies the
events (collapsed stacks in FILE) and a breakdown of its time is printed
before the ratio: where a worker's time per event goes.

With ``--quix PYTHON`` (an interpreter with Quix Streams installed, see
``bench/quix_reducer.py``) Quix Streams runs a small journey reducer on the
same topic too, and ``worker / quix`` is printed before the ratio: the
comparison the aim of issue 9 is stated against, measured in the same run.

With ``--mix uniform`` the topic holds the effect-heavy mix instead of the
simulator's personas (``stream.tools.simulator.uniform``: ten events per
customer, every event type of the map equally likely, so purchases,
complaints and defections are common and stalls, drift, nudges and
win-backs happen all the time).

    .venv/bin/python bench/throughput.py [--customers 20000] [--seed 1] [--mix personas|uniform]
        [--profile FILE] [--quix PYTHON]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results import recorded  # noqa: E402
from stream.settings import Settings  # noqa: E402
from stream.tools.kafka import ensure_topics, group_offsets, producer, tracker_topics  # noqa: E402
from stream.tools.simulator import generate, produce, uniform  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def bare_consumer(settings: Settings, total: int) -> float:
    """Events per second for consume + orjson.loads, first message to last."""
    consumer = AIOKafkaConsumer(
        settings.touchpoints_topic,
        bootstrap_servers=settings.bootstrap_servers,
        group_id=f"bench-bare-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    seen = 0
    started = 0.0
    try:
        while seen < total:
            batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for records in batches.values():
                if not started:
                    started = time.perf_counter()
                for rec in records:
                    # A plain try, not contextlib.suppress: a slower baseline
                    # would flatter the ratio.
                    try:  # noqa: SIM105
                        orjson.loads(rec.value)
                    except orjson.JSONDecodeError:
                        pass
                    seen += 1
        return seen / (time.perf_counter() - started)
    finally:
        await consumer.stop()


async def bare_fold(settings: Settings, total: int) -> float:
    """Events per second for consume + the worker's batch path, into a dict."""
    from collections import defaultdict

    from agents.plan import plan_batch
    from models.journey_map import load_map
    from stream.engine.codec import encode_stored
    from stream.engine.state_cache import StateCache

    jmap = load_map()
    table: dict[bytes, bytes] = {}
    states = StateCache(lambda p, k: table.get(k), settings.state_cache_size)
    consumer = AIOKafkaConsumer(
        settings.touchpoints_topic,
        bootstrap_servers=settings.bootstrap_servers,
        group_id=f"bench-fold-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    seen = 0
    started = 0.0
    try:
        while seen < total:
            batches = await consumer.getmany(timeout_ms=1000, max_records=settings.batch_size)
            if not batches:
                continue
            if not started:
                started = time.perf_counter()
            records: dict[int, list[Any]] = defaultdict(list)
            for tp, recs in batches.items():
                records[tp.partition].extend(recs)
                seen += len(recs)
            plan = plan_batch(
                jmap, records, states.load, partitions=settings.partitions, max_event_bytes=65536
            )
            for u in plan.changed:
                assert u.fold.state is not None
                key = u.customer_id.encode()
                table[key] = encode_stored(u.last_offset, u.fold.state)
                states.stored(u.partition, key, (u.last_offset, u.fold.state))
        return seen / (time.perf_counter() - started)
    finally:
        await consumer.stop()


def quix(python: str, settings: Settings, total: int, workdir: Path) -> tuple[float, float]:
    """Events per second for Quix Streams running ``bench/quix_reducer.py`` under ``python``:
    to the end of its last checkpoint (its writes done), and to its last record."""
    from models.journey_map import load_map

    script = Path(__file__).with_name("quix_reducer.py")
    ranks = {etype: stage.index for etype, stage in load_map().entry_stage.items()}
    out = subprocess.run(
        [
            python,
            str(script),
            ",".join(settings.bootstrap_servers),
            settings.touchpoints_topic,
            str(total),
            str(workdir / "quix"),
            orjson.dumps(ranks).decode(),
        ],
        capture_output=True,
        timeout=900,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"quix_reducer.py exited {out.returncode}: {out.stderr.decode()[-2000:]}")
    result = orjson.loads(out.stdout.splitlines()[-1])
    return float(result["events_per_s"]), float(result["to_last_record_per_s"])


def processed(port: int, ends: dict[int, int]) -> float:
    """Records of the produced topic the worker has processed, from its /health.

    /health, not /metrics: polled every 50 ms, rendering every series of the
    registry cost the worker about 8% of its time (Prometheus scrapes every
    15 s). Positions are capped at the ends before the run, so the clock
    records the worker appends to the topic itself are not counted.
    """
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:  # 503 while not ready: the body is the same
        body = exc.read()
    progress = orjson.loads(body).get("progress", {})
    return float(
        sum(min(pr.get("processed") or 0, ends[int(p)]) for p, pr in progress.items() if int(p) in ends)
    )


# Where a worker's busy samples fall (py-spy leaves idle waits out). Our own
# steps first: a stack in one of them counts there, the broker calls it
# makes included. The rest by the innermost frame that names an area.
OURS = (
    ("plan: parse, load, fold", ("plan_batch (", "fold_batch (")),
    (
        "store: encode, changelog (acked), local store",
        ("changelog (agents/touchpoints.py", "store (agents/touchpoints.py"),
    ),
    ("publish: transitions, stalls, DLQ (acked)", ("publish (agents/touchpoints.py",)),
    (
        "follow-up: deadlines, counts, nudges into the outbox",
        ("follow_up (", "count (agents/", "StageCounts.update ("),
    ),
    ("nudge dispatcher and gate (Redis)", ("(agents/nudges.py", "(stream/redis/gate.py")),
    ("serving view writer (Redis)", ("(stream/redis/view.py",)),
    ("clock tick", ("tick (agents/clock.py",)),
    ("batch pipeline and commit positions", ("(stream/engine/pipeline.py", "(stream/faust/consumer.py")),
    ("watchdog, recovery, /health", ("(stream/engine/watchdog.py", "(stream/http/", "(stream/faust/app.py")),
)
REST = (
    ("event loop waiting (select)", ("select (selectors.py",)),
    ("Redis client", ("(redis/",)),
    ("aiokafka: fetch, produce, commit", ("(aiokafka/",)),
    ("Faust and mode services (commit, monitor, web)", ("(faust/", "(mode/")),
)


def profile_areas(path: Path) -> list[tuple[str, float]]:
    """Share of busy samples per area of a py-spy collapsed-stack file."""
    counts: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        area = next((name for name, marks in OURS if any(m in stack for m in marks)), None)
        for frame in reversed(stack.split(";")):
            if area is not None:
                break
            area = next((name for name, marks in REST if any(m in frame for m in marks)), None)
        area = area or "other (event loop, logging, GC)"
        counts[area] = counts.get(area, 0) + int(n)
        total += int(n)
    return sorted(((a, c / total) for a, c in counts.items()), key=lambda ac: -ac[1]) if total else []


def tracker(settings: Settings, ends: dict[int, int], workdir: Path, profile: Path | None = None) -> float:
    """Events per second through a real worker, first applied event to last."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOURNEY_")}
    env.update(settings.to_env())
    env["JOURNEY_WEB_PORT"] = str(port)
    env["JOURNEY_LOG_LEVEL"] = "WARNING"
    log = (workdir / "worker.log").open("wb")
    journey = str(Path(sys.executable).with_name("journey"))
    proc = subprocess.Popen([journey, "worker"], env=env, stdout=log, stderr=subprocess.STDOUT)
    spy: subprocess.Popen[bytes] | None = None
    try:
        first_t = first_n = 0.0
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"worker exited {proc.returncode}; log: {workdir / 'worker.log'}")
            try:
                n = processed(port, ends)
            except OSError:
                n = 0.0
            now = time.perf_counter()
            if n > 0 and not first_t:
                first_t, first_n = now, n
                if profile is not None:
                    spy_bin = str(Path(sys.executable).with_name("py-spy"))
                    spy = subprocess.Popen(
                        [spy_bin, "record", "--pid", str(proc.pid), "--format", "raw", "-o", str(profile)],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
            if n >= sum(ends.values()):
                return (n - first_n) / (now - first_t)
            time.sleep(0.05)
        raise SystemExit("the worker did not finish in 15 minutes")
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes the file on SIGINT
            spy.wait(timeout=60)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--profile", type=Path, help="sample the worker with py-spy into this file")
    parser.add_argument("--quix", metavar="PYTHON", help="an interpreter with quixstreams: run it too")
    parser.add_argument(
        "--mix",
        choices=("personas", "uniform"),
        default="personas",
        help="the simulator's personas, or every event type equally likely (effect-heavy)",
    )
    args = parser.parse_args()

    run = f"bench-{uuid.uuid4().hex[:8]}"
    workdir = Path(tempfile.mkdtemp(prefix=f"{run}-"))
    settings = Settings(
        app_id=run,
        touchpoints_topic=f"{run}-touchpoints",
        transitions_topic=f"{run}-transitions",
        dlq_topic=f"{run}-dlq",
        partitions=args.partitions,
        data_dir=workdir / "data",
    )
    if args.mix == "uniform":
        messages = uniform(args.customers, args.seed)
    else:
        messages = generate(args.customers, args.seed, duplicates=0.05, malformed=0.01)
    ensure_topics(settings, tracker_topics(settings))
    prod = producer(settings, max_in_flight_requests_per_connection=5, linger_ms=50, batch_size=256 * 1024)
    produce(lambda k, v: prod.send(settings.touchpoints_topic, key=k, value=v), messages)
    prod.flush()
    prod.close()
    total = len(messages)
    print(f"events: {total}  customers: {args.customers}  partitions: {args.partitions}  mix: {args.mix}")

    bare = asyncio.run(bare_consumer(settings, total))
    print(f"bare parse-only consumer (aiokafka + orjson): {bare:,.0f} events/s")
    fold = asyncio.run(bare_fold(settings, total))
    print(f"bare consumer running fold_batch into a dict (our reducer's ceiling): {fold:,.0f} events/s")
    quix_rate = quix(args.quix, settings, total, workdir) if args.quix else None
    if quix_rate is not None:
        print(
            "Quix Streams running a small reducer (RocksDB state, at-least-once): "
            f"{quix_rate[0]:,.0f} events/s to its last checkpoint ({quix_rate[1]:,.0f} to its last record)"
        )
    offsets = group_offsets(settings, settings.app_id, settings.touchpoints_topic)
    ends = {p: end for p, (_, end) in offsets.items()}
    ours = tracker(settings, ends, workdir, args.profile)
    print(f"journey worker (fold, table + changelog, transitions, DLQ, commits): {ours:,.0f} events/s")
    if args.profile is not None and args.profile.exists():
        print(f"worker profile (py-spy, {args.profile}): share of busy samples, all threads")
        for area, share in profile_areas(args.profile):
            print(f"  {share:6.1%}  {area}")
    if quix_rate is not None:
        print(f"worker / quix: {ours / quix_rate[0]:.2f}")
    print(f"ratio: {ours / bare:.3f}")


if __name__ == "__main__":
    with recorded("throughput"):
        main()
