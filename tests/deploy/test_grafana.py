"""The generated Grafana dashboard: committed JSON equals what the code generates."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GEN = ROOT / "deploy" / "grafana" / "dashboards.py"


def test_the_committed_dashboard_is_what_the_code_generates() -> None:
    done = subprocess.run([sys.executable, str(GEN), "--check"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_the_dashboard_shows_what_operations_teams_watch() -> None:
    board = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "journey.json").read_text())
    titles = " | ".join(p["title"] for p in board["panels"])
    for what in (
        "Funnel",
        "Customers per stage",
        "Conversion",
        "time in stage",
        "Bottleneck",
        "by channel",
        "Dead letters",
        "lag",
        "Stalls",
        "Nudges",
    ):
        assert what.lower() in titles.lower(), what
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert all(
        t["datasource"]["uid"] == "journey-prometheus" for p in board["panels"] for t in p.get("targets", [])
    )
    # Bounded labels only: no customer or event ids anywhere.
    assert not any("customer_id" in e or "event_id" in e for e in exprs)


def test_provisioning_points_grafana_at_the_dashboard_and_the_datasource() -> None:
    import yaml

    ds = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert ds["datasources"][0]["uid"] == "journey-prometheus"
    prov = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/journey.yml").read_text())
    assert prov["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
