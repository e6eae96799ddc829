"""Integration tests need the real local stack; they fail, not skip, without it."""

from __future__ import annotations

import inspect
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


# What stops or hangs the shared stack (or flushes Redis's scripts) for every
# test running at the same time: such a test must be marked stack_fault, and
# make test runs those one at a time after the others (deploy/local/run-tests.sh).
STACK_FAULTS = ("KafkaOutage(", "RedisOutage(", "RedisHang(", "script_flush(")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
        func = getattr(item, "function", None)
        if func is None or item.get_closest_marker("stack_fault") is not None:
            continue
        source = inspect.getsource(func)
        fault = next((f for f in STACK_FAULTS if f in source), None)
        if fault is not None:
            raise pytest.UsageError(
                f"{item.nodeid} uses {fault[:-1]} but is not marked stack_fault: mark it, so that "
                "make test runs it alone (tests running beside it would see the fault too)"
            )
