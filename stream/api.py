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
from collections import Counter
from importlib import resources
from typing import Any

import orjson
from aiohttp import web as aioweb
from faust.web import Request, Response, View

from models.events import ERASE_HEADER, Erase, Rejection, id_problem, parse_touchpoint
from stream.batching import PartitionBatches
from stream.faust_compat import aiokafka_producer
from stream.partitioning import key_partition
from stream.peers import PEER_HEADER, peer_headers, verify_peer
from stream.runtime import Runtime
from stream.settings import Settings

log = logging.getLogger(__name__)

# /map is a static page; it asks for the token to read /funnel (see the page).
OPEN_PATHS = frozenset({"/metrics", "/health", "/map"})
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
    """An aiohttp middleware: ``Authorization: Bearer <token>`` on every path
    but the open ones, or another worker's signature (``stream.peers``)."""
    expected = f"Bearer {token}".encode()

    @aioweb.middleware
    async def check(request: aioweb.Request, handler: Any) -> aioweb.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        # Header bytes that are not UTF-8 arrive as surrogates: compare them as
        # the bytes they were, so they fail the check instead of raising.
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        peer = request.headers.get(PEER_HEADER)
        if not hmac.compare_digest(given, expected) and not (
            peer is not None
            and verify_peer(token, request.method, request.path_qs, peer, int(time.time() * 1000))
        ):
            return _error(
                401,
                "unauthorized",
                "send Authorization: Bearer <JOURNEY_API_TOKEN>",
                {"WWW-Authenticate": "Bearer"},
            )
        return await handler(request)

    return check


LOCAL_NAMES = ("127.0.0.1", "localhost", "[::1]")


def local_only_middleware(port: int) -> Any:
    """No-token mode: only this machine's own pages and programs may use the API.

    Binding to 127.0.0.1 is not enough: any web page open in a browser on the
    host can send a ``text/plain`` POST there, and DNS rebinding makes a
    foreign name resolve to 127.0.0.1. So the ``Host`` must name this worker
    on the loopback address, an ``Origin`` must be this worker's own, and
    ``POST`` and ``DELETE`` need ``Content-Type: application/json`` (which a
    cross-site form or a simple request cannot send without a preflight).
    """
    hosts = {f"{name}:{port}" for name in LOCAL_NAMES}
    if port == 80:
        hosts.update(LOCAL_NAMES)
    origins = {f"http://{h}" for h in hosts}

    @aioweb.middleware
    async def check(request: aioweb.Request, handler: Any) -> aioweb.StreamResponse:
        host = request.headers.get("Host", "").lower()
        if host not in hosts:
            return _error(
                403, "bad_host", f"the Host must be one of {sorted(hosts)} (no JOURNEY_API_TOKEN set)"
            )
        origin = request.headers.get("Origin")
        if origin is not None and origin.lower() not in origins:
            return _error(
                403, "cross_origin", "requests from other origins are refused (no JOURNEY_API_TOKEN set)"
            )
        if request.method in ("POST", "DELETE") and request.content_type != "application/json":
            return _error(
                415, "unsupported_media_type", f"{request.method} needs Content-Type: application/json"
            )
        return await handler(request)

    return check


def effective_bind(settings: Settings) -> str:
    """The address the web server binds to: ``JOURNEY_WEB_BIND`` with a token,
    127.0.0.1 without one, whatever the setting says."""
    return settings.web_bind if settings.token else "127.0.0.1"


def secure(rt: Runtime) -> None:
    """Apply the token policy to the worker's web server (before it starts)."""
    settings = rt.settings
    token = settings.token
    middlewares = rt.app.web.web_app.middlewares  # type: ignore[attr-defined]
    if token:
        middlewares.append(token_middleware(token))
        log.info("API: bearer token required on every endpoint but /metrics, /health and the /map page")
        return
    middlewares.append(local_only_middleware(settings.web_port))
    if settings.web_bind != effective_bind(settings):
        log.warning(
            "API: no JOURNEY_API_TOKEN is set, so the web server binds to 127.0.0.1 only, not %s",
            settings.web_bind,
        )
        rt.app.conf.web_bind = effective_bind(settings)
    else:
        log.info("API: no JOURNEY_API_TOKEN is set; serving on 127.0.0.1 only")


async def read_limited(request: Request, limit: int) -> bytes | None:
    """The whole body, however it arrives (in one piece or many, slowly), or
    None once it is larger than ``limit`` bytes."""
    raw: Any = request
    length = raw.content_length
    if length is not None and length > limit:
        return None
    body = bytearray()
    while True:
        # read(n) returns what has arrived, at most n bytes; b"" at the end.
        chunk = await raw.content.read(limit + 1 - len(body))
        if not chunk:
            return bytes(body)
        body += chunk
        if len(body) > limit:
            return None


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
            not_after = int((time.time() + settings.max_future_s) * 1000)
            for i, item in enumerate(events):
                parsed: Any
                raw = b""
                if not isinstance(item, dict):
                    parsed = Rejection("not_object", f"got a JSON {type(item).__name__}")
                else:
                    try:
                        raw = orjson.dumps(item)
                    except orjson.JSONEncodeError as exc:  # nested past 255 levels
                        parsed = Rejection("bad_field", f"the event cannot be carried: {exc}"[:200])
                    else:
                        parsed = parse_touchpoint(
                            raw, jmap, max_bytes=settings.max_event_bytes, not_after=not_after
                        )
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

    @app.page("/funnel/local")
    class LocalFunnelView(View):
        """This worker's share of the funnel (its partitions, its histograms)."""

        async def get(self, request: Request) -> Response:
            return self.json(local_funnel(rt))

    @app.page("/funnel")
    class FunnelView(View):
        """The funnel over all workers."""

        async def get(self, request: Request) -> Response:
            parts, missing = await gather_funnel(rt)
            body = funnel(rt, parts)
            body["workers"] = {"answered": len(parts), "missing": missing}
            return self.json(body, status=200 if not missing else 206)

    @app.page("/map")
    class MapView(View):
        """The live journey map: one HTML page, no build step (stream/static/map.html)."""

        async def get(self, request: Request) -> Response:
            html = resources.files("stream").joinpath("static/map.html").read_bytes()
            return self.bytes(html, content_type="text/html")

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
    problem = id_problem(customer_id, "customer_id")
    if problem is not None:
        return 400, {"error": "bad_customer_id", "detail": problem}, {}
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


