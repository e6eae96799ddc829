"""Faults of the infrastructure end cleanly: topics that vanish under a running
worker make it say so once and exit for its supervisor; SIGTERM stops a
worker within JOURNEY_STOP_TIMEOUT_S in any state (the broker away, here)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from stream.tools.kafka import admin, tracker_topics
from stream.tools.simulator import generate
from tests.integration.harness import (
    KafkaOutage,
    WorkerProcess,
    make_settings,
    send_messages,
    start_ready_worker,
    wait_applying,
    wait_processed,
)


def test_a_worker_whose_topics_vanish_says_so_once_and_exits(
    spawn: list[WorkerProcess], tmp_path: Path
) -> None:
    s = make_settings(tmp_path, partitions=2, watchdog_interval_s=1.0)
    w = start_ready_worker(s, tmp_path, spawn)
    send_messages(s, generate(50, seed=71))
    wait_processed(s, [w])
    client = admin(s)
    try:
        client.delete_topics([t.name for t in tracker_topics(s)] + [s.changelog_topic])
    finally:
        client.close()
    assert w.proc is not None
    try:
        rc = w.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the worker did not exit after its topics vanished:\n{w.tail()}") from None
    assert rc == 69, w.tail()
    log = w.log_path.read_text(errors="replace")
    assert log.count("are gone from the cluster") == 1
    assert len(log.splitlines()) < 2000


@pytest.mark.stack_fault
def test_sigterm_stops_a_worker_within_the_bound_with_the_broker_away(
    spawn: list[WorkerProcess], tmp_path: Path
) -> None:
    s = make_settings(tmp_path, partitions=2, stop_timeout_s=8.0)
    w = start_ready_worker(s, tmp_path, spawn)
    send_messages(s, generate(3000, seed=72))
    wait_applying(w)
    assert w.proc is not None
    with KafkaOutage():
        time.sleep(3)
        start = time.monotonic()
        w.proc.send_signal(signal.SIGTERM)
        try:
            rc = w.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"SIGTERM did not stop the worker in 30 s:\n{w.tail()}") from None
        took = time.monotonic() - start
    assert took < 8.0 + 5.0, took
    assert rc in (0, 75), (rc, w.tail())
    log = w.log_path.read_text(errors="replace")
    # The outage's repeated errors are logged once per interval with a count.
    assert len(log.splitlines()) < 2000, len(log.splitlines())
