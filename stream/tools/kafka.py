"""Synchronous Kafka helpers on kafka-python, for the CLI, the simulator and tests.

Never imported by the worker's agents: they must not block the event loop.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from stream.errors import DeliveryFailed, StreamError, TopicMismatch
from stream.settings import Settings


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication: int = 1


def tracker_topics(settings: Settings) -> list[TopicSpec]:
    """The topics the tracker reads and writes (Faust creates its changelog itself)."""
    n, r = settings.partitions, settings.replication_factor
    return [
        TopicSpec(settings.touchpoints_topic, n, r),
        TopicSpec(settings.transitions_topic, n, r),
        TopicSpec(settings.dlq_topic, n, r),
        TopicSpec(settings.stalls_topic, n, r),
        TopicSpec(settings.drift_topic, n, r),
        TopicSpec(settings.nudges_topic, n, r),
        TopicSpec(settings.held_out_topic, n, r),
        TopicSpec(settings.outcomes_topic, n, r),
        TopicSpec(settings.erasures_topic, n, r),
        TopicSpec(settings.identities_topic, n, r),
    ]


def admin(settings: Settings, timeout_s: float = 30.0) -> KafkaAdminClient:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return KafkaAdminClient(
                bootstrap_servers=settings.bootstrap_servers,
                client_id="journey-admin",
                request_timeout_ms=15000,
            )
        except KafkaError as exc:
            if time.monotonic() > deadline:
                raise StreamError(
                    f"no Kafka broker answers at {settings.broker} "
                    "(start one with deploy/local/stack.sh up, or set JOURNEY_BROKER)"
                ) from exc
            time.sleep(1.0)


def partition_counts(client: KafkaAdminClient, names: Iterable[str]) -> dict[str, int]:
    """Partition counts of the topics that exist, among ``names``."""
    wanted = set(names)
    existing = wanted & set(client.list_topics())
    if not existing:
        return {}
    described = client.describe_topics(sorted(existing))
    # kafka-python 3 names the topic "name"; 2.x called it "topic".
    return {d.get("name") or d["topic"]: len(d["partitions"]) for d in described if d["partitions"]}


def ensure_topics(settings: Settings, specs: list[TopicSpec], timeout_s: float = 60.0) -> None:
    """Create missing topics, check partition counts, wait until all are listed.

    A worker that subscribes before the broker lists its topic ignores it, so
    ``journey worker`` calls this first.
    """
    client = admin(settings)
    try:
        counts = partition_counts(client, (s.name for s in specs))
        for spec in specs:
            have = counts.get(spec.name)
            if have is not None and have != spec.partitions:
                raise TopicMismatch(
                    f"topic {spec.name!r} has {have} partitions but JOURNEY_PARTITIONS is "
                    f"{spec.partitions}; the table is partitioned like the topic, so they must match"
                )
        missing = [s for s in specs if s.name not in counts]
        if missing:
            new = [NewTopic(s.name, s.partitions, s.replication) for s in missing]
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker won the race
                client.create_topics(new)
        deadline = time.monotonic() + timeout_s
        while True:
            counts = partition_counts(client, (s.name for s in specs))
            if all(counts.get(s.name) == s.partitions for s in specs):
                return
            if time.monotonic() > deadline:
                raise StreamError(f"topics not ready after {timeout_s:.0f} s: {sorted(counts)}")
            time.sleep(0.5)
    finally:
        client.close()


def producer(settings: Settings, **overrides: object) -> KafkaProducer:
    """A safe producer: acks from all replicas, one request in flight (keeps
    order), retrying for up to five minutes (a broker restart or a leader
    election) before a message counts as failed."""
    config: dict[str, object] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "acks": "all",
        "linger_ms": 20,
        "max_in_flight_requests_per_connection": 1,
        "delivery_timeout_ms": 300_000,
        "client_id": "journey-producer",
    }
    config.update(overrides)
    return KafkaProducer(**config)


class Sender:
    """A producer whose failed deliveries are counted, not lost in silence.

    kafka-python reports a failed send only through its future; this counts
    them, and :meth:`close` raises :class:`DeliveryFailed` if any failed.
    """

    def __init__(self, settings: Settings, **overrides: object) -> None:
        self._producer = producer(settings, **overrides)
        self.sent = 0
        self.failed = 0
        self._first_error: BaseException | None = None

    def send(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        self._producer.send(topic, key=key, value=value).add_errback(self._on_error)
        self.sent += 1

    def _on_error(self, exc: BaseException) -> None:
        self.failed += 1
        if self._first_error is None:
            self._first_error = exc

    def close(self) -> None:
        try:
            self._producer.flush()
        finally:
            self._producer.close()
        if self.failed:
            raise DeliveryFailed(
                f"{self.failed} of {self.sent} messages were not written: {self._first_error!r}"
            )

    def __enter__(self) -> Sender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _partitions(consumer: KafkaConsumer, topic: str, timeout_s: float = 10.0) -> set[int]:
    """The topic's partitions; empty if it does not exist.

    kafka-python loads metadata lazily: the first answer may be None even
    for a topic that exists, so ask the topic list first, then wait.
    """
    if topic not in consumer.topics():
        return set()
    deadline = time.monotonic() + timeout_s
    while True:
        parts = consumer.partitions_for_topic(topic)
        if parts or time.monotonic() > deadline:
            return set(parts or ())
        time.sleep(0.2)


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    timestamp: int | None = None  # the record's own (epoch ms)


def read_topic(
    settings: Settings, topic: str, timeout_s: float | None = 30.0, since_ms: int | None = None
) -> Iterator[Record]:
    """Every record of ``topic`` from the beginning (or the first record at or
    after ``since_ms``, epoch ms) to the current end, no group; ``timeout_s``
    None: however long it takes."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        consumer_timeout_ms=1000,
        client_id="journey-reader",
    )
    try:
        parts = _partitions(consumer, topic)
        if not parts:
            return
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        if since_ms is not None:
            for tp, found in consumer.offsets_for_times(dict.fromkeys(tps, since_ms)).items():
                consumer.seek(tp, found.offset if found is not None else ends[tp])
        todo = {tp for tp in tps if ends[tp] > consumer.position(tp)}
        deadline = time.monotonic() + timeout_s if timeout_s is not None else float("inf")
        while todo:
            if time.monotonic() > deadline:
                raise StreamError(f"reading {topic} timed out with {len(todo)} partitions unread")
            batches = consumer.poll(timeout_ms=500, max_records=5000)
            for tp, msgs in batches.items():
                for m in msgs:
                    if m.offset < ends[tp]:
                        yield Record(
                            m.partition, m.offset, m.key, m.value, {k: v for k, v in m.headers}, m.timestamp
                        )
                if consumer.position(tp) >= ends[tp]:
                    todo.discard(tp)
    finally:
        consumer.close()


