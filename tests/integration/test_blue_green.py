"""Blue/green through the real broker and Redis, under load: a shadow group
runs a changed map from the start of the topic, catches up, and ``journey
promote`` makes it the active one. At every moment of the switch every
customer is in the serving view and the active group's API answers for
them; afterwards the view is the new map's, the gauges and the nudges are
the new group's, and the old group exports only the shadow gauge."""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from pathlib import Path

import redis

from models import Touchpoint, load_map
from models.journey_map import parse_map
from stream.tools.kafka import ensure_topics, tracker_topics
from stream.tools.simulator import SimMessage
from tests.integration.harness import (
    JOURNEY,
    WorkerProcess,
    make_settings,
    send_messages,
    wait_for,
    wait_processed,
    worker_metric,
)

DEFAULT_MAP = Path(__file__).resolve().parents[2] / "models" / "default_map.yaml"
TYPES = ["page_view", "product_view", "search", "add_to_cart", "checkout_started", "purchase"]


def test_a_blue_green_switch_under_load_never_loses_a_customer(
    spawn: list[WorkerProcess], tmp_path: Path
) -> None:
    blue = make_settings(tmp_path, partitions=2)
    green_topics = make_settings(tmp_path, partitions=2)
    new_map = tmp_path / "green.yaml"
    new_map.write_text(
        DEFAULT_MAP.read_text().replace(
            "  - name: cart\n    enter_on: [add_to_cart, checkout_started]",
            "  - name: basket\n    enter_on: [add_to_cart]\n  - name: cart\n    enter_on: [checkout_started]",
        )
    )
    green_version = parse_map(new_map.read_text(), "green").version
    # Green: its own app id (table, offsets) and output topics; the same
    # touchpoints topic, Redis prefix (the gate, the active key) and view.
    green = green_topics.model_copy(
        update={
            "touchpoints_topic": blue.touchpoints_topic,
            "redis_prefix": blue.redis_prefix,
            "view_prefix": blue.view_prefix,
            "map_path": new_map,
            "role": "shadow",
        }
    )
    ensure_topics(blue, tracker_topics(blue))
    ensure_topics(green, tracker_topics(green))
    b = WorkerProcess(blue, tmp_path / "blue.log").start()
    spawn.append(b)
    b.wait_ready()

    sent: dict[str, float] = {}  # customer -> when first sent
    stop = threading.Event()
    rng = random.Random(5)

    def load() -> None:
        n = 0
        while not stop.is_set():
            batch = []
            for _ in range(20):
                cid = f"bg-{rng.randrange(400)}"
                n += 1
                ev = Touchpoint(f"{cid}-{n}", cid, rng.choice(TYPES), "web", int(time.time() * 1000))
                batch.append(SimMessage(cid.encode(), ev.to_json()))
                sent.setdefault(cid, time.monotonic())
            send_messages(blue, batch)
            time.sleep(0.2)  # about 100 events/s

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    view = redis.Redis.from_url(blue.redis_url, decode_responses=True)
    missing: list[str] = []
    watching = threading.Event()

    def watch() -> None:
        """Every customer sent more than 5 s ago: in the view, and answered by the active group."""
        while not stop.is_set():
            if watching.is_set():
                settled = [c for c, t in list(sent.items()) if time.monotonic() - t > 5]
                pipe = view.pipeline()
                for c in settled:
                    pipe.hget(f"{blue.view_prefix}{c}", "stage")
                for c, stage in zip(settled, pipe.execute(), strict=True):
                    if stage is None:
                        missing.append(f"{c} not in the view")
                actives = [w for w in workers if w.request("GET", "/health?active=1")[0] == 200]
                if not actives:
                    missing.append("no active worker")
                for c in rng.sample(settled, min(10, len(settled))):
                    for w in actives:
                        status = w.get(f"/customers/{c}")[0]
                        if status != 200:
                            missing.append(f"{c}: {status} from {w.log_path.stem}")
            time.sleep(0.3)

    workers = [b]
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    wait_for("blue to serve the first customers", lambda: len(sent) > 50 and view.dbsize() > 0)
    time.sleep(5)
    watching.set()

    # The shadow starts from the beginning of the topic and catches up.
    g = WorkerProcess(green, tmp_path / "green.log").start()
    spawn.append(g)
    g.wait_ready()
    workers.append(g)
    assert g.request("GET", "/health?active=1")[0] == 503 and b.request("GET", "/health?active=1")[0] == 200
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOURNEY_")}
    env.update(green.to_env())
    groups = subprocess.run(
        [JOURNEY, "groups", blue.app_id, green.app_id], env=env, capture_output=True, text=True
    )
    assert groups.returncode == 0 and green.app_id in groups.stdout, groups.stderr
    promoted = subprocess.run(
        [JOURNEY, "promote", green.app_id, "--max-lag", "200", "--wait", "120"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert promoted.returncode == 0, promoted.stderr
    wait_for("green active", lambda: g.request("GET", "/health?active=1")[0] == 200, timeout=10)
    wait_for("blue a shadow", lambda: b.request("GET", "/health?active=1")[0] == 503, timeout=10)
    time.sleep(5)  # the load goes on through the switch and after it
    stop.set()
    loader.join()
    watcher.join()
    assert missing == [], missing[:10]

    wait_processed(green, [g])
    wait_processed(blue, [b])
    # The view is green's now: every customer written under the new map.
    wait_for(
        "every customer in the view from the new map",
        lambda: all(view.hget(f"{blue.view_prefix}{c}", "map_version") == green_version for c in sent),
        timeout=60,
    )
    baskets = [c for c in sent if view.hget(f"{blue.view_prefix}{c}", "stage") == "basket"]
    assert baskets  # the new map's stage, served
    # The gauges: green counts every customer once; blue only as a shadow.
    stages = [st.name for st in parse_map(new_map.read_text(), "g").stages]
    assert sum(worker_metric(g, "journey_customers", stage=st) for st in stages) == len(sent)
    metrics = b.get("/metrics")
    text = urllib_text(b, "/metrics")
    assert "journey_shadow_customers{" in text and "\njourney_customers{" not in text, metrics[0]
    assert load_map().name == "default"


def urllib_text(w: WorkerProcess, path: str) -> str:
    import urllib.request

    with urllib.request.urlopen(w.url + path, timeout=10) as resp:
        return str(resp.read().decode())
