"""The Faust app, its topics and table, and the worker's web views.

Built once at import from :class:`Settings` (``JOURNEY_*`` variables). All
keys and values are raw bytes: the tracker encodes with orjson itself, which
is cheaper than Faust's codecs and keeps table keys identical before and
after a changelog recovery.

Web views (port ``JOURNEY_WEB_PORT``, 6066 by default):

* ``GET /customers/{customer_id}``: the customer's state, from whichever
  worker owns the customer's partition (Faust forwards the request there);
  404 for a customer never seen.
* ``GET /health``: 200 with the partitions this worker actively owns (and the
  consumer group generation) once it owns any and is not rebalancing, 503
  before that.
* ``GET /metrics``: Prometheus text format.
"""

from __future__ import annotations

import socket
from typing import Any

import faust
import orjson
from faust.web import Request, Response, View
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from models.journey_map import JourneyMap, load_map
from models.state import CustomerState, state_from_dict, state_to_dict
from stream.faust_compat import install_commit_fix
from stream.metrics import TrackerMetrics
from stream.settings import Settings

# Faust's offset commit can crawl after a rebalance; see faust_compat.
install_commit_fix()


def encode_stored(offset: int, state: CustomerState) -> bytes:
    """A table value: the state and the source offset of the last event applied.

    A customer's events share one partition, so any redelivered record at or
    below that offset was applied already: the worker skips it exactly,
    however far back the replay starts.
    """
    d = state_to_dict(state)
    d["o"] = offset
    return orjson.dumps(d)


def decode_stored(raw: bytes) -> tuple[int, CustomerState]:
    """Inverse of :func:`encode_stored`."""
    d = orjson.loads(raw)
    return d["o"], state_from_dict(d)


def create_app(settings: Settings) -> faust.App:
    """A Faust app configured from ``settings`` (no agents attached)."""
    return faust.App(
        settings.app_id,
        broker=settings.broker,
        store=settings.store,
        datadir=str(settings.data_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_disable_leader=True,
        processing_guarantee=settings.processing_guarantee,
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # The agent appends whole batches (stream/batching.py): room for a
        # few hundred records per partition and request, under the broker's
        # 1 MiB message limit.
        producer_max_batch_size=512 * 1024,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        web_bind=settings.web_bind,
        web_host=settings.web_host or socket.gethostname(),
        web_port=settings.web_port,
        web_in_thread=False,
    )


settings = Settings()
journey_map: JourneyMap = load_map(settings.map_path)
app = create_app(settings)
registry = CollectorRegistry()
metrics = TrackerMetrics.create(registry)

touchpoints_topic = app.topic(
    settings.touchpoints_topic,
    key_type=bytes,
    value_type=bytes,
    partitions=settings.partitions,
    replicas=settings.replication_factor,
)
# The transitions and dead-letter topics are created by `journey worker`
# (stream.kafka_tools.ensure_topics) and written in whole batches by the
# agent (stream.batching), so Faust needs no topic objects for them.
customers = app.Table(
    "customers",
    default=None,
    partitions=settings.partitions,
    key_type=bytes,
    value_type=bytes,
    help="Journey state per customer (key: customer id, value: encode_stored)",
)


def active_partitions() -> list[int]:
    """Partitions of the touchpoints topic this worker actively owns (not standby)."""
    return sorted(
        tp.partition for tp in app.assignor.assigned_actives() if tp.topic == settings.touchpoints_topic
    )


@app.page("/customers/{customer_id}")
class CustomerView(View):
    """One customer's journey state, from the worker that owns it."""

    @app.table_route(table=customers, match_info="customer_id")  # type: ignore[arg-type]
    async def get(self, request: Request, customer_id: str) -> Response:
        raw = customers.get(customer_id.encode())
        if raw is None:
            return self.json({"error": "unknown customer", "customer_id": customer_id}, status=404)
        _, state = decode_stored(raw)
        return self.json(state.to_api())


@app.page("/health")
class HealthView(View):
    """Ready once this worker actively owns partitions and is not rebalancing."""

    async def get(self, request: Request) -> Response:
        owned = active_partitions()
        ready = bool(owned) and not app.rebalancing
        body: dict[str, Any] = {
            "ready": ready,
            "partitions": owned,
            "rebalancing": app.rebalancing,
            # Changes with every rebalance of the consumer group.
            "generation": app.consumer_generation_id,
        }
        return self.json(body, status=200 if ready else 503)


@app.page("/metrics")
class MetricsView(View):
    """Prometheus exposition of this worker's registry."""

    async def get(self, request: Request) -> Response:
        return self.bytes(generate_latest(registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])
