"""Poison through the real broker and the HTTP API, with the rocksdb store:
every refused message is dead-lettered (or rejected) with its reason, the
worker stays alive, and afterwards a new customer on every partition is
applied. Then hypothesis writes the bytes and keys."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models import Rejection, load_map, parse_touchpoint
from stream.engine.partitioning import key_partition
from stream.settings import Settings
from stream.tools.kafka import ensure_topics, read_topic, tracker_topics
from stream.tools.simulator import SimMessage
from tests.integration.harness import (
    WorkerProcess,
    dead_letters,
    make_settings,
    send_messages,
    start_ready_worker,
    wait_for,
    wait_processed,
)

DAY_MS = 86_400_000
MAP = load_map()


def body(cid: str, eid: str, stamp: object) -> dict[str, object]:
    return {"event_id": eid, "customer_id": cid, "type": "page_view", "channel": "web", "timestamp": stamp}


def poison(now_ms: int) -> list[tuple[dict[str, object], str]]:
    """(event, the reason it must be refused for)."""
    return [
        (body("p-late", "p1", "9999-12-31T23:59:59-14:00"), "bad_field"),
        (body("p-early", "p2", "0001-01-01T00:00:00+14:00"), "bad_field"),
        (body("p-ms", "p3", 253_402_300_799_999), "bad_field"),
        (body("__faust\u0000offset__", "p4", now_ms), "bad_field"),
        (body("__faust-me", "p5", now_ms), "bad_field"),
        (body("p\u0000nul", "p6", now_ms), "bad_field"),
        (body("p\nnewline", "p7", now_ms), "bad_field"),
        (body("p-future", "p8", now_ms + 2 * DAY_MS), "in_future"),
        (body("p-2999", "p9", "2999-01-01T00:00:00Z"), "in_future"),
    ]


def fresh_on_every_partition(prefix: str, partitions: int) -> list[str]:
    out: dict[int, str] = {}
    i = 0
    while len(out) < partitions:
        cid = f"{prefix}-{i}"
        out.setdefault(key_partition(cid.encode(), partitions), cid)
        i += 1
    return sorted(out.values())


def test_poison_through_kafka_and_http_is_refused_and_the_worker_lives(
    spawn: list[WorkerProcess], tmp_path: Path
) -> None:
    s = make_settings(tmp_path, partitions=4, store="rocksdb://")
    w = start_ready_worker(s, tmp_path, spawn)
    now = int(time.time() * 1000)
    cases = poison(now)
    messages = [SimMessage(str(ev["customer_id"]).encode(), orjson.dumps(ev)) for ev, _ in cases]
    send_messages(s, messages)
    wait_processed(s, [w])
    dead, _ = dead_letters(s)
    assert dead == {(m.value, reason): 1 for m, (_, reason) in zip(messages, cases, strict=True)}
    for rec in read_topic(s, s.dlq_topic):
        assert rec.headers["journey.dlq.detail"], rec  # every refusal says why

    # The same over HTTP: rejected per event, with the reason; never a 5xx.
    status, got, _ = w.request(
        "POST", "/events", orjson.dumps([ev for ev, _ in cases]), {"Content-Type": "application/json"}
    )
    assert status == 200, got
    assert [(r["status"], r.get("reason")) for r in got["results"]] == [("rejected", r) for _, r in cases]

    # Alive, and a new customer on every partition is applied.
    fresh = fresh_on_every_partition("fresh", 4)
    send_messages(s, [SimMessage(c.encode(), orjson.dumps(body(c, f"{c}-e", now))) for c in fresh])
    wait_processed(s, [w])
    for c in fresh:
        wait_for(f"{c} applied", lambda c=c: w.get(f"/customers/{c}")[0] == 200)
    assert w.proc is not None and w.proc.poll() is None
    assert w.health() is not None


@pytest.fixture(scope="module")
def fuzz_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WorkerProcess, Settings]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    s = make_settings(tmp, partitions=2, store="rocksdb://")
    ensure_topics(s, tracker_topics(s))
    w = WorkerProcess(s, tmp / "worker.log").start()
    w.wait_ready()
    yield w, s
    w.stop()


def dumps(value: object) -> bytes:
    return json.dumps(value).encode()  # big integers and Infinity too


def valid_event(cid: str, n: int) -> tuple[bytes, bytes]:
    return cid.encode(), orjson.dumps(body(cid, f"{cid}-{n}", int(time.time() * 1000) - 1000))


KEYS = st.none() | st.binary(max_size=40) | st.sampled_from([b"c1", b"__faust\x00offset__", b"\xff", b""])
VALUES = (
    st.none()
    | st.binary(max_size=300)
    | st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=12,
    ).map(dumps)
    | st.fixed_dictionaries(
        {
            "event_id": st.text(max_size=140),
            "customer_id": st.sampled_from(["c1", "c2", "__faust", "c\x00"]),
            "type": st.sampled_from(["page_view", "purchase", "teleport"]),
            "channel": st.just("web"),
            "timestamp": st.integers(-(2**70), 2**70) | st.text(max_size=30),
        }
    ).map(dumps)
)
MESSAGES = st.lists(
    st.tuples(KEYS, VALUES) | st.builds(valid_event, st.sampled_from(["c1", "c2", "c3"]), st.integers(0, 50)),
    min_size=1,
    max_size=40,
)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=MESSAGES)
def test_any_bytes_and_keys_are_applied_or_dead_lettered_exactly_once(
    fuzz_worker: tuple[WorkerProcess, Settings], messages: list[tuple[bytes | None, bytes | None]]
) -> None:
    """Every message is dead-lettered once (by its source coordinates) or
    taken (applied, a duplicate, or moved), and the worker lives."""
    from kafka import KafkaProducer

    w, s = fuzz_worker
    before = {(r.partition, r.offset) for r in read_topic(s, s.touchpoints_topic)}
    producer = KafkaProducer(bootstrap_servers=s.bootstrap_servers)
    for key, value in messages:
        # kafka-python refuses a record with neither; an empty value is the nearest.
        producer.send(s.touchpoints_topic, key=key, value=b"" if key is None and value is None else value)
    producer.flush()
    producer.close()
    wait_processed(s, [w])
    mine = [r for r in read_topic(s, s.touchpoints_topic) if (r.partition, r.offset) not in before]
    assert len([r for r in mine if "journey-moved-from" not in r.headers]) == len(messages)
    topic = s.touchpoints_topic
    dlq = [r.headers["journey.dlq.source"].decode() for r in read_topic(s, s.dlq_topic)]
    assert len(dlq) == len(set(dlq)), "a message dead-lettered twice"
    for r in mine:
        if f"{topic}:{r.partition}:{r.offset}" in dlq:
            continue
        # Taken: then it was a valid event for its key (applied, a duplicate, or moved).
        assert r.key is not None and r.value is not None
        parsed = parse_touchpoint(r.value, MAP, key=r.key)
        assert not isinstance(parsed, Rejection), (r, parsed)
    assert w.proc is not None and w.proc.poll() is None