def local_funnel(rt: Runtime) -> dict[str, Any]:
    """This worker's figures: counts from its partitions, time-in-stage buckets
    from its histogram, and who it is (so a gatherer never counts it twice)."""
    buckets: dict[str, dict[str, float]] = {}
    for metric in rt.metrics.stage_duration.collect():
        for sample in metric.samples:
            if sample.name.endswith("_bucket"):
                buckets.setdefault(sample.labels["stage"], {})[sample.labels["le"]] = sample.value
    return {
        "worker": rt.worker_id,
        "figures": rt.stage_counts.totals().to_dict(),
        "stage_duration_buckets": buckets,
    }


async def gather_funnel(rt: Runtime) -> tuple[list[dict[str, Any]], list[str]]:
    """Every worker's ``/funnel/local`` (this one's without a request), each
    asked once with this worker's signature, never the client's credentials
    (``stream.peers``); each worker counted once, by its identity."""
    import aiohttp

    from stream.faust_compat import peer_urls
    from stream.web import own_url

    token = rt.settings.token
    own = own_url(rt)
    parts = [local_funnel(rt)]
    seen = {rt.worker_id}
    missing: list[str] = []
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for url in peer_urls(rt.app):
            if url == own:
                continue
            headers = peer_headers(token, "GET", "/funnel/local", int(time.time() * 1000))
            try:
                async with session.get(f"{url}/funnel/local", headers=headers, allow_redirects=False) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"status {resp.status}")
                    part = await resp.json()
                    if part.get("worker") in seen:
                        continue
                    seen.add(part.get("worker"))
                    parts.append(part)
            except Exception as exc:
                log.warning("GET /funnel: worker %s did not answer: %r", url, exc)
                missing.append(url)
    return parts, missing


def _median(buckets: dict[str, float]) -> float | None:
    """The median from cumulative histogram buckets (linear within a bucket, as Prometheus does)."""
    bounds = sorted((float(le), n) for le, n in buckets.items())
    total = bounds[-1][1] if bounds else 0
    if not total:
        return None
    half, prev_le, prev_n = total / 2, 0.0, 0.0
    for le, n in bounds:
        if n >= half:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (half - prev_n) / max(n - prev_n, 1e-9)
        prev_le, prev_n = le, n
    return None


def funnel(rt: Runtime, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The funnel from every worker's figures: live counts per stage,
    conversion between consecutive stages (of the customers who reached the
    first, those who reached the second or a later one), median time in
    stage, the bottleneck."""
    from stream.stage_counts import Figures

    total = Figures()
    buckets: dict[str, dict[str, float]] = {}
    for part in parts:
        total.add(Figures.from_dict(part["figures"]))
        for stage, bs in part.get("stage_duration_buckets", {}).items():
            mine = buckets.setdefault(stage, {})
            for le, n in bs.items():
                mine[le] = mine.get(le, 0.0) + n

    def top(counter: Counter[str], stage: str, n: int = 3) -> list[dict[str, Any]]:
        mine = [(k.split("|", 1)[1], v) for k, v in counter.items() if k.startswith(f"{stage}|") and v > 0]
        return [{"name": k, "count": int(v)} for k, v in sorted(mine, key=lambda kv: (-kv[1], kv[0]))[:n]]

    stages = [
        {
            "stage": s.name,
            "customers": int(total.customers.get(s.name, 0)),
            "reached": int(total.reached.get(s.name, 0)),
            "stalled": int(total.stalled.get(s.name, 0)),
            "median_seconds_in_stage": _median(buckets.get(s.name, {})),
            "top_touchpoints": top(total.touchpoints, s.name),
            "top_channels": top(total.channels, s.name),
            "mean_drift_score": (
                round(total.score_sum[s.name] / 1000 / total.scored[s.name], 3)
                if total.scored.get(s.name)
                else None
            ),
        }
        for s in rt.journey_map.stages
    ]
    conversion: list[dict[str, Any]] = []
    for a, b in rt.stage_counts.pairs:
        reached, both = int(total.reached.get(a, 0)), int(total.pairs.get(f"{a}>{b}", 0))
        conversion.append(
            {
                "from": a,
                "to": b,
                "reached_from": reached,
                "reached_both": both,
                "ratio": both / reached if reached else None,
            }
        )
    scored = [c for c in conversion if c["ratio"] is not None]
    bottleneck = min(scored, key=lambda c: c["ratio"]) if scored else None
    return {
        "customers": sum(total.customers.values()),
        "stages": stages,
        "conversion": conversion,
        "bottleneck": bottleneck,
    }