def latest_values(settings: Settings, topic: str) -> tuple[dict[bytes, bytes], bytes | None]:
    """The latest value of each key in a compacted topic (tombstones drop the key),
    and the key written last."""
    latest: dict[bytes, bytes] = {}
    last: bytes | None = None
    for rec in read_topic(settings, topic):
        if rec.key is None:
            continue
        last = rec.key
        if rec.value is None:
            latest.pop(rec.key, None)
        else:
            latest[rec.key] = rec.value
    return latest, last


def topic_sizes(settings: Settings, topics: Iterable[str]) -> dict[str, int]:
    """Records in each topic (end minus beginning offsets, summed over partitions; 0 if missing)."""
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, client_id="journey-sizes")
    try:
        out: dict[str, int] = {}
        for topic in topics:
            tps = [TopicPartition(topic, p) for p in _partitions(consumer, topic)]
            if not tps:
                out[topic] = 0
                continue
            ends, starts = consumer.end_offsets(tps), consumer.beginning_offsets(tps)
            out[topic] = sum(ends[tp] - starts[tp] for tp in tps)
        return out
    finally:
        consumer.close()


def group_offsets(settings: Settings, group: str, topic: str) -> dict[int, tuple[int | None, int]]:
    """Per partition of ``topic``: the offset ``group`` committed (None: none yet) and the end offset."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=group,
        enable_auto_commit=False,
        client_id="journey-lag",
    )
    try:
        tps = [TopicPartition(topic, p) for p in _partitions(consumer, topic)]
        ends = consumer.end_offsets(tps)
        return {tp.partition: (consumer.committed(tp), ends[tp]) for tp in tps}
    finally:
        consumer.close()


def group_lag(settings: Settings, group: str, topic: str) -> int | None:
    """Messages of ``topic`` not yet committed by ``group``; None if it has not committed.

    Reads committed offsets with the group id but never joins the group
    (no subscribe, no poll), so it does not disturb the workers.
    """
    offsets = group_offsets(settings, group, topic)
    if all(committed is None for committed, _ in offsets.values()):
        return None
    return sum(max(0, end - (committed or 0)) for committed, end in offsets.values())
