"""Recovery through the real broker: a worker restarted on its own RocksDB
directory reads only the changelog's tail, and with standby replicas the
survivor of a two-worker group takes a partition over without a full
recovery. ``/health`` (its ``recovery`` section) says where each began."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from models import parse_touchpoint
from models.events import Touchpoint
from stream.engine.partitioning import key_partition
from stream.tools.kafka import ensure_topics, tracker_topics
from stream.tools.simulator import generate
from tests.integration.harness import (
    MAP,
    WorkerProcess,
    changelog_records,
    make_settings,
    send_messages,
    stored_states,
    wait_for,
    wait_processed,
)


def changelog_counts(settings: Any) -> Counter[int]:
    """Changelog records per partition (customers' values and tombstones)."""
    return Counter(r.partition for r in changelog_records(settings) if r.key and not r.key.startswith(b"__"))


def recovery(worker: WorkerProcess) -> dict[str, Any]:
    h = worker.health() or {}
    return h.get("recovery", {})  # type: ignore[no-any-return]


def test_a_restart_on_its_own_rocksdb_directory_reads_only_the_tail(
    spawn: list[WorkerProcess], tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, store="rocksdb://", partitions=2, standby_replicas=0)
    ensure_topics(settings, tracker_topics(settings))
    worker = WorkerProcess(settings, tmp_path / "worker.log", data_dir=tmp_path / "own").start()
    spawn.append(worker)
    first = worker.wait_ready()
    assert all(f["start"] == -1 for f in first["recovery"].values())  # a fresh directory: nothing held
    messages = generate(300, seed=11)
    send_messages(settings, messages)
    wait_processed(settings, [worker])
    worker.stop()
    counts = changelog_counts(settings)
    assert sum(counts.values()) >= 300

    again = WorkerProcess(settings, tmp_path / "worker-again.log", data_dir=tmp_path / "own").start()
    spawn.append(again)
    again.wait_ready()
    rec = wait_for("both partitions recovered", lambda: (r := recovery(again)) and len(r) == 2 and r)
    for p, f in rec.items():
        assert f["state"] == "recovered"
        assert f["start"] >= 0, f"partition {p} began from nothing: {f}"
        assert f["done"] < counts[int(p)] // 2, f"partition {p} read {f['done']} of {counts[int(p)]}: {f}"
    # and it serves what it had before
    want = {m.key.decode() for m in messages if m.key}
    assert set(stored_states(settings)) == want
    some = sorted(want)[0]
    status, body = again.get(f"/customers/{some}")
    assert status == 200 and body["customer_id"] == some


def test_with_standby_replicas_a_failover_reads_only_the_tail(
    spawn: list[WorkerProcess], tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, store="rocksdb://", partitions=4, standby_replicas=1)
    ensure_topics(settings, tracker_topics(settings))
    a = WorkerProcess(settings, tmp_path / "worker-a.log").start()
    b = WorkerProcess(settings, tmp_path / "worker-b.log").start()
    spawn += [a, b]
    a.wait_ready()
    b.wait_ready()
    owned_by_a = wait_for(
        "the partitions shared",
        lambda: (
            (ha := a.health())
            and (hb := b.health())
            and len(ha["partitions"]) == 2
            and len(hb["partitions"]) == 2
            and ha["partitions"]
        ),
    )
    messages = generate(400, seed=12)
    send_messages(settings, messages)
    wait_processed(settings, [a, b])
    counts = changelog_counts(settings)
    time.sleep(3.0)  # the standby copies follow the changelog continuously; let them catch up

    a.kill()  # SIGKILL: no goodbye; B takes A's partitions over after the session timeout
    wait_for(
        "B owning all four partitions, ready",
        lambda: (h := b.health()) and h.get("ready") and len(h["partitions"]) == 4,
        timeout=90,
    )
    rec = wait_for(
        "A's partitions recovered on B",
        lambda: (
            (r := recovery(b))
            and all(r.get(str(p), {}).get("state") == "recovered" for p in owned_by_a)
            and r
        ),
    )
    for p in owned_by_a:
        f = rec[str(p)]
        assert f["start"] >= 0, f"B took partition {p} over from nothing (no standby copy): {f}"
        assert f["done"] < counts[p] // 2, f"B read {f['done']} of {counts[p]} records of partition {p}: {f}"

    # A customer that lived on A is served by B, as the fold says.
    moved = sorted({m.key.decode() for m in messages if m.key and key_partition(m.key, 4) in owned_by_a})[0]
    events = [
        e
        for m in messages
        if m.key == moved.encode() and isinstance(e := parse_touchpoint(m.value, MAP), Touchpoint)
    ]
    status, body = b.get(f"/customers/{moved}")
    assert status == 200 and body["events"] == len({e.event_id for e in events})
