"""Segment's HTTP tracking API, so apps that use Segment's (or RudderStack's)
SDKs send to the tracker unchanged: point the SDK's host at a worker.

* ``POST /v1/batch`` (``{"batch": [...]}``), ``/v1/track``, ``/v1/identify``,
  ``/v1/alias``, ``/v1/page``, ``/v1/screen``: each call translated by
  ``models.segment.from_segment`` and checked by the event contract
  (``models.events.parse_touchpoint``), then produced to the touchpoints
  topic like ``POST /events``.
* The write key as Basic auth (``<key>:``, as the SDKs send it), compared in
  constant time with ``JOURNEY_SEGMENT_WRITE_KEY``, else the API token;
  with neither the worker serves 127.0.0.1 only and takes any key. A wrong
  or missing key: 401.
* Bodies may be gzip (``Content-Encoding: gzip``); Segment's limits hold
  after decompression, read as it inflates: 32 KB per call, 500 KB per
  batch (413 beyond).
* The answers the SDKs expect: 200 ``{"success": true}`` once the broker
  has the events; 400 for a body that is not JSON, 401, 413 (the SDKs do
  not retry these); 503 with ``Retry-After`` while the broker does not
  answer (they retry, and the message ids make a retry safe). Error bodies
  carry ``code`` and ``message`` as Segment's do.
* A call the contract refuses inside an accepted batch goes to the
  dead-letter topic with its reason (the SDK does not read the answer, so
  the dead-letter topic is where it is seen); the answer counts them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import time
import zlib
from typing import TYPE_CHECKING, Any, Final

import orjson
from faust.web import Request, Response, View

from agents.plan import dlq_headers
from models.events import Rejection, parse_touchpoint
from models.segment import from_segment
from models.timeutil import ms_to_iso
from stream.engine.partitioning import key_partition
from stream.http.events import RETRY_AFTER_S, read_limited

if TYPE_CHECKING:
    from stream.worker import Worker

log = logging.getLogger(__name__)

MAX_CALL_BYTES: Final = 32 * 1024  # Segment: "32KB per call"
MAX_BATCH_BYTES: Final = 500 * 1024  # Segment: "500KB per batch request"
CALLS: Final = ("batch", "track", "identify", "alias", "page", "screen")


def _error(view: View, status: int, code: str, message: str, **headers: str) -> Response:
    return view.json({"success": False, "code": code, "message": message}, status=status, headers=headers)


def write_key_of(authorization: str) -> str | None:
    """The write key in a Basic ``Authorization`` header (``key:`` in base64), or None."""
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    key, _, _ = decoded.partition(":")
    return key


def authorized(expected: str | None, authorization: str) -> bool:
    """Whether the header carries the write key (or, as a bearer, the API token)."""
    if expected is None:
        return True
    given = write_key_of(authorization)
    if given is None:
        given = authorization.removeprefix("Bearer ") if authorization.startswith("Bearer ") else ""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode())


def gunzip_limited(body: bytes, limit: int) -> bytes | None:
    """A gzip body decompressed, or None once it is larger than ``limit`` (a
    small bomb never expands past it); raises ``zlib.error`` on bad gzip."""
    inflater = zlib.decompressobj(wbits=31)
    out = inflater.decompress(body, limit + 1)
    if len(out) > limit or inflater.unconsumed_tail:
        return None
    return out


def register(w: Worker) -> None:
    """Register ``POST /v1/{call}``."""
    app, settings, jmap = w.app, w.settings, w.journey_map

    @app.page("/v1/{call}")
    class SegmentView(View):
        """Segment's tracking API, into the touchpoints topic."""

        async def post(self, request: Request, call: str) -> Response:
            if call not in CALLS:
                return _error(self, 404, "not_found", f"no /v1/{call[:32]}: one of {', '.join(CALLS)}")
            raw_request: Any = request
            if not authorized(settings.write_key, raw_request.headers.get("Authorization", "")):
                return _error(
                    self,
                    401,
                    "unauthorized",
                    "send the write key as Basic auth",
                    **{"WWW-Authenticate": 'Basic realm="journey"'},
                )
            limit = MAX_BATCH_BYTES if call == "batch" else MAX_CALL_BYTES
            body = await read_limited(request, limit)
            if body is None:
                return _error(self, 413, "too_large", f"the body is over {limit} bytes")
            # aiohttp inflates a gzip body as it reads it (read_limited stops
            # at the limit, so a bomb never expands past it); a server
            # without that hands the bytes over as sent.
            if raw_request.headers.get("Content-Encoding", "").lower() == "gzip" and body[:2] == b"\x1f\x8b":
                try:
                    inflated = gunzip_limited(body, limit)
                except zlib.error as exc:
                    return _error(self, 400, "invalid_request", f"the gzip body is broken: {exc}"[:200])
                if inflated is None:
                    return _error(self, 413, "too_large", f"the body is over {limit} bytes decompressed")
                body = inflated
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                return _error(self, 400, "invalid_request", f"not JSON: {exc}"[:200])
            if not isinstance(doc, dict):
                return _error(self, 400, "invalid_request", "the body must be a JSON object")
            if call == "batch":
                items = doc.get("batch")
                if not isinstance(items, list):
                    return _error(self, 400, "invalid_request", "a batch needs a 'batch' array")
                kinds: list[str | None] = [None] * len(items)
            else:
                items, kinds = [doc], [call]
            return await self._produce(items, kinds, call)

        async def _produce(self, items: list[Any], kinds: list[str | None], call: str) -> Response:
            out = w.batches()
            now_ms = int(time.time() * 1000)
            received = ms_to_iso(now_ms)
            not_after = now_ms + int(settings.max_future_s * 1000)
            accepted = rejected = 0
            for i, (item, kind) in enumerate(zip(items, kinds, strict=True)):
                try:
                    original = orjson.dumps(item)
                except orjson.JSONEncodeError:  # nested past what JSON can carry back out
                    original = b"null"
                parsed: Any
                if len(original) > MAX_CALL_BYTES:
                    detail = f"{len(original)} bytes, a call may have {MAX_CALL_BYTES}"
                    parsed = Rejection("too_large", detail)
                else:
                    tp = from_segment(item, jmap, received_at=received, call_type=kind)
                    if isinstance(tp, Rejection):
                        parsed = tp
                    else:
                        try:
                            raw = orjson.dumps(tp)
                        except orjson.JSONEncodeError as exc:
                            parsed = Rejection("bad_field", f"the call cannot be carried: {exc}"[:200])
                        else:
                            parsed = parse_touchpoint(
                                raw, jmap, max_bytes=settings.max_event_bytes, not_after=not_after
                            )
                if isinstance(parsed, Rejection):
                    rejected += 1
                    headers = dlq_headers(parsed.reason, parsed.detail, f"http:/v1/{call}:{i}")
                    out.add(settings.dlq_topic, i % settings.partitions, None, original, headers)
                    continue
                key = parsed.customer_id.encode()
                out.add(settings.touchpoints_topic, key_partition(key, settings.partitions), key, raw)
                accepted += 1
            if accepted or rejected:
                try:
                    await asyncio.wait_for(out.send(), settings.api_produce_timeout_s)
                except Exception as exc:
                    log.warning("POST /v1/%s: producing %d calls failed: %r", call, accepted + rejected, exc)
                    return _error(
                        self,
                        503,
                        "unavailable",
                        "the broker did not take the calls; send them again (message ids make it safe)",
                        **{"Retry-After": str(RETRY_AFTER_S)},
                    )
            if rejected:
                log.info("POST /v1/%s: %d calls refused, in the dead-letter topic", call, rejected)
            return self.json({"success": True, "accepted": accepted, "rejected": rejected})
