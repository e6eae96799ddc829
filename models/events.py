"""The touchpoint event contract: bytes in, a Touchpoint or a Rejection out.

One JSON object per Kafka message, key = customer id::

    {"event_id": "e-1", "customer_id": "c-42", "type": "page_view",
     "channel": "web", "timestamp": "2026-11-24T08:00:00Z",
     "properties": {"order_value": 19.9}}

Anything that does not fit is a :class:`Rejection` with a machine-readable
``reason`` (one of :data:`REASONS`) and a human ``detail``; the worker sends it
to the dead-letter topic with the original bytes. Parsing never raises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson

from models.frozen import fast_init
from models.journey_map import JourneyMap
from models.timeutil import iso_to_ms

MAX_ID_LEN: Final = 128
DEFAULT_MAX_BYTES: Final = 64 * 1024

# Every reason a message can be rejected for. Stable: dashboards and the apps
# reading the dead-letter topic match on these strings.
REASONS: Final = (
    "too_large",  # the message is larger than the configured limit
    "not_json",  # not UTF-8 JSON
    "not_object",  # JSON, but not an object
    "missing_field",  # a required field is absent
    "bad_field",  # a field has the wrong type, is empty, too long, or unparseable
    "unknown_type",  # the map does not know the event type
    "unknown_channel",  # the map does not know the channel
    "key_mismatch",  # the Kafka key is not the event's customer_id
    "wrong_partition",  # the key is not on the partition Kafka's default partitioner picks
    "processing_error",  # the core raised on this event: a bug, kept instead of lost
)

_REQUIRED: Final = ("event_id", "customer_id", "type", "channel", "timestamp")


@fast_init
@dataclass(frozen=True, slots=True)
class Touchpoint:
    """One valid touchpoint. ``ts`` is event time in epoch milliseconds."""

    event_id: str
    customer_id: str
    type: str
    channel: str
    ts: int
    properties: dict[str, Any] | None = None

    def to_json(self) -> bytes:
        """Encode in the wire contract (timestamp as epoch milliseconds)."""
        body: dict[str, Any] = {
            "event_id": self.event_id,
            "customer_id": self.customer_id,
            "type": self.type,
            "channel": self.channel,
            "timestamp": self.ts,
        }
        if self.properties is not None:
            body["properties"] = self.properties
        return orjson.dumps(body)


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a message was refused; ``reason`` is one of :data:`REASONS`."""

    reason: str
    detail: str


def _id_field(obj: dict[str, Any], name: str) -> str | Rejection:
    value = obj[name]
    if not isinstance(value, str) or not value:
        return Rejection("bad_field", f"{name} must be a non-empty string")
    if len(value) > MAX_ID_LEN:
        return Rejection("bad_field", f"{name} is longer than {MAX_ID_LEN} characters")
    return value


