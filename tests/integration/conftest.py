"""Integration tests need the real local stack; they fail, not skip, without it."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream.settings import Settings
from tests.integration.harness import WorkerProcess, make_settings


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session", autouse=True)
def local_stack() -> None:
    broker = os.environ.get("JOURNEY_TEST_BROKER", "kafka://127.0.0.1:9092").removeprefix("kafka://")
    host, port = broker.rsplit(":", 1)
    if not _port_open(host, int(port)):
        pytest.fail(f"no Kafka broker at {broker}: run deploy/local/stack.sh up (make test does)")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    """Workers started by a test; all stopped at the end, logs kept in tmp_path."""
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        w.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
