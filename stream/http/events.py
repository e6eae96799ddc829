"""``POST /events``: touchpoints over HTTP, for apps that cannot speak Kafka.

One touchpoint or a JSON array of them. Each is checked by the same rules as
the Kafka path (``models.events.parse_touchpoint``) and the accepted ones are
produced to the touchpoints topic, key = the customer id, on the partition
Kafka's default (murmur2) partitioner picks, acked by the broker before the
answer. The answer lists, per event, ``accepted`` or ``rejected`` with the
reason. Limits: ``JOURNEY_API_MAX_EVENTS`` events and
``JOURNEY_API_MAX_BYTES`` bytes (413 beyond), bad JSON 400, the broker down
503 with ``Retry-After`` (events carry ids, so sending the same request
again is safe). Never a 5xx for bad input.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import orjson
from faust.web import Request, Response, View

from models.events import Rejection, parse_touchpoint
from stream.engine.partitioning import key_partition

if TYPE_CHECKING:
    from stream.worker import Worker

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5


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


def register(w: Worker) -> None:
    """Register ``POST /events`` on the worker's web server."""
    app, settings, jmap = w.app, w.settings, w.journey_map

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
            out = w.batches()
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