def parse_touchpoint(
    raw: bytes | None,
    jmap: JourneyMap,
    *,
    key: bytes | Literal[False] | None = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Touchpoint | Rejection:
    """Validate one message against the contract and the map.

    ``key`` is the Kafka message key (None: the message had none); it must
    equal the ``customer_id`` (UTF-8), so that a customer's events share a
    partition. ``False`` skips the key check (for events read from files).
    """
    if raw is None:
        return Rejection("not_json", "the message has no value")
    if len(raw) > max_bytes:
        return Rejection("too_large", f"{len(raw)} bytes, the limit is {max_bytes}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Rejection("not_json", str(exc)[:200])
    if not isinstance(obj, dict):
        return Rejection("not_object", f"got a JSON {type(obj).__name__}")
    for name in _REQUIRED:
        if name not in obj:
            return Rejection("missing_field", f"{name} is required")

    event_id = _id_field(obj, "event_id")
    if isinstance(event_id, Rejection):
        return event_id
    customer_id = _id_field(obj, "customer_id")
    if isinstance(customer_id, Rejection):
        return customer_id

    etype = obj["type"]
    if not isinstance(etype, str):
        return Rejection("bad_field", "type must be a string")
    if etype not in jmap.event_types:
        return Rejection("unknown_type", f"the map {jmap.name!r} has no event type {etype[:64]!r}")
    channel = obj["channel"]
    if not isinstance(channel, str):
        return Rejection("bad_field", "channel must be a string")
    if channel not in jmap.channels:
        return Rejection("unknown_channel", f"the map {jmap.name!r} has no channel {channel[:64]!r}")

    stamp = obj["timestamp"]
    ts: int | None
    if isinstance(stamp, bool):
        ts = None
    elif isinstance(stamp, int):
        ts = stamp if 0 <= stamp < 253402300800000 else None  # before year 10000
    elif isinstance(stamp, str):
        ts = iso_to_ms(stamp)
    else:
        ts = None
    if ts is None:
        return Rejection("bad_field", "timestamp must be ISO-8601 with a zone, or epoch milliseconds")

    props = obj.get("properties")
    if props is not None and not isinstance(props, dict):
        return Rejection("bad_field", "properties must be an object")

    if key is not False and key != customer_id.encode():
        return Rejection("key_mismatch", "the message key must be the customer_id")
    return Touchpoint(event_id, customer_id, etype, channel, ts, props)


# A clock record: the worker's reading of its clock for one customer whose
# deadline (a stall, inactivity, a nudge window) has come. The worker sends
# it through the touchpoints topic, keyed by the customer, with this header,
# so that it is applied in order with the customer's events and the table
# stays a plain fold of the topic (README "Clock policy").
CLOCK_HEADER: Final = "journey-clock"


@dataclass(frozen=True, slots=True)
class Clock:
    """The worker's clock (epoch ms) read for one customer's due deadline."""

    customer_id: str
    now: int

    def to_json(self) -> bytes:
        return orjson.dumps({"clock": self.now, "customer_id": self.customer_id})


def _json_object(raw: bytes | None, what: str) -> dict[str, Any] | Rejection:
    """A record's value as a JSON object, or why it is not one."""
    try:
        obj = orjson.loads(raw or b"")
    except orjson.JSONDecodeError as exc:
        return Rejection("not_json", str(exc)[:200])
    if not isinstance(obj, dict):
        return Rejection("not_object", f"{what} must be a JSON object")
    return obj


def parse_clock(raw: bytes | None, key: bytes | None) -> Clock | Rejection:
    """Validate a clock record (one with the :data:`CLOCK_HEADER` header)."""
    obj = _json_object(raw, "a clock record")
    if isinstance(obj, Rejection):
        return obj
    now, cid = obj.get("clock"), obj.get("customer_id")
    if isinstance(now, bool) or not isinstance(now, int) or not 0 <= now < 253402300800000:
        return Rejection("bad_field", "clock must be epoch milliseconds")
    if not isinstance(cid, str) or not cid or len(cid) > MAX_ID_LEN:
        return Rejection("bad_field", "customer_id must be a non-empty string")
    if key is not None and key != cid.encode():
        return Rejection("key_mismatch", "the message key must be the customer_id")
    return Clock(cid, now)


# An erasure record: a customer asked to be forgotten (DELETE /customers/{id}).
# It travels through the touchpoints topic like a clock record, so that the
# erasure is applied in order with the customer's events.
ERASE_HEADER: Final = "journey-erase"


@dataclass(frozen=True, slots=True)
class Erase:
    """Forget one customer: the state goes; later events start a new journey."""

    customer_id: str
    erasure_id: str
    at: int  # when it was asked for (epoch ms)

    def to_json(self) -> bytes:
        return orjson.dumps({"erase": self.customer_id, "erasure_id": self.erasure_id, "at": self.at})


def parse_erase(raw: bytes | None, key: bytes | None) -> Erase | Rejection:
    """Validate an erasure record (one with the :data:`ERASE_HEADER` header)."""
    obj = _json_object(raw, "an erasure record")
    if isinstance(obj, Rejection):
        return obj
    cid, eid, at = obj.get("erase"), obj.get("erasure_id"), obj.get("at")
    if not isinstance(cid, str) or not cid or len(cid) > MAX_ID_LEN:
        return Rejection("bad_field", "erase must be the customer id")
    if not isinstance(eid, str) or not eid or isinstance(at, bool) or not isinstance(at, int):
        return Rejection("bad_field", "erasure_id and at are required")
    if key is not None and key != cid.encode():
        return Rejection("key_mismatch", "the message key must be the customer_id")
    return Erase(cid, eid, at)
