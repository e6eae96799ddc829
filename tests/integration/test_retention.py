"""Retention through the real broker: an idle customer is forgotten by the
worker's clock (a changelog tombstone, counted), a defected one sooner, and a
later event starts a new journey. Event times are set in the past, so the
limits are already reached when the events arrive; no test sleeps through one."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

from models import load_map
from models.events import Touchpoint
from stream.tools.kafka import ensure_topics, tracker_topics
from stream.tools.simulator import SimMessage
from tests.integration.harness import (
    WorkerProcess,
    changelog_records,
    fold_topic,
    make_settings,
    send_messages,
    stored_states,
    wait_for,
    worker_metric,
)

DEMO_MAP_PATH = Path(__file__).resolve().parents[2] / "deploy" / "local" / "demo-map.yaml"
_ids = itertools.count()


def msg(cid: str, etype: str, ago_s: float) -> SimMessage:
    ev = Touchpoint(f"{cid}-e{next(_ids)}", cid, etype, "web", int(time.time() * 1000 - ago_s * 1000))
    return SimMessage(cid.encode(), ev.to_json())


def test_idle_customers_are_forgotten_and_come_back_as_new(
    spawn: list[WorkerProcess], tmp_path: Path
) -> None:
    map_path = tmp_path / "map.yaml"
    map_path.write_text(DEMO_MAP_PATH.read_text() + "\nretention: {idle: 2h, exited: 30m}\n")
    jmap = load_map(map_path)
    settings = make_settings(tmp_path, map_path=map_path, partitions=2)
    ensure_topics(settings, tracker_topics(settings))
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    spawn.append(worker)
    worker.wait_ready()

    send_messages(
        settings,
        [
            msg("idle", "page_view", 3 * 3600),  # 3 hours idle: past the 2 h limit
            msg("quit", "purchase", 3600),
            msg("quit", "unsubscribe", 3000),  # defected 50 minutes ago: past the 30 m limit
            msg("recent", "page_view", 60),  # a minute ago: kept
            msg("quit-recently", "purchase", 120),
            msg("quit-recently", "unsubscribe", 60),  # defected a minute ago: kept
        ],
    )

    def forgotten(stage: str) -> float:
        try:
            return worker_metric(worker, "journey_customers_forgotten_total", stage=stage)
        except AssertionError:  # not counted yet
            return 0.0

    wait_for(
        "the idle and the defected customer forgotten",
        lambda: forgotten("awareness") == forgotten("defected") == 1,
    )
    states = wait_for("the tombstones", lambda: (s := stored_states(settings)) and "idle" not in s and s)
    assert sorted(states) == ["quit-recently", "recent"]
    assert states["quit-recently"].stage == "defected"
    tombstones = [
        r.key for r in changelog_records(settings) if r.value is None and r.key and r.key[:2] != b"__"
    ]
    assert sorted(tombstones) == [b"idle", b"quit"]
    status, _ = worker.get("/customers/idle")
    assert status == 404

    # A later event for a forgotten customer starts a new journey.
    send_messages(settings, [msg("idle", "add_to_cart", 1)])
    back = wait_for("the new journey", lambda: stored_states(settings).get("idle"))
    assert back.events == 1 and back.stage == "cart" and list(back.stages) == ["cart"]
    status, body = worker.get("/customers/idle")
    assert status == 200 and body["events"] == 1

    # And the table is still the plain fold of the topic, clock records included.
    assert stored_states(settings) == fold_topic(settings, jmap)
