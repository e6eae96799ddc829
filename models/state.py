"""Per-customer journey state and stage transitions, with their encodings.

State is a frozen value; the reducer returns a new one per applied run of
events. The value classes are msgspec Structs (frozen, ``array_like``,
``gc=False``): built in C, about eight times faster than a frozen dataclass,
and encoded to MessagePack as plain arrays in field order without a field
name in the bytes (``stream.engine.codec`` frames them with the source offset
and the format version). A new field goes last, with a default. The web API
shows a state with ISO-8601 times (:meth:`CustomerState.to_api`).

The de-duplication window keeps fixed-size digests of the recent event ids
(:func:`id_digest`), not the ids: 8 bytes per id in one ``bytes`` value,
oldest first, instead of a string object of up to 128 characters each.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

import msgspec
import xxhash

from models.timeutil import ms_to_iso

# How many stall episodes' next steps a customer keeps (the funnel counts them).
AFTER_STALL_KEPT: Final = 4
# The next-event type of a stall whose next event came after the map's window.
LATER: Final = "(later)"
# How many recent event ids a customer keeps for de-duplication. A redelivered
# event older than the last DEDUP_WINDOW distinct events of its customer is
# not recognised by id; the worker also skips redelivered Kafka records by
# offset, so this bounds only duplicates re-sent by the apps themselves.
DEDUP_WINDOW: Final = 128
# Bytes of an event id's digest (xxh3, 64 bits). Two distinct ids of one
# customer share a digest with a chance of 128 / 2**64 (about 7e-18) per event:
# at a billion events a day, once in some ten billion years. A collision drops
# one event as a duplicate; it never touches another customer (the window is
# per customer).
ID_DIGEST_BYTES: Final = 8
# How many drift signal hits and nudges a customer keeps, newest last (explanations, the API).
SIGNALS_KEPT: Final = 8
NUDGES_KEPT: Final = 5


def id_digest(event_id: str) -> bytes:
    """The fixed-size digest of an event id that the de-duplication window keeps."""
    return xxhash.xxh3_64_digest(event_id.encode())


def window_has(window: bytes, digest: bytes) -> bool:
    """Whether ``digest`` is one of the digests in ``window`` (aligned: a match
    straddling two digests does not count)."""
    i = window.find(digest)
    while i >= 0:
        if i % ID_DIGEST_BYTES == 0:
            return True
        i = window.find(digest, i + 1)
    return False


def window_add(window: bytes, digest: bytes) -> bytes:
    """``window`` with ``digest`` appended, the oldest dropped past :data:`DEDUP_WINDOW`."""
    window += digest
    if len(window) > DEDUP_WINDOW * ID_DIGEST_BYTES:
        return window[ID_DIGEST_BYTES:]
    return window


class Stall(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """An open stall episode: the customer sat in ``stage`` past its threshold."""

    episode_id: str
    stage: str
    since: int  # event time the stage was entered
    deadline: int  # last activity + the stage's stall_after
    detected_at: int  # the worker clock that found it


class Drift(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A customer's drift score toward loyalty (up) or defection (down)."""

    score: float
    at: int  # event time the score was brought to (its decay reference)
    at_risk: bool = False  # below the risk bar since the last crossing
    inactive: bool = False  # the inactivity signal was applied for the current quiet spell
    signals: tuple[tuple[str, float, int], ...] = ()  # last hits: (signal, change, event time)


