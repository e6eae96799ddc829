"""deploy/local/supervise.sh: the demo's restart loop for workers that exit non-zero."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

SUPERVISE = Path(__file__).resolve().parents[2] / "deploy" / "local" / "supervise.sh"
ENV = {**os.environ, "SUPERVISE_PAUSE_S": "0.05"}


def test_restarts_after_a_failure_and_ends_on_a_clean_exit(tmp_path: Path) -> None:
    count = tmp_path / "runs"
    script = (
        f'n=$(cat {count} 2>/dev/null || echo 0); echo $((n+1)) > {count}; [ "$n" -lt 2 ] && exit 75; exit 0'
    )
    done = subprocess.run([str(SUPERVISE), "bash", "-c", script], env=ENV, capture_output=True, timeout=30)
    assert done.returncode == 0
    assert count.read_text().strip() == "3"
    assert done.stderr.decode().count("exited with status 75") == 2


def test_sigterm_stops_the_command_and_the_loop(tmp_path: Path) -> None:
    marker = tmp_path / "stopped"
    script = f"trap 'touch {marker}; exit 0' TERM; while true; do sleep 0.1; done"
    proc = subprocess.Popen([str(SUPERVISE), "bash", "-c", script], env=ENV)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert marker.exists()
