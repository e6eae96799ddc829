"""The HTTP API for apps that cannot speak Kafka, and its bearer token.

* ``POST /events``: one touchpoint or a JSON array of them. Each is checked
  by the same rules as the Kafka path (``models.events.parse_touchpoint``)
  and the accepted ones are produced to the touchpoints topic, key = the
  customer id, on the partition Kafka's default (murmur2) partitioner picks,
  acked by the broker before the answer. The answer lists, per event,
  ``accepted`` or ``rejected`` with the reason. Limits:
  ``JOURNEY_API_MAX_EVENTS`` events and ``JOURNEY_API_MAX_BYTES`` bytes (413
  beyond), bad JSON 400, the broker down 503 with ``Retry-After`` (events
  carry ids, so sending the same request again is safe). Never a 5xx for
  bad input.
* ``GET /openapi.json``: the OpenAPI 3.1 document of the API.
* A bearer token (``JOURNEY_API_TOKEN``) protects every endpoint but
  ``/metrics`` and ``/health`` when it is set. Without one the worker serves
  on 127.0.0.1 only, and says so at start.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from typing import Any

import orjson
from aiohttp import web as aioweb
from faust.web import Request, Response, View

from models.events import ERASE_HEADER, MAX_ID_LEN, Erase, Rejection, parse_touchpoint
from stream.batching import PartitionBatches
from stream.faust_compat import aiokafka_producer
from stream.partitioning import key_partition
from stream.runtime import Runtime

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/metrics", "/health"})
ERASE_HEADERS = ((ERASE_HEADER, b"1"),)
RETRY_AFTER_S = 5


def _error(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> aioweb.Response:
    return aioweb.Response(
        status=status,
        body=orjson.dumps({"error": error, "detail": detail}),
        content_type="application/json",
        headers=headers,
    )


def token_middleware(token: str) -> Any:
    """An aiohttp middleware: ``Authorization: Bearer <token>`` on every path but the open ones."""
    expected = f"Bearer {token}".encode()

    @aioweb.middleware
    async def check(request: aioweb.Request, handler: Any) -> aioweb.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return _error(
                401,
                "unauthorized",
                "send Authorization: Bearer <JOURNEY_API_TOKEN>",
                {"WWW-Authenticate": "Bearer"},
            )
        return await handler(request)

    return check


def secure(rt: Runtime) -> None:
    """Apply the token policy to the worker's web server (before it starts)."""
    settings = rt.settings
    token = settings.api_token.get_secret_value() if settings.api_token is not None else None
    if token:
        rt.app.web.web_app.middlewares.append(token_middleware(token))  # type: ignore[attr-defined]
        log.info("API: bearer token required on every endpoint but /metrics and /health")
        return
    if settings.web_bind != "127.0.0.1":
        log.warning(
            "API: no JOURNEY_API_TOKEN is set, so the web server binds to 127.0.0.1 only, not %s",
            settings.web_bind,
        )
        rt.app.conf.web_bind = "127.0.0.1"
    else:
        log.info("API: no JOURNEY_API_TOKEN is set; serving on 127.0.0.1 only")


async def read_limited(request: Request, limit: int) -> bytes | None:
    """The body, or None when it is larger than ``limit`` bytes."""
    raw: Any = request
    length = raw.content_length
    if length is not None and length > limit:
        return None
    body = await raw.content.read(limit + 1)
    return None if len(body) > limit else bytes(body)


def register(rt: Runtime) -> None:
    """Register ``POST /events`` and ``GET /openapi.json`` on ``rt.app``."""
    app, settings, jmap = rt.app, rt.settings, rt.journey_map

    @app.page("/events")
    class EventsView(View):
        """Touchpoints over HTTP, into the touchpoints topic."""

        async def post(self, request: Request) -> Response:
            body = await read_limited(request, settings.api_max_bytes)
            if body is None:
                return self.json(
                    {"error": "too_large", "detail": f"the body is over {settings.api_max_bytes} bytes"},
                    status=413,
                )
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                return self.json({"error": "not_json", "detail": str(exc)[:200]}, status=400)
            events = doc if isinstance(doc, list) else [doc]
            if len(events) > settings.api_max_events:
                return self.json(
                    {
                        "error": "too_many",
                        "detail": f"{len(events)} events, the limit is {settings.api_max_events}",
                    },
                    status=413,
                )
            results: list[dict[str, Any]] = []
            out = PartitionBatches(aiokafka_producer(app))
            for i, item in enumerate(events):
                raw = orjson.dumps(item)
                parsed = parse_touchpoint(raw, jmap, max_bytes=settings.max_event_bytes)
                if isinstance(parsed, Rejection):
                    results.append(
                        {"index": i, "status": "rejected", "reason": parsed.reason, "detail": parsed.detail}
                    )
                    continue
                key = parsed.customer_id.encode()
                out.add(settings.touchpoints_topic, key_partition(key, settings.partitions), key, raw)
                results.append({"index": i, "status": "accepted", "event_id": parsed.event_id})
            accepted = sum(1 for r in results if r["status"] == "accepted")
            if accepted:
                try:
                    await asyncio.wait_for(out.send(), settings.api_produce_timeout_s)
                except Exception as exc:
                    log.warning("POST /events: producing %d events failed: %r", accepted, exc)
                    return self.json(
                        {
                            "error": "unavailable",
                            "detail": "the broker did not take the events; none is confirmed. Send the same "
                            "request again: events carry ids, so repeats change nothing.",
                        },
                        status=503,
                        headers={"Retry-After": str(RETRY_AFTER_S)},
                    )
            return self.json(
                {"accepted": accepted, "rejected": len(results) - accepted, "results": results}, status=200
            )

    @app.page("/openapi.json")
    class OpenAPIView(View):
        """The OpenAPI 3.1 document of this API."""

        async def get(self, request: Request) -> Response:
            return self.json(openapi(rt))


def openapi(rt: Runtime) -> dict[str, Any]:
    """The OpenAPI 3.1 document (limits and enums from settings and the map)."""
    from stream.openapi import document

    return document(rt.settings, rt.journey_map)


async def erase(rt: Runtime, customer_id: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    """``DELETE /customers/{id}``: an erasure record on the touchpoints topic,
    applied by the customer's owner in order with their events. Answers 202
    with the erasure id once the broker has the record; the state is gone
    when ``GET /customers/{id}`` answers 404 and the ``erased`` record is on
    the erasures topic."""
    settings = rt.settings
    if not customer_id or len(customer_id) > MAX_ID_LEN:
        return 400, {"error": "bad_customer_id", "detail": f"1 to {MAX_ID_LEN} characters"}, {}
    erasure = Erase(customer_id, uuid.uuid4().hex, int(time.time() * 1000))
    key = customer_id.encode()
    out = PartitionBatches(aiokafka_producer(rt.app))
    out.add(
        settings.touchpoints_topic,
        key_partition(key, settings.partitions),
        key,
        erasure.to_json(),
        ERASE_HEADERS,
    )
    try:
        await asyncio.wait_for(out.send(), settings.api_produce_timeout_s)
    except Exception as exc:
        log.warning("DELETE /customers: producing the erasure failed: %r", exc)
        return (
            503,
            {"error": "unavailable", "detail": "the broker did not take the erasure; send it again"},
            {"Retry-After": str(RETRY_AFTER_S)},
        )
    log.info("erasure %s of a customer accepted", erasure.erasure_id)
    return 202, {"erasure_id": erasure.erasure_id, "customer_id": customer_id, "status": "accepted"}, {}