class NudgeRef(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A nudge the core decided for a customer, and its outcome once known."""

    nudge_id: str
    kind: str
    stage: str
    created_at: int
    window_end: int
    held_out: bool
    # None while open; "converted" or "not_converted" (an outcome record says
    # which), or "undelivered" (the nudge never went out: no outcome record)
    outcome: str | None = None
    delivery: str | None = None  # what the gate decided (models.events.DELIVERIES), once known


class CustomerState(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """Where one customer is in the journey, and what it took to get there.

    ``gc=False``: a state holds strings, numbers, dicts of them and other
    such values, never a reference back, so it cannot be part of a cycle and
    the collector need not track the million of them a worker holds.
    """

    customer_id: str
    stage: str
    stage_entered_at: int  # event time (epoch ms) of the event that moved them here
    stages: dict[str, int]  # each stage reached -> event time first reached
    first_touch_channel: str
    first_touch_at: int
    last_event_at: int  # the latest event time seen (events may arrive out of order)
    events: int  # distinct events applied
    type_counts: dict[str, int] = {}
    # the digests (id_digest) of the last DEDUP_WINDOW applied event ids, oldest first
    recent: bytes = b""
    stall: Stall | None = None
    drift: Drift | None = None
    nudges: tuple[NudgeRef, ...] = ()
    # Identity (models.identity): the customer is a known id (an identify
    # event, or a link from an anonymous id, named it); the ids merged into
    # it, oldest first; for an anonymous id merged into another, the id it
    # was merged into (the state is then an alias: no journey of its own).
    known: bool = False
    ids: tuple[str, ...] = ()
    merged_into: str | None = None
    map_version: str = ""  # the version of the journey map that last wrote the state
    # Insight (models.insight, stream.engine.stage_counts): the customer's
    # values in the map's dimensions (name -> value, models.dimensions); their
    # IANA zone (properties.tz, the latest); every move they made, counted by
    # "from>to" (">stage" for the first); what they did after their last
    # stalls, (episode, stalled stage, next event type or "(later)", stage
    # after it), newest last; and their nudge outcomes counted by
    # "kind|nudged-or-held_out|converted-or-not_converted".
    dims: dict[str, str] = {}
    tz: str = ""
    flows: dict[str, int] = {}
    after_stall: tuple[tuple[str, str, str, str], ...] = ()
    outcomes: dict[str, int] = {}
    # low_odds nudges (models.effects): the stage visit (its entry time) whose
    # odds reading was applied, and when the core last asked for one.
    odds_checked: int = -1
    odds_asked: int = 0

    @property
    def is_alias(self) -> bool:
        """An anonymous id merged into another customer: no journey of its own."""
        return self.merged_into is not None

    def seen(self, event_id: str) -> bool:
        """Whether ``event_id`` is in the de-duplication window."""
        return window_has(self.recent, id_digest(event_id))

    def to_api(self) -> dict[str, Any]:
        """The customer as the web API shows it."""
        out = self._api_journey()
        out["stall"] = (
            None
            if self.stall is None
            else {
                "episode_id": self.stall.episode_id,
                "stage": self.stall.stage,
                "since": ms_to_iso(self.stall.since),
                "deadline": ms_to_iso(self.stall.deadline),
                "detected_at": ms_to_iso(self.stall.detected_at),
            }
        )
        out["drift"] = (
            None
            if self.drift is None
            else {
                "score": round(self.drift.score, 3),
                "at": ms_to_iso(self.drift.at),
                "at_risk": self.drift.at_risk,
                "signals": [
                    {"signal": n, "change": round(d, 3), "at": ms_to_iso(at)}
                    for n, d, at in self.drift.signals
                ],
            }
        )
        out["nudges"] = [
            {
                "nudge_id": n.nudge_id,
                "kind": n.kind,
                "stage": n.stage,
                "created_at": ms_to_iso(n.created_at),
                "held_out": n.held_out,
                "delivery": n.delivery,
                "outcome": n.outcome,
            }
            for n in self.nudges
        ]
        return out

    def _api_journey(self) -> dict[str, Any]:
        identity: dict[str, Any] = {"known": self.known, "merged_ids": list(self.ids)}
        return {
            "identity": identity,
            "map_version": self.map_version,
            "customer_id": self.customer_id,
            "stage": self.stage,
            "stage_entered_at": ms_to_iso(self.stage_entered_at),
            "stages": [{"stage": s, "at": ms_to_iso(at)} for s, at in self.stages.items()],
            "first_touch_channel": self.first_touch_channel,
            "first_touch_at": ms_to_iso(self.first_touch_at),
            "last_event_at": ms_to_iso(self.last_event_at),
            "events": self.events,
            "event_counts": dict(self.type_counts),
        }


_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder(CustomerState)


def encode_state(state: CustomerState) -> bytes:
    """A state as MessagePack (an array of its fields in order)."""
    return _ENCODER.encode(state)


def decode_state(raw: bytes) -> CustomerState:
    """Inverse of :func:`encode_state`; raises ``msgspec.DecodeError`` (a
    ``ValueError``) on bytes that are not a state."""
    return _DECODER.decode(raw)


def transition_id(customer_id: str, event_id: str) -> str:
    """Deterministic id of the transition an event caused (one at most).

    A replayed event yields the same id, so consumers drop replays by id.
    """
    digest = hashlib.blake2b(f"{customer_id}\x00{event_id}".encode(), digest_size=16)
    return digest.hexdigest()


class Transition(msgspec.Struct, frozen=True, gc=False):
    """A customer moved from one stage to another (``from_stage`` None: first touch)."""

    customer_id: str
    from_stage: str | None
    to_stage: str
    event_id: str
    event_type: str
    channel: str
    at: int  # event time, epoch ms
    previous_stage_ms: int | None  # time spent in from_stage, event time

    @property
    def transition_id(self) -> str:
        return transition_id(self.customer_id, self.event_id)

    def to_record(self) -> dict[str, Any]:
        """The record published on the transitions topic."""
        return {
            "transition_id": self.transition_id,
            "customer_id": self.customer_id,
            "from": self.from_stage,
            "to": self.to_stage,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "channel": self.channel,
            "at": ms_to_iso(self.at),
            "at_ms": self.at,
            "previous_stage_seconds": (
                None if self.previous_stage_ms is None else self.previous_stage_ms / 1000
            ),
        }


def alias_state(customer_id: str, merged_into: str, last_event_at: int = 0) -> CustomerState:
    """The stored state of an anonymous id merged into ``merged_into``: no
    stage, no counts, only the pointer that re-keys its later events."""
    return CustomerState(
        customer_id=customer_id,
        stage="",
        stage_entered_at=0,
        stages={},
        first_touch_channel="",
        first_touch_at=0,
        last_event_at=last_event_at,
        events=0,
        merged_into=merged_into,
    )
