"""The HTTP API through the real stack: POST /events, the token, the OpenAPI document."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.events import REASONS
from stream.engine.partitioning import key_partition
from stream.settings import Settings
from stream.tools.kafka import ensure_topics, tracker_topics
from tests.integration.harness import KafkaOutage, WorkerProcess, make_settings, read_topic, wait_for

TOKEN = "s3cret-token"
NOW = 1_795_503_600_000


def event(cid: str, eid: str, etype: str = "page_view", **extra: Any) -> dict[str, Any]:
    return {"event_id": eid, "customer_id": cid, "type": etype, "channel": "web", "timestamp": NOW, **extra}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WorkerProcess, Settings]]:
    tmp = tmp_path_factory.mktemp("api")
    s = make_settings(
        tmp, partitions=2, api_token=TOKEN, api_max_events=5, api_max_bytes=4096, api_produce_timeout_s=3
    )
    ensure_topics(s, tracker_topics(s))
    worker = WorkerProcess(s, tmp / "worker.log").start()
    worker.wait_ready()
    yield worker, s
    worker.stop()


def post(worker: WorkerProcess, body: bytes, **kw: Any) -> tuple[int, Any, dict[str, str]]:
    return worker.request("POST", "/events", body, {"Content-Type": "application/json"}, **kw)


def test_the_token_guards_everything_but_health_and_metrics(api: tuple[WorkerProcess, Settings]) -> None:
    worker, _ = api
    status, body, headers = post(worker, orjson.dumps(event("t1", "e1")), auth=False)
    assert status == 401 and body["error"] == "unauthorized" and headers["WWW-Authenticate"] == "Bearer"
    assert worker.request("GET", "/customers/t1", auth=False)[0] == 401
    assert worker.request("GET", "/openapi.json", headers={"Authorization": "Bearer wrong"})[0] == 401
    assert worker.request("GET", "/health", auth=False)[0] in (200, 503)
    assert worker.request("GET", "/metrics", auth=False)[0] == 200


def test_valid_and_invalid_batches(api: tuple[WorkerProcess, Settings]) -> None:
    worker, s = api
    status, body, _ = post(worker, orjson.dumps(event("api-1", "a1", "add_to_cart")))
    assert (
        status == 200
        and body["accepted"] == 1
        and body["results"] == [{"index": 0, "status": "accepted", "event_id": "a1"}]
    )
    batch = [
        event("api-2", "b1"),
        event("api-2", "b2", "teleport"),
        {"customer_id": "api-3"},
        "not an object",
        event("api-3", "b3", channel="fax"),
    ]
    status, body, _ = post(worker, orjson.dumps(batch))
    assert status == 200 and (body["accepted"], body["rejected"]) == (1, 4)
    assert [r.get("reason") for r in body["results"]] == [
        None,
        "unknown_type",
        "missing_field",
        "not_object",
        "unknown_channel",
    ]
    assert all(r["reason"] in REASONS for r in body["results"] if r["status"] == "rejected")

    # Accepted events are in the topic, keyed by customer, on Kafka's partition for the key.
    def in_topic() -> list[Any]:
        return [r for r in read_topic(s, s.touchpoints_topic) if r.key in (b"api-1", b"api-2")]

    recs = wait_for("the accepted events in the topic", lambda: len(in_topic()) == 2 and in_topic())
    for r in recs:
        assert r.partition == key_partition(r.key, s.partitions)
    status, customer = wait_for("the customer", lambda: (c := worker.get("/customers/api-1"))[0] == 200 and c)
    assert customer["stage"] == "cart"

    # Limits and bad input: 4xx, never 5xx.
    assert post(worker, b"{not json")[0] == 400
    assert post(worker, orjson.dumps([event("x", f"e{i}") for i in range(6)]))[0] == 413
    assert post(worker, b"[" + b" " * 5000 + b"]")[0] == 413
    assert post(worker, b"[]")[:2] == (200, {"accepted": 0, "rejected": 0, "results": []})


def test_the_openapi_document_is_valid(api: tuple[WorkerProcess, Settings]) -> None:
    from openapi_spec_validator import validate

    worker, _ = api
    status, doc, _ = worker.request("GET", "/openapi.json")
    assert status == 200
    validate(doc)
    assert {
        "/events",
        "/v1/{call}",
        "/customers/{customer_id}",
        "/funnel",
        "/map",
        "/health",
        "/metrics",
    } <= set(doc["paths"])
    assert doc["components"]["schemas"]["EventResult"]["properties"]["reason"]["enum"] == list(REASONS)


def dumps(value: object) -> bytes:
    """JSON as any client may send it: integers past 64 bits and Infinity included
    (orjson refuses to write either)."""
    return json.dumps(value).encode()


BODIES = st.one_of(
    st.binary(max_size=600),
    st.text(max_size=300).map(str.encode),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=6),
        max_leaves=20,
    ).map(dumps),
    st.lists(
        st.fixed_dictionaries(
            {
                "event_id": st.text(max_size=140),
                "customer_id": st.text(max_size=140),
                "type": st.sampled_from(["page_view", "purchase", "nope", ""]),
                "channel": st.sampled_from(["web", "fax"]),
                "timestamp": st.one_of(st.integers(), st.text(max_size=30), st.none()),
            }
        ),
        max_size=8,
    ).map(dumps),
)
HEADER_VALUES = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=BODIES,
    content_type=st.one_of(st.just("application/json"), HEADER_VALUES),
    extra=st.dictionaries(
        st.sampled_from(["X-Anything", "Accept", "Content-Encoding"]), HEADER_VALUES, max_size=2
    ),
)
def test_no_body_or_header_gets_a_5xx(
    api: tuple[WorkerProcess, Settings], body: bytes, content_type: str, extra: dict[str, str]
) -> None:
    worker, _ = api
    status, _, _ = worker.request("POST", "/events", body, {"Content-Type": content_type, **extra})
    assert status < 500, (status, body[:200])


@pytest.mark.stack_fault
def test_a_broker_outage_answers_503_with_retry_after(api: tuple[WorkerProcess, Settings]) -> None:
    worker, _ = api
    with KafkaOutage():
        status, body, headers = post(worker, orjson.dumps(event("api-9", "z1")), timeout=30)
    assert status == 503 and body["error"] == "unavailable" and headers["Retry-After"] == "5"
    # Back: the same request goes through.
    status, body, _ = wait_for(
        "the broker back for POST /events",
        lambda: (r := post(worker, orjson.dumps(event("api-9", "z1")), timeout=30))[0] == 200 and r,
        timeout=120,
        every=2,
    )
    assert body["accepted"] == 1


def test_without_a_token_the_api_binds_to_loopback_only(spawn: list[WorkerProcess], tmp_path: Path) -> None:
    s = make_settings(tmp_path, partitions=2, web_bind="0.0.0.0")
    ensure_topics(s, tracker_topics(s))
    worker = WorkerProcess(s, tmp_path / "worker.log").start()
    spawn.append(worker)
    worker.wait_ready()
    assert "binds to 127.0.0.1 only, not 0.0.0.0" in worker.tail(400)
