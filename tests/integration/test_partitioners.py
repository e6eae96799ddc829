"""Any client's partitioning works: events from confluent-kafka (librdkafka),
whose default partitioner is CRC32 rather than murmur2, are all applied."""

from __future__ import annotations

from pathlib import Path

from stream.engine.partitioning import key_partition
from stream.tools.kafka import read_topic
from stream.tools.simulator import generate
from tests.integration.harness import (
    WorkerProcess,
    expected,
    make_settings,
    start_ready_worker,
    stored_states,
    wait_for,
    wait_processed,
    worker_metric,
)


def test_events_from_confluent_kafka_with_its_default_partitioner_are_all_applied(
    spawn: list[WorkerProcess], tmp_path: Path
) -> None:
    from confluent_kafka import Producer

    s = make_settings(tmp_path, partitions=8)
    worker = start_ready_worker(s, tmp_path, spawn)
    messages = generate(200, seed=61, duplicates=0.05)
    producer = Producer({"bootstrap.servers": ",".join(s.bootstrap_servers)})  # librdkafka's defaults
    for m in messages:
        producer.produce(s.touchpoints_topic, key=m.key, value=m.value)
        producer.poll(0)
    assert producer.flush(30) == 0
    wait_processed(s, [worker])
    # librdkafka really did put most of them elsewhere than murmur2 would.
    arrived = [r for r in read_topic(s, s.touchpoints_topic) if "journey-moved-from" not in r.headers]
    elsewhere = sum(1 for r in arrived if r.partition != key_partition(r.key, 8))
    assert elsewhere > len(messages) // 2
    want = expected(messages)
    assert want.dead == {} and len(want.states) == 200

    def all_applied() -> bool:
        got = stored_states(s)
        return {c: (st.events, st.type_counts) for c, st in got.items()} == {
            c: (st.events, st.type_counts) for c, st in want.states.items()
        }

    wait_for("every customer's events applied", all_applied, timeout=60)
    assert worker_metric(worker, "journey_events_total", outcome="moved") == elsewhere
    assert worker_metric(worker, "journey_events_total", outcome="rejected") == 0
    assert list(read_topic(s, s.dlq_topic)) == []
