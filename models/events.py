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

import re
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgspec
import orjson

from models.journey_map import JourneyMap
from models.timeutil import MAX_MS, MIN_MS, in_range, is_zone, iso_to_ms, ms_to_iso

MAX_ID_LEN: Final = 128
DEFAULT_MAX_BYTES: Final = 64 * 1024
# Keys the table store keeps for itself (Faust's persisted offsets, the
# tracker's erasure ledger): a customer id may not begin with them.
RESERVED_ID_PREFIXES: Final = ("__faust", "__journey")
# C0 and C1 control characters (NUL, newline, escape, DEL...): never in an id.
_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f]")
TIME_RANGE_DETAIL: Final = (
    f"timestamp must lie from {ms_to_iso(MIN_MS)} up to (not including) {ms_to_iso(MAX_MS)}"
)

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
    "wrong_partition",  # a worker's own or moved record off its key's murmur2 partition (events are moved)
    "in_future",  # the event time is more than JOURNEY_MAX_FUTURE_S after the record's own time
    "processing_error",  # the core raised on this event: a bug, kept instead of lost
    "merge_refused",  # an identity link the guards refuse (two known ids, an id merged elsewhere)
)

# How deep properties may nest: anything the tracker writes back out (orjson
# refuses past 255 levels) stays well inside it.
MAX_DEPTH: Final = 32

# The properties that link an anonymous id to the event's customer
# (models.identity): an identify event's previous_id, any event's anonymous_id.
PREVIOUS_ID: Final = "previous_id"
ANONYMOUS_ID: Final = "anonymous_id"
LINK_PROPERTIES: Final = (PREVIOUS_ID, ANONYMOUS_ID)
# The customer's IANA time zone (quiet hours and daily caps, models.nudges).
TZ: Final = "tz"

_REQUIRED: Final = ("event_id", "customer_id", "type", "channel", "timestamp")


class Touchpoint(msgspec.Struct, frozen=True, gc=False):
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


def _depth(value: object, level: int = 1) -> int:
    """How deep ``value`` nests (an object or array counts one level), up to ``MAX_DEPTH + 1``."""
    if isinstance(value, dict):
        children: Any = value.values()
    elif isinstance(value, list):
        children = value
    else:
        return level - 1
    if level > MAX_DEPTH:
        return level
    return max((_depth(v, level + 1) for v in children), default=level)


def id_problem(value: object, name: str) -> str | None:
    """Why ``value`` cannot be an id (event, customer), or None if it can."""
    if (
        type(value) is str
        and 0 < len(value) <= MAX_ID_LEN
        and value.isprintable()  # the common case: no control character in it
        and not value.startswith("__")
    ):
        return None
    if not isinstance(value, str) or not value:
        return f"{name} must be a non-empty string"
    if len(value) > MAX_ID_LEN:
        return f"{name} is longer than {MAX_ID_LEN} characters"
    if _CONTROL.search(value) is not None:
        return f"{name} has a control character"
    if name != "event_id" and value.startswith(RESERVED_ID_PREFIXES):
        return f"{name} may not begin with {' or '.join(RESERVED_ID_PREFIXES)} (reserved by the table store)"
    return None


def _id_field(obj: dict[str, Any], name: str) -> str | Rejection:
    value = obj[name]
    problem = id_problem(value, name)
    if problem is not None:
        return Rejection("bad_field", problem)
    return value


def _time_field(stamp: object, not_after: int | None) -> int | Rejection:
    """An event time in epoch ms from either form, in range and not too far ahead."""
    ts: int | None
    if isinstance(stamp, bool):
        ts = None
    elif isinstance(stamp, int):
        ts = stamp
    elif isinstance(stamp, str):
        ts = iso_to_ms(stamp)
    else:
        ts = None
    if ts is None:
        return Rejection("bad_field", "timestamp must be ISO-8601 with a zone, or epoch milliseconds")
    if not in_range(ts):
        return Rejection("bad_field", TIME_RANGE_DETAIL)
    if not_after is not None and ts > not_after:
        return Rejection(
            "in_future", f"timestamp {ms_to_iso(ts)} is after {ms_to_iso(not_after)} (JOURNEY_MAX_FUTURE_S)"
        )
    return ts


