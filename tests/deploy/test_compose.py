"""docker-compose.yml and the Dockerfile, checked without a Docker engine."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream.settings import Settings
from stream.tools.cli import main as cli

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]


def test_services_are_all_there() -> None:
    assert {"kafka", "redis", "worker", "simulator", "prometheus", "grafana"} <= set(SERVICES)


def test_workers_reach_redis_for_nudges() -> None:
    assert SERVICES["worker"]["environment"]["JOURNEY_REDIS_URL"] == "redis://redis:6379/0"


def test_prometheus_and_grafana_mount_files_that_exist() -> None:
    for service in ("prometheus", "grafana"):
        for volume in SERVICES[service]["volumes"]:
            src = volume.split(":")[0]
            assert (ROOT / src).exists(), f"{service} mounts missing {src}"
    config = SERVICES["prometheus"]["command"][0].removeprefix("--config.file=/etc/prometheus/")
    assert (ROOT / "deploy" / "prometheus" / config).exists()
    # Grafana's version is the one the dashboard SDK generates for.
    assert SERVICES["grafana"]["image"] == "grafana/grafana:10.1.0"


def test_workers_are_restarted_when_they_exit() -> None:
    assert SERVICES["worker"]["restart"] == "unless-stopped"


def test_dockerfile_copies_files_that_exist() -> None:
    for service in ("worker", "simulator"):
        assert SERVICES[service]["build"] == "."
    copies = re.findall(r"^COPY\s+(.+?)\s+\S+$", (ROOT / "Dockerfile").read_text(), re.M)
    assert copies
    for line in copies:
        for src in line.split():
            assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"


def test_every_journey_variable_is_a_real_setting() -> None:
    names = {Settings.env_name(f) for f in Settings.model_fields}
    used: set[str] = set()
    for service in SERVICES.values():
        used |= {k for k in service.get("environment", {}) if k.startswith("JOURNEY_")}
    used |= set(re.findall(r"(JOURNEY_[A-Z_]+)=", (ROOT / "Dockerfile").read_text()))
    assert used
    assert used <= names, used - names
    for service in ("worker", "simulator"):
        env = SERVICES[service]["environment"]
        assert env["JOURNEY_BROKER"] == "kafka://kafka:19092"


def test_commands_are_journey_commands() -> None:
    assert 'ENTRYPOINT ["journey"]' in (ROOT / "Dockerfile").read_text()
    for service in ("worker", "simulator"):
        command = SERVICES[service]["command"]
        assert command[0] in cli.commands, command  # type: ignore[attr-defined]


def test_ports_match_the_services() -> None:
    kafka_env = SERVICES["kafka"]["environment"]
    assert "EXTERNAL://:9092" in kafka_env["KAFKA_LISTENERS"]
    assert "9092:9092" in SERVICES["kafka"]["ports"]
    assert "PLAINTEXT://kafka:19092" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]
    assert "6379:6379" in SERVICES["redis"]["ports"]
    # The worker's web port is the settings default, published without a
    # fixed host port so that `--scale worker=N` does not collide.
    default_port = str(Settings.model_fields["web_port"].default)
    assert SERVICES["worker"]["ports"] == [default_port]
    assert f"EXPOSE {default_port}" in (ROOT / "Dockerfile").read_text()


def _compose_client() -> list[str] | None:
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) and subprocess.run([*cmd, "version"], capture_output=True).returncode == 0:
            return cmd
    return None


@pytest.mark.skipif(_compose_client() is None, reason="no docker compose client on this machine")
def test_docker_compose_config_accepts_the_file() -> None:
    cmd = _compose_client()
    assert cmd is not None
    env = {**os.environ, "JOURNEY_API_TOKEN": "a-token-from-dotenv"}
    out = subprocess.run(
        [*cmd, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"], capture_output=True, env=env
    )
    assert out.returncode == 0, out.stderr.decode()


def _dockerfile_env() -> dict[str, str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out: dict[str, str] = {}
    for line in re.findall(r"^ENV\s+(.+)$", text, re.M):
        for name, value in re.findall(r'(JOURNEY_[A-Z_]+)=("[^"]*"|\S+)', line):
            out[name] = value.strip('"')
    return out


def test_bind_token_and_scrape_config_agree() -> None:
    """The worker as compose runs it: the Dockerfile's environment, then the
    service's, with the token a user sets in .env. It must listen on all
    interfaces (so Prometheus and the other workers reach it), and Prometheus
    must scrape its port on a path that needs no token."""
    from stream.http.auth import OPEN_PATHS, effective_bind

    example = (ROOT / ".env.example").read_text()
    assert re.search(r"^JOURNEY_API_TOKEN=", example, re.M), "the example .env names the token"
    worker_env = dict(SERVICES["worker"]["environment"])
    token_ref = worker_env.pop("JOURNEY_API_TOKEN")
    # Compose interpolates it from .env and refuses to start without it.
    assert re.fullmatch(r"\$\{JOURNEY_API_TOKEN:\?.+\}", token_ref), token_ref
    env = {**_dockerfile_env(), **worker_env, "JOURNEY_API_TOKEN": "a-token-from-dotenv"}
    settings = Settings(**{k.removeprefix("JOURNEY_").lower(): v for k, v in env.items()})
    assert effective_bind(settings) == "0.0.0.0"
    # Without the token it would fall back to loopback: nobody could reach it.
    assert effective_bind(settings.model_copy(update={"api_token": None})) == "127.0.0.1"
    # The web host is left to the container's host name, which the other
    # containers resolve (forwarding); Prometheus finds every worker by name.
    assert settings.web_host == ""
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus" / "compose.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "journey")
    assert job["metrics_path"] in OPEN_PATHS
    sd = job["dns_sd_configs"][0]
    assert sd["names"] == ["worker"] and sd["port"] == settings.web_port
    assert str(settings.web_port) in SERVICES["worker"]["expose"]


def test_the_dotenv_file_is_never_committed() -> None:
    assert ".env" in (ROOT / ".gitignore").read_text().split()
