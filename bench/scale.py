"""A million customers through the real broker, on the RocksDB store.

Needs the local stack (deploy/local/stack.sh up). In one run:

1. Loads ``--customers`` (1,000,000) customers, one event each (a page
   view, a product view or a cart, over the last 14 days), into a fresh
   topic through one ``journey worker`` with ``JOURNEY_STORE=rocksdb://``,
   and reports its rate.
2. Reports the worker's resident memory and the memory of its indexes
   (``/health``: the deadline index's loaded run, the state cache) and the
   stored bytes per customer (the changelog's values, read back); and the
   same memory after the fresh worker's scan below, where every customer
   comes from the store (the index's flat arrays).
3. Stops it; starts a fresh worker on an empty directory (a full recovery
   from the changelog) and, after it, the first worker again on its own
   directory (only the changelog's tail): time to ready for each.
4. Before that restart, ``--events`` (200,000) more events over all the
   customers (the effect-heavy mix: every event type equally likely) wait
   in the topic; the restarted worker's rate through them, then the same
   on a fresh topic of 10,000 customers: the cost curve from 10,000 to
   1,000,000 customers held.

The serving view is off (a million hashes in Redis are not what this
measures). Not a test: the figures move with the machine's load. Prints the figures and
last ``scale_ratio: X`` (rate at 1,000,000 customers / rate at 10,000).

    .venv/bin/python bench/scale.py [--customers 1000000] [--events 200000] [--partitions 8]
        [--small 10000] [--profile FILE]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results import recorded  # noqa: E402
from bench.throughput import free_port  # noqa: E402
from models import load_map  # noqa: E402
from models.timeutil import ms_to_iso  # noqa: E402
from stream.settings import Settings  # noqa: E402
from stream.tools.kafka import ensure_topics, group_offsets, producer, read_topic, tracker_topics  # noqa: E402

DAY_MS = 86_400_000


def run_settings(run: str, **over: Any) -> Settings:
    """Settings whose group, topics and Redis keys are all named after ``run``, with ``over`` on top."""
    names: dict[str, Any] = {
        "app_id": run,
        "redis_prefix": f"{run}:",
        "view_prefix": f"{run}:view:",
        **{
            f"{topic}_topic": f"{run}-{topic.replace('_', '-')}"
            for topic in (
                "touchpoints",
                "transitions",
                "dlq",
                "stalls",
                "drift",
                "nudges",
                "held_out",
                "outcomes",
                "erasures",
                "identities",
            )
        },
    }
    return Settings(**{**names, **over})


def settings_for(run: str, partitions: int, workdir: Path) -> Settings:
    return run_settings(
        run,
        partitions=partitions,
        store="rocksdb://",
        data_dir=workdir / "data",
        view_ttl_s=0,  # no serving view: a million hashes in Redis are not what this measures
    )


def send(settings: Settings, messages: Any) -> int:
    prod = producer(settings, max_in_flight_requests_per_connection=5, linger_ms=50, batch_size=512 * 1024)
    n = 0
    for key, value in messages:
        prod.send(settings.touchpoints_topic, key=key, value=value)
        n += 1
    prod.flush()
    prod.close()
    return n


def first_touches(customers: int, now: int, seed: int) -> Any:
    rng = random.Random(seed)
    for i in range(customers):
        cid = f"m-{i:07d}"
        etype = rng.choice(("page_view", "product_view", "add_to_cart"))
        ts = now - int(rng.uniform(0, 14) * DAY_MS)
        body = {
            "event_id": f"{cid}-0",
            "customer_id": cid,
            "type": etype,
            "channel": "web",
            "timestamp": ms_to_iso(ts),
        }
        yield cid.encode(), orjson.dumps(body)


def mixed(customers: int, events: int, now: int, seed: int, prefix: str = "m") -> Any:
    jmap = load_map()
    types, channels = sorted(jmap.event_types), sorted(jmap.channels)
    rng = random.Random(seed)
    for n in range(events):
        cid = f"{prefix}-{rng.randrange(customers):07d}"
        body = {
            "event_id": f"{cid}-x{seed}-{n}",
            "customer_id": cid,
            "type": rng.choice(types),
            "channel": rng.choice(channels),
            "timestamp": ms_to_iso(now - rng.randrange(3600_000)),
        }
        yield cid.encode(), orjson.dumps(body)


class Worker:
    """One ``journey worker`` process on its own data directory."""

    def __init__(self, settings: Settings, data_dir: Path, log: Path, profile: Path | None = None) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOURNEY_")}
        env.update(settings.to_env())
        env["JOURNEY_WEB_PORT"] = str(self.port)
        env["JOURNEY_DATA_DIR"] = str(data_dir)
        env["JOURNEY_LOG_LEVEL"] = "WARNING"
        journey = str(Path(sys.executable).with_name("journey"))
        self.spy: subprocess.Popen[bytes] | None = None
        self.proc = subprocess.Popen(
            [journey, "worker"], env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT
        )
        self.started = time.perf_counter()
        if profile is not None:  # py-spy samples the worker until it stops (collapsed stacks)
            spy_bin = str(Path(sys.executable).with_name("py-spy"))
            self.spy = subprocess.Popen(
                [spy_bin, "record", "--pid", str(self.proc.pid), "--format", "raw", "-o", str(profile)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

    def health(self) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=10) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()
        return orjson.loads(body)

    def wait(self, done: Any, what: str, timeout: float = 1800) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"worker exited {self.proc.returncode} while waiting for {what}")
            try:
                h = self.health()
            except OSError:
                h = {}
            if h and done(h):
                return h
            time.sleep(0.2)
        raise SystemExit(f"no {what} in {timeout} s")

    def processed(self, h: dict[str, Any], ends: dict[int, int]) -> int:
        progress = h.get("progress", {})
        return sum(
            min(pr.get("processed") or 0, ends[int(p)]) for p, pr in progress.items() if int(p) in ends
        )

    def rate_to(self, ends: dict[int, int]) -> float:
        """Events per second from the first record past the current positions to ``ends``."""
        total = sum(ends.values())
        first = self.wait(lambda h: h.get("ready"), "ready")
        base = self.processed(first, ends)
        t0 = 0.0
        n0 = base
        while True:
            h = self.health()
            n = self.processed(h, ends)
            now = time.perf_counter()
            if n > base and not t0:
                t0, n0 = now, n
            if n >= total:
                return (n - n0) / (now - t0) if t0 and now > t0 else float("nan")
            if self.proc.poll() is not None:
                raise SystemExit(f"worker exited {self.proc.returncode}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.spy is not None:
            self.spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            self.spy.wait(timeout=120)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def ends_of(settings: Settings) -> dict[int, int]:
    return {
        p: end for p, (_, end) in group_offsets(settings, settings.app_id, settings.touchpoints_topic).items()
    }


def mixed_rate(customers: int, events: int, partitions: int, workdir: Path, now: int) -> float:
    """The mixed events' rate through a worker holding ``customers`` (loaded first, then
    the worker stopped, the events produced, and the worker started again on its directory)."""
    run = f"scale-{uuid.uuid4().hex[:8]}"
    s = settings_for(run, partitions, workdir / run)
    ensure_topics(s, tracker_topics(s))
    send(s, first_touches(customers, now, seed=3))
    w = Worker(s, workdir / run / "w", workdir / f"{run}.log")
    w.rate_to(ends_of(s))
    w.stop()
    send(s, mixed(customers, events, now, seed=4))
    w = Worker(s, workdir / run / "w", workdir / f"{run}-again.log")
    try:
        return w.rate_to(ends_of(s))
    finally:
        w.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--small", type=int, default=10_000, help="customers of the comparison run")
    ap.add_argument("--profile", type=Path, help="py-spy samples the loading worker into this file")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    now = int(time.time() * 1000)
    run = f"scale-{uuid.uuid4().hex[:8]}"
    settings = settings_for(run, args.partitions, workdir)
    ensure_topics(settings, tracker_topics(settings))
    print(f"customers: {args.customers:,}  partitions: {args.partitions}  store: rocksdb")

    t0 = time.perf_counter()
    sent = send(settings, first_touches(args.customers, now, seed=1))
    print(f"produced {sent:,} first touches in {time.perf_counter() - t0:.0f} s")
    own = workdir / "own"
    w = Worker(settings, own, workdir / "worker.log", args.profile)
    load_rate = w.rate_to(ends_of(settings))
    print(f"loaded through the worker at {load_rate:,.0f} events/s")
    h = w.wait(lambda h: h.get("memory", {}).get("deadline_index", {}).get("customers", 0) > 0, "indexes")
    time.sleep(2)  # a clock tick builds the deadline index's runs
    mem = w.health()["memory"]
    rss = mem["rss_bytes"]
    di = mem["deadline_index"]
    print(
        f"worker resident memory: {rss / 1e6:,.0f} MB ({rss / args.customers:,.0f} bytes per customer held)"
    )
    print(
        f"deadline index: {di['customers']:,} customers, loaded run {di['loaded_run_bytes'] / 1e6:.1f} MB "
        f"({di['loaded_run_bytes'] / max(1, di['customers']):.0f} bytes per customer)"
    )
    print(
        f"state cache: {mem['state_cache']['entries']:,} decoded states "
        f"(limit {mem['state_cache']['limit']:,})"
    )
    w.stop()

    sizes = [
        len(r.value)
        for r in read_topic(settings, settings.changelog_topic, timeout_s=1200)
        if r.value and r.key and not r.key.startswith(b"__")
    ]
    print(
        f"stored bytes per customer (changelog values): mean {sum(sizes) / len(sizes):.0f}, max {max(sizes)}"
    )

    fresh = Worker(settings, workdir / "fresh", workdir / "fresh.log")
    h = fresh.wait(lambda h: h.get("ready"), "a fresh worker ready")
    fresh_s = time.perf_counter() - fresh.started
    read = sum(f["done"] for f in h.get("recovery", {}).values())
    print(f"a fresh worker (empty directory) recovered {read:,} changelog records, ready in {fresh_s:.1f} s")
    time.sleep(2)  # a clock tick builds the deadline index's runs from the scan
    mem = fresh.health()["memory"]
    di = mem["deadline_index"]
    print(
        f"  after its scan: resident {mem['rss_bytes'] / 1e6:,.0f} MB; deadline index {di['customers']:,} "
        f"customers, {di['loaded_run_bytes'] / 1e6:.1f} MB in runs "
        f"({di['loaded_run_bytes'] / max(1, di['customers']):.0f} bytes per customer)"
    )
    fresh.stop()
    send(settings, mixed(args.customers, args.events, now, seed=2))  # a backlog for the restart below
    again = Worker(settings, own, workdir / "worker-again.log")
    h = again.wait(lambda h: h.get("ready"), "the restarted worker ready")
    again_s = time.perf_counter() - again.started
    read = sum(f["done"] for f in h.get("recovery", {}).values())
    print(f"a restart on its own RocksDB directory read {read:,} changelog records, ready in {again_s:.1f} s")
    big = again.rate_to(ends_of(settings))
    again.stop()
    print(f"{args.events:,} mixed events over {args.customers:,} customers held: {big:,.0f} events/s")
    small = mixed_rate(args.small, args.events, args.partitions, workdir, now)
    print(f"{args.events:,} mixed events over {args.small:,} customers held: {small:,.0f} events/s")
    print(f"scale_ratio: {big / small:.2f}")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    with recorded("scale"):
        main()
