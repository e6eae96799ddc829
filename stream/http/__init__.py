"""The worker's HTTP API, one module per resource, on Faust's web server (``JOURNEY_WEB_PORT``).

* :mod:`stream.http.auth`: the bearer token, or this machine only.
* :mod:`stream.http.events`: ``POST /events``.
* :mod:`stream.http.segment`: Segment's tracking API, ``POST /v1/batch``, ``/v1/track``...
* :mod:`stream.http.customers`: ``GET`` and ``DELETE /customers/{id}``.
* :mod:`stream.http.funnel`: ``GET /funnel`` and ``/funnel/local``.
* :mod:`stream.http.map`: ``GET /map``, the live journey map page.
* :mod:`stream.http.openapi`: ``GET /openapi.json``.
* :mod:`stream.http.health`: ``GET /health`` and ``/metrics``.
* :mod:`stream.http.peers`: how workers sign the requests they make to each other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stream.http import auth, customers, events, funnel, health, map, openapi, segment

if TYPE_CHECKING:
    from stream.worker import Worker


def register(w: Worker) -> None:
    """Secure the worker's web server and register every route on it (before it starts)."""
    auth.secure(w)
    for resource in (events, segment, customers, funnel, map, openapi, health):
        resource.register(w)
