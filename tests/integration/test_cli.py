"""`journey emit` and `journey status` against a real worker and broker."""

from __future__ import annotations

import subprocess
from pathlib import Path

from stream.settings import Settings
from tests.integration.harness import JOURNEY, WorkerProcess, dead_letters, wait_processed


def run(settings: Settings, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {"PATH": "/usr/bin:/bin", **settings.to_env()}
    return subprocess.run([JOURNEY, *args], input=stdin, env=env, capture_output=True, timeout=120)


def test_emit_then_status_and_lookup(settings: Settings, spawn: list[WorkerProcess], tmp_path: Path) -> None:
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    spawn.append(worker)
    worker.wait_ready()
    lines = (
        b'{"event_id":"1","customer_id":"ann","type":"ad_click","channel":"ads","timestamp":"2026-11-20T10:00:00Z"}\n'
        b"\n"
        b'{"event_id":"2","customer_id":"ann","type":"add_to_cart","channel":"web","timestamp":"2026-11-20T10:05:00Z"}\n'
        b'{"event_id":"3","customer_id":"bob","type":"purchase","channel":"store","timestamp":1795503600000}\n'
        b"this is not json\n"
    )
    sent = run(settings, "emit", stdin=lines)
    assert sent.returncode == 0, sent.stderr
    assert b"sent 4 events" in sent.stderr
    wait_processed(settings, [worker])

    status, ann = worker.get("/customers/ann")
    assert status == 200
    assert ann["stage"] == "cart" and ann["first_touch_channel"] == "ads" and ann["events"] == 2
    assert [s["stage"] for s in ann["stages"]] == ["awareness", "cart"]
    assert ann["stage_entered_at"] == "2026-11-20T10:05:00.000Z"

    shown = run(settings, "status")
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout.decode()
    assert out.startswith("2 customers")
    counts = {line.split()[0]: int(line.split()[1]) for line in out.splitlines()[1:8]}
    assert counts["cart"] == 1 and counts["purchase"] == 1 and counts["awareness"] == 0

    dead, _ = dead_letters(settings)
    assert dict(dead) == {(b"this is not json", "not_json"): 1}