def parse_touchpoint(
    raw: bytes | None,
    jmap: JourneyMap,
    *,
    key: bytes | Literal[False] | None = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
    not_after: int | None = None,
) -> Touchpoint | Rejection:
    """Validate one message against the contract and the map.

    ``key`` is the Kafka message key (None: the message had none); it must
    equal the ``customer_id`` (UTF-8), so that a customer's events share a
    partition. ``False`` skips the key check (for events read from files).
    ``not_after`` (epoch ms) is the latest event time accepted: the worker
    passes the record's own Kafka timestamp plus ``JOURNEY_MAX_FUTURE_S``, so
    a replay judges the record as the first reading did.
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

    ts = _time_field(obj["timestamp"], not_after)
    if isinstance(ts, Rejection):
        return ts

    props = obj.get("properties")
    if props is not None:
        if not isinstance(props, dict):
            return Rejection("bad_field", "properties must be an object")
        # Counting brackets is cheap; only a message with many walks the tree.
        if raw.count(b"{") + raw.count(b"[") > MAX_DEPTH and _depth(props) > MAX_DEPTH:
            return Rejection("bad_field", f"properties nest deeper than {MAX_DEPTH} levels")
        if ANONYMOUS_ID in props or PREVIOUS_ID in props:  # an identity link (models.identity): an id
            for name in LINK_PROPERTIES:
                value = props.get(name)
                if value is not None:
                    problem = id_problem(value, f"properties.{name}")
                    if problem is not None:
                        return Rejection("bad_field", problem)
        if TZ in props and not is_zone(props[TZ]):
            return Rejection("bad_field", "properties.tz must be an IANA time zone name, like Europe/Berlin")

    if key is not False and key != customer_id.encode():
        return Rejection("key_mismatch", "the message key must be the customer_id")
    return Touchpoint(event_id, customer_id, etype, channel, ts, props)


# The tracker group (its app id) that wrote one of the worker's own records
# (a clock reading, a delivery, a link, a merge, a re-keyed or moved event).
# Two groups may read one touchpoints topic (a shadow group running a new
# map, README "Blue/green"): each applies only its own such records and
# those that name no group (an erasure from the API, older records).
GROUP_HEADER: Final = "journey-group"


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


def json_object(raw: bytes | None, what: str) -> dict[str, Any] | Rejection:
    """A record's value as a JSON object, or why it is not one."""
    try:
        obj = orjson.loads(raw or b"")
    except orjson.JSONDecodeError as exc:
        return Rejection("not_json", str(exc)[:200])
    if not isinstance(obj, dict):
        return Rejection("not_object", f"{what} must be a JSON object")
    return obj


def parse_clock(raw: bytes | None, key: bytes | None, not_after: int | None = None) -> Clock | Rejection:
    """Validate a clock record (one with the :data:`CLOCK_HEADER` header);
    ``not_after`` as for :func:`parse_touchpoint`."""
    obj = json_object(raw, "a clock record")
    if isinstance(obj, Rejection):
        return obj
    now, cid = obj.get("clock"), obj.get("customer_id")
    if isinstance(now, bool) or not isinstance(now, int) or not in_range(now):
        return Rejection("bad_field", "clock must be epoch milliseconds in the tracker's time range")
    if not_after is not None and now > not_after:
        return Rejection("in_future", f"clock {ms_to_iso(now)} is after {ms_to_iso(not_after)}")
    problem = id_problem(cid, "customer_id")
    if problem is not None:
        return Rejection("bad_field", problem)
    assert isinstance(cid, str)
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
    obj = json_object(raw, "an erasure record")
    if isinstance(obj, Rejection):
        return obj
    cid, eid, at = obj.get("erase"), obj.get("erasure_id"), obj.get("at")
    if id_problem(cid, "erase") is not None:
        return Rejection("bad_field", "erase must be the customer id")
    assert isinstance(cid, str)
    if id_problem(eid, "erasure_id") is not None or isinstance(at, bool) or not isinstance(at, int):
        return Rejection("bad_field", "erasure_id and at are required")
    assert isinstance(eid, str)
    if not in_range(at):
        return Rejection("bad_field", "at must be epoch milliseconds in the tracker's time range")
    if key is not None and key != cid.encode():
        return Rejection("key_mismatch", "the message key must be the customer_id")
    return Erase(cid, eid, at)


