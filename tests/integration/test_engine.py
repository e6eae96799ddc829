"""The engine under faults, through the real broker: broker restarts, repeated
SIGKILLs, a stalled worker. Each ends with the plain fold, committed offsets
at the end of the log, and every partition consumed.

The 60 s outage runs when JOURNEY_TEST_LONG=1 (bench/soak.sh sets it).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from stream.settings import Settings
from stream.tools.kafka import ensure_topics, group_offsets, tracker_topics
from stream.tools.simulator import generate
from tests.integration.harness import (
    KafkaOutage,
    WorkerProcess,
    assert_equals_fold,
    expected,
    make_settings,
    send_messages,
    wait_applying,
    wait_processed,
)

NOW_MS = 1_795_503_600_000
LONG = os.environ.get("JOURNEY_TEST_LONG") == "1"


def assert_all_consumed(settings: Settings, worker: WorkerProcess, within_s: float = 30.0) -> None:
    """Committed == end on every partition, and the worker owns and reports them all, healthy.

    Polled for ``within_s`` (about ten commit intervals): the worker's own clock
    records (a stall deadline that came, then the nudge window it opened) can
    still land after the apps' events are all committed, and their commit
    follows within a commit interval. Commits that never reach the end fail.
    """
    deadline = time.monotonic() + within_s
    while True:
        try:
            _all_consumed(settings, worker)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def _all_consumed(settings: Settings, worker: WorkerProcess) -> None:
    offsets = group_offsets(settings, settings.app_id, settings.touchpoints_topic)
    assert all(c == e for c, e in offsets.values()), offsets
    status, health = worker.get("/health")
    assert status == 200 and health["problems"] == {}, health
    assert health["partitions"] == list(range(settings.partitions))
    for p, prog in health["progress"].items():
        assert prog["lag"] == 0 and prog["commit_lag"] == 0, (p, prog)
        assert prog["processed"] == prog["committed"] == offsets[int(p)][1], (p, prog)


@pytest.mark.stack_fault
@pytest.mark.parametrize(
    "down_s", [10.0, pytest.param(60.0, marks=pytest.mark.skipif(not LONG, reason="JOURNEY_TEST_LONG=1"))]
)
def test_broker_restart_mid_stream(down_s: float, spawn: list[WorkerProcess], tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, store="rocksdb://", stall_unready_s=down_s + 60, stall_exit_s=down_s + 120
    )
    messages = generate(5000, seed=21, duplicates=0.05, malformed=0.02, now_ms=NOW_MS)
    want = expected(messages)
    ensure_topics(settings, tracker_topics(settings))
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    spawn.append(worker)
    worker.wait_ready()

    cut = len(messages) * 2 // 3
    send_messages(settings, messages[:cut])  # a backlog the worker is busy with...
    wait_applying(worker)
    with KafkaOutage():  # ...when the broker goes away
        time.sleep(down_s)
    send_messages(settings, messages[cut:])
    wait_processed(settings, [worker], timeout=240)

    assert worker.proc is not None and worker.proc.poll() is None, "the worker survived the outage"
    assert_equals_fold(settings, want)
    assert_all_consumed(settings, worker)


@pytest.mark.stack_fault
def test_broker_restart_on_a_stack_with_history(spawn: list[WorkerProcess], tmp_path: Path) -> None:
    """A group that lived through a SIGKILL, a changelog to recover, a backlog: then the broker restarts."""
    settings = make_settings(tmp_path, store="rocksdb://")
    messages = generate(6000, seed=22, duplicates=0.05, malformed=0.02, now_ms=NOW_MS)
    want = expected(messages)
    ensure_topics(settings, tracker_topics(settings))
    first = WorkerProcess(settings, tmp_path / "worker-1.log", data_dir=tmp_path / "store-1").start()
    spawn.append(first)
    first.wait_ready()
    third = len(messages) // 3
    send_messages(settings, messages[:third])
    wait_applying(first)
    first.kill(signal.SIGKILL)

    # A new worker elsewhere (an empty store): it recovers the changelog first.
    send_messages(settings, messages[third : 2 * third])  # the backlog grows meanwhile
    second = WorkerProcess(settings, tmp_path / "worker-2.log", data_dir=tmp_path / "store-2").start()
    spawn.append(second)
    wait_applying(second, timeout=180)
    with KafkaOutage():
        time.sleep(10)
    send_messages(settings, messages[2 * third :])
    wait_processed(settings, [second], timeout=240)

    assert_equals_fold(settings, want)
    assert_all_consumed(settings, second)


@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
def test_kill_rounds(store: str, spawn: list[WorkerProcess], tmp_path: Path) -> None:
    """SIGKILLs at random moments in one stream: five in 100,000 events under
    JOURNEY_TEST_LONG (make soak), two in 35,000 in make test."""
    rounds, customers, rate = (5, 17_000, 1200.0) if LONG else (2, 6_000, 800.0)
    settings = make_settings(tmp_path, store=store)
    messages = generate(customers, seed=23, duplicates=0.03, malformed=0.01, now_ms=NOW_MS)
    want = expected(messages)
    ensure_topics(settings, tracker_topics(settings))
    rng = random.Random(23)
    # About 85 s (44 s) of stream: the rounds (a start, a recovery and a kill
    # each) all fall inside it.
    sender = threading.Thread(target=send_messages, args=(settings, messages, rate))
    sender.start()
    store_dir = tmp_path / "store"
    for round_ in range(rounds):
        w = WorkerProcess(settings, tmp_path / f"worker-{round_}.log", data_dir=store_dir).start()
        spawn.append(w)
        wait_applying(w, timeout=180)
        time.sleep(rng.uniform(0.2, 2.5))
        assert sender.is_alive(), "the stream ended before the kills; slow the sender down"
        w.kill(signal.SIGKILL)
        assert w.proc is not None and w.proc.returncode == -signal.SIGKILL
    sender.join()
    last = WorkerProcess(settings, tmp_path / "worker-last.log", data_dir=store_dir).start()
    spawn.append(last)
    last.wait_ready(timeout=180)
    wait_processed(settings, [last], timeout=300)

    assert_equals_fold(settings, want)
    assert_all_consumed(settings, last)


@pytest.mark.stack_fault
def test_a_stalled_worker_says_so_then_exits_for_a_restart(
    spawn: list[WorkerProcess], tmp_path: Path
) -> None:
    """The broker gone with a backlog: unready and counted past the first limit, exit 75 past the second."""
    settings = make_settings(tmp_path, stall_unready_s=3.0, stall_exit_s=12.0, watchdog_interval_s=0.5)
    messages = generate(8000, seed=24, now_ms=NOW_MS)
    want = expected(messages)
    ensure_topics(settings, tracker_topics(settings))
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    spawn.append(worker)
    worker.wait_ready()
    send_messages(settings, messages)
    wait_applying(worker)
    # /health is watched from the moment the broker is told to stop: a broker
    # holding many partitions takes seconds to stop, and the worker may reach
    # its exit limit before the stop command returns.
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + 90

    def watch() -> None:
        while worker.proc is not None and worker.proc.poll() is None and time.monotonic() < deadline:
            try:
                status, body = worker.get("/health", timeout=3)
            except OSError:
                status, body = 0, {}  # exiting
            if status == 503 and body.get("problems"):
                seen.append(body)
            time.sleep(0.3)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with KafkaOutage() as outage:
        watcher.join()
        seen_unready = seen[-1] if seen else None
        assert seen_unready is not None, worker.tail()
        assert set(seen_unready["problems"].values()) <= {"stalled", "commit_stalled"}
        assert worker.proc is not None and worker.proc.returncode == 75, worker.tail()
        log = worker.log_path.read_text(errors="replace")
        assert "made no progress" in log and ("is stalled" in log or "is commit_stalled" in log)
        outage.end()
    # The supervisor's part: start it again; nothing is lost.
    again = WorkerProcess(settings, tmp_path / "worker-again.log").start()
    spawn.append(again)
    wait_processed(settings, [again], timeout=240)
    assert_equals_fold(settings, want)
