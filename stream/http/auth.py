"""Who may call the API: the bearer token, or this machine only.

A bearer token (``JOURNEY_API_TOKEN``) protects every endpoint but
``/metrics``, ``/health`` and the ``/map`` page when it is set; another
worker's signed request (``stream.http.peers``) passes too. Without a token
the worker serves on 127.0.0.1 only, says so at start, and refuses requests
another site could make a browser send (Host, Origin, Content-Type).
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web as aioweb

from stream.http.peers import PEER_HEADER, verify_peer
from stream.settings import Settings

if TYPE_CHECKING:
    from stream.worker import Worker

log = logging.getLogger(__name__)

# /map is a static page; it asks for the token to read /funnel (see the page).
OPEN_PATHS = frozenset({"/metrics", "/health", "/map"})
# Segment's tracking API (stream.http.segment) checks the write key itself.
SEGMENT_PREFIX = "/v1/"


def _error(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> aioweb.Response:
    return aioweb.Response(
        status=status,
        body=orjson.dumps({"error": error, "detail": detail}),
        content_type="application/json",
        headers=headers,
    )


def token_middleware(token: str) -> Any:
    """An aiohttp middleware: ``Authorization: Bearer <token>`` on every path
    but the open ones, or another worker's signature (``stream.http.peers``)."""
    expected = f"Bearer {token}".encode()

    @aioweb.middleware
    async def check(request: aioweb.Request, handler: Any) -> aioweb.StreamResponse:
        if request.path in OPEN_PATHS or request.path.startswith(SEGMENT_PREFIX):
            return await handler(request)  # open, or checked by its view (the write key)
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


def secure(w: Worker) -> None:
    """Apply the token policy to the worker's web server (before it starts)."""
    settings = w.settings
    token = settings.token
    middlewares = w.app.web.web_app.middlewares  # type: ignore[attr-defined]
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
        w.app.conf.web_bind = effective_bind(settings)
    else:
        log.info("API: no JOURNEY_API_TOKEN is set; serving on 127.0.0.1 only")