# A delivery record: what the nudge gate decided for one nudge (sent, held
# out, capped by the frequency caps, or expired in the outbox). The worker's
# dispatcher sends it through the touchpoints topic, keyed by the customer,
# with this header, so the decision reaches the customer's state in order
# with their events: a nudge's outcome is reported only for a nudge that
# went out (or was held out on purpose).
DELIVERY_HEADER: Final = "journey-delivery"
DELIVERIES: Final = ("sent", "held_out", "capped", "expired")


@dataclass(frozen=True, slots=True)
class Delivery:
    """The gate's decision for one of a customer's nudges."""

    customer_id: str
    nudge_id: str
    delivery: str  # one of DELIVERIES

    def to_json(self) -> bytes:
        return orjson.dumps(
            {"delivery": self.delivery, "nudge_id": self.nudge_id, "customer_id": self.customer_id}
        )


def parse_delivery(raw: bytes | None, key: bytes | None) -> Delivery | Rejection:
    """Validate a delivery record (one with the :data:`DELIVERY_HEADER` header)."""
    obj = json_object(raw, "a delivery record")
    if isinstance(obj, Rejection):
        return obj
    cid, nid, what = obj.get("customer_id"), obj.get("nudge_id"), obj.get("delivery")
    problem = id_problem(cid, "customer_id") or id_problem(nid, "nudge_id")
    if problem is not None:
        return Rejection("bad_field", problem)
    if what not in DELIVERIES:
        return Rejection("bad_field", f"delivery must be one of {', '.join(DELIVERIES)}")
    assert isinstance(cid, str) and isinstance(nid, str) and isinstance(what, str)
    if key is not None and key != cid.encode():
        return Rejection("key_mismatch", "the message key must be the customer_id")
    return Delivery(cid, nid, what)


# An odds reading: the worker's estimate of a customer's next-stage odds
# (models.insight.next_stage), asked for by the core at a low_odds policy's
# checkpoint (models.outputs.OddsDue) and sent back through the touchpoints
# topic with this header, so the core decides the nudge in order with the
# customer's events and the table stays a plain fold of the topic.
ODDS_HEADER: Final = "journey-odds"


@dataclass(frozen=True, slots=True)
class OddsReading:
    """A customer's next-stage odds, read for one stage visit (``visit``: when they entered it)."""

    customer_id: str
    stage: str
    visit: int
    probability: float | None  # None: no estimate (no evidence yet)
    at: int

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "odds": self.probability,
                "stage": self.stage,
                "visit": self.visit,
                "at": self.at,
                "customer_id": self.customer_id,
            }
        )


def parse_odds(raw: bytes | None, key: bytes | None) -> OddsReading | Rejection:
    """Validate an odds reading (one with the :data:`ODDS_HEADER` header)."""
    obj = json_object(raw, "an odds reading")
    if isinstance(obj, Rejection):
        return obj
    cid, stage, visit, p, at = (obj.get(k) for k in ("customer_id", "stage", "visit", "odds", "at"))
    problem = id_problem(cid, "customer_id")
    if problem is not None:
        return Rejection("bad_field", problem)
    if not isinstance(stage, str) or len(stage) > 64:
        return Rejection("bad_field", "stage must be a stage name")
    for name, v in (("visit", visit), ("at", at)):
        if isinstance(v, bool) or not isinstance(v, int) or not in_range(v):
            return Rejection("bad_field", f"{name} must be epoch milliseconds in the tracker's time range")
    if p is not None and (isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p <= 1):
        return Rejection("bad_field", "odds must be a probability from 0 to 1, or null")
    assert isinstance(cid, str) and isinstance(visit, int) and isinstance(at, int)
    if key is not None and key != cid.encode():
        return Rejection("key_mismatch", "the message key must be the customer_id")
    return OddsReading(cid, stage, visit, None if p is None else float(p), at)
