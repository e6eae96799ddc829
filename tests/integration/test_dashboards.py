"""The dashboard's queries and the recording rules against the real Prometheus
that deploy/local/stack.sh runs, scraping a real worker."""

from __future__ import annotations

import json
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from stream.tools.kafka import ensure_topics, tracker_topics
from stream.tools.simulator import generate
from tests.integration.harness import WorkerProcess, make_settings, send_messages, stored_states, wait_for

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = "http://127.0.0.1:9090"
# deploy/prometheus/prometheus.yml scrapes 6066-6068; the tests take the last.
SCRAPED_PORT = 6068


def prom(path: str, **params: str) -> Any:
    url = f"{PROMETHEUS}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return body["data"]


def dashboard_queries() -> list[str]:
    sys.path.insert(0, str(ROOT / "deploy" / "grafana"))
    import dashboards  # type: ignore[import-not-found]

    return [str(e) for e in dashboards.queries()]


def test_every_dashboard_query_runs_on_the_real_prometheus_with_the_journey_rules() -> None:
    groups = {g["name"] for g in prom("/api/v1/rules")["groups"]}
    assert {"journey-conversion", "journey-live", "journey-alerts"} <= groups
    for expr in dashboard_queries():
        prom("/api/v1/query", query=expr.replace("$__rate_interval", "1m"))


def test_prometheus_sees_a_worker_and_the_recorded_stage_counts_match(
    spawn: list[WorkerProcess], tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, partitions=2)
    ensure_topics(settings, tracker_topics(settings))
    worker = WorkerProcess(settings, tmp_path / "worker.log", web_port=SCRAPED_PORT).start()
    spawn.append(worker)
    worker.wait_ready()
    send_messages(settings, generate(300, seed=5))
    instance = f"127.0.0.1:{SCRAPED_PORT}"

    def scraped() -> dict[str, float] | None:
        res = prom("/api/v1/query", query=f'journey_customers{{instance="{instance}"}}')["result"]
        got = {r["metric"]["stage"]: float(r["value"][1]) for r in res}
        want = {s.stage for s in stored_states(settings).values()}
        return got if got and sum(got.values()) == len(stored_states(settings)) and want <= set(got) else None

    got = wait_for("Prometheus to scrape the worker's stage counts", scraped, timeout=90, every=2)
    per_stage: dict[str, float] = {}
    for s in stored_states(settings).values():
        per_stage[s.stage] = per_stage.get(s.stage, 0) + 1
    assert {k: v for k, v in got.items() if v} == per_stage
    # The recording rule sums every worker Prometheus scrapes.
    recorded = wait_for(
        "the journey:customers:sum recording rule",
        lambda: prom("/api/v1/query", query="journey:customers:sum")["result"],
        timeout=60,
        every=2,
    )
    assert {r["metric"]["stage"] for r in recorded} >= set(per_stage)
