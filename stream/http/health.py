"""``GET /health`` and ``GET /metrics``: open without the token, for supervisors and Prometheus.

* ``/health``: 200 once the worker owns partitions, is not rebalancing and
  none of them is stalled (``stream.engine.watchdog``); 503 otherwise. The
  body has, per owned partition, the fetch position, the processed and
  committed offsets, the log end, the lag and how long since it last made
  progress, and a section per part of the worker (nudges, view).
* ``/metrics``: Prometheus text format, from the worker's own registry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from faust.web import Request, Response, View
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from stream.worker import Worker


def register(w: Worker) -> None:
    """Register ``GET /health`` and ``GET /metrics``."""
    app, settings, watchdog = w.app, w.settings, w.watchdog

    @app.page("/health")
    class HealthView(View):
        """Ready once this worker owns partitions, is not rebalancing, and none is stalled.

        ``/health?active=1`` is ready only in the active group (blue/green,
        ``stream.redis.role``): what a load balancer checks, so that the API
        is served by the active group and moves with ``journey promote``."""

        async def get(self, request: Request) -> Response:
            ready = watchdog.ready()
            shadow = request.query.get("active") is not None and w.role is not None and not w.role.serving
            body: dict[str, Any] = {
                "ready": ready,
                "partitions": w.active_partitions(),
                "rebalancing": app.rebalancing,
                # Changes with every rebalance of the consumer group.
                "generation": app.consumer_generation_id,
                "problems": {str(p): v for p, v in sorted(watchdog.report.problems.items())},
                "unready_because": "a shadow group (journey promote names the active one)"
                if shadow
                else watchdog.unready_because(),
                "progress": w.lifecycle.describe(settings.stall_unready_s),
                **{name: section() for name, section in w.health.items()},
            }
            return self.json(body, status=200 if ready and not shadow else 503)

    @app.page("/metrics")
    class MetricsView(View):
        """Prometheus exposition of this worker's registry."""

        async def get(self, request: Request) -> Response:
            return self.bytes(generate_latest(w.registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])
