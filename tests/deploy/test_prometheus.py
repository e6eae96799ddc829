"""The Prometheus config and rules: checked and unit-tested with promtool."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

PROM = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def promtool(*args: str) -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is missing: deploy/local/install-deps.sh installs Debian's prometheus")
    done = subprocess.run([exe, *args], cwd=PROM, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


@pytest.mark.parametrize("config", ["prometheus.yml", "compose.yml"])
def test_the_configs_and_their_rule_files_are_valid(config: str) -> None:
    out = promtool("check", "config", config)
    assert "2 rule files found" in out


def test_every_rule_file_is_valid() -> None:
    promtool("check", "rules", *sorted(str(p.relative_to(PROM)) for p in (PROM / "rules").glob("*.yml")))


def test_each_alert_fires_and_stays_quiet_where_it_should() -> None:
    out = promtool("test", "rules", "tests/journey.test.yml")
    assert "SUCCESS" in out


def test_every_alert_has_a_unit_test() -> None:
    import yaml

    alerts = {
        r["alert"]
        for g in yaml.safe_load((PROM / "rules" / "journey.alerts.yml").read_text())["groups"]
        for r in g["rules"]
    }
    tested = {
        t["alertname"]
        for case in yaml.safe_load((PROM / "tests" / "journey.test.yml").read_text())["tests"]
        for t in case.get("alert_rule_test", [])
    }
    assert alerts == tested
