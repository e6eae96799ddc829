"""Event-to-API latency: how soon a new customer's first event is visible at
``GET /customers/{id}``, idle and under background load, in one run.

Needs the local stack (deploy/local/stack.sh up). Starts a real ``journey
worker`` (memory store) on fresh topics. A probe sends one event for a brand
new customer every 100 ms (acked by the broker before the clock starts) and
polls the worker's API every 2 ms until the customer is there. Measured
first idle, then while a second producer sends simulator events at
``--load`` events/s. Prints p50 and p99 of both and, last, ``p99_ms: X``
(under load). Not a test: the numbers move with the machine's load.

    .venv/bin/python bench/latency.py [--samples 200] [--load 1000]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results import recorded  # noqa: E402
from stream.settings import Settings  # noqa: E402
from stream.tools.kafka import ensure_topics, producer, tracker_topics  # noqa: E402
from stream.tools.simulator import generate  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def visible(port: int, cid: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/customers/{cid}", timeout=5) as resp:
            return resp.status == 200
    except urllib.error.HTTPError:
        return False


def probe(settings: Settings, port: int, samples: int) -> list[float]:
    prod = producer(settings, linger_ms=0)
    out: list[float] = []
    try:
        for _ in range(samples):
            cid = f"probe-{uuid.uuid4().hex[:12]}"
            body = {
                "event_id": f"{cid}-e0",
                "customer_id": cid,
                "type": "page_view",
                "channel": "web",
                "timestamp": int(time.time() * 1000),
            }
            prod.send(settings.touchpoints_topic, key=cid.encode(), value=orjson.dumps(body)).get(timeout=30)
            sent = time.perf_counter()
            deadline = sent + 30
            while not visible(port, cid):
                if time.perf_counter() > deadline:
                    raise SystemExit(f"{cid} not visible after 30 s")
                time.sleep(0.002)
            out.append((time.perf_counter() - sent) * 1000)
            time.sleep(0.1)
    finally:
        prod.close()
    return out


def summary(label: str, ms: list[float]) -> float:
    p99 = statistics.quantiles(ms, n=100)[98]
    print(f"{label}: p50 {statistics.median(ms):.0f} ms, p99 {p99:.0f} ms ({len(ms)} samples)")
    return p99


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--load", type=float, default=1000.0, help="background events/s")
    args = parser.parse_args()

    run = f"lat-{uuid.uuid4().hex[:8]}"
    workdir = Path(tempfile.mkdtemp(prefix=f"{run}-"))
    settings = Settings(
        app_id=run,
        touchpoints_topic=f"{run}-touchpoints",
        transitions_topic=f"{run}-transitions",
        dlq_topic=f"{run}-dlq",
        data_dir=workdir / "data",
    )
    ensure_topics(settings, tracker_topics(settings))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOURNEY_")}
    env.update(settings.to_env())
    env["JOURNEY_WEB_PORT"] = str(port)
    journey = str(Path(sys.executable).with_name("journey"))
    with (workdir / "worker.log").open("wb") as log:
        proc = subprocess.Popen([journey, "worker"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"worker not ready; log: {workdir / 'worker.log'}") from None
                time.sleep(0.5)
        summary("idle", probe(settings, port, args.samples // 2))

        stop = threading.Event()
        messages = generate(50_000, seed=3)

        def load() -> None:
            prod = producer(settings, linger_ms=5)
            try:
                start = time.monotonic()
                for sent, m in enumerate(messages, 1):
                    if stop.is_set():
                        break
                    prod.send(settings.touchpoints_topic, key=m.key, value=m.value)
                    ahead = sent / args.load - (time.monotonic() - start)
                    if ahead > 0:
                        time.sleep(ahead)
            finally:
                prod.close()

        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        time.sleep(2)
        loaded = summary(
            f"with {args.load:g} events/s of background load", probe(settings, port, args.samples)
        )
        stop.set()
        loader.join(timeout=30)
        print(f"p99_ms: {loaded:.0f}")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    with recorded("latency"):
        main()
