"""Per-customer journey state and stage transitions, with their encodings.

State is a frozen value; the reducer returns a new one per applied event.
:func:`state_to_dict` gives its compact storage form (the worker's table adds
the source offset to it, ``stream.engine.codec.encode_stored``); the web API shows it
with ISO-8601 times (:meth:`CustomerState.to_api`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from models.frozen import fast_init
from models.timeutil import ms_to_iso

# How many recent event ids a customer keeps for de-duplication. A redelivered
# event older than the last DEDUP_WINDOW distinct events of its customer is
# not recognised by id; the worker also skips redelivered Kafka records by
# offset, so this bounds only duplicates re-sent by the apps themselves.
DEDUP_WINDOW: Final = 128
# How many drift signal hits and nudges a customer keeps, newest last (explanations, the API).
SIGNALS_KEPT: Final = 8
NUDGES_KEPT: Final = 5


@fast_init
@dataclass(frozen=True, slots=True)
class Stall:
    """An open stall episode: the customer sat in ``stage`` past its threshold."""

    episode_id: str
    stage: str
    since: int  # event time the stage was entered
    deadline: int  # last activity + the stage's stall_after
    detected_at: int  # the worker clock that found it


@fast_init
@dataclass(frozen=True, slots=True)
class Drift:
    """A customer's drift score toward loyalty (up) or defection (down)."""

    score: float
    at: int  # event time the score was brought to (its decay reference)
    at_risk: bool = False  # below the risk bar since the last crossing
    inactive: bool = False  # the inactivity signal was applied for the current quiet spell
    signals: tuple[tuple[str, float, int], ...] = ()  # last hits: (signal, change, event time)


@fast_init
@dataclass(frozen=True, slots=True)
class NudgeRef:
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


@fast_init
@dataclass(frozen=True, slots=True)
class CustomerState:
    """Where one customer is in the journey, and what it took to get there."""

    customer_id: str
    stage: str
    stage_entered_at: int  # event time (epoch ms) of the event that moved them here
    stages: Mapping[str, int]  # each stage reached -> event time first reached
    first_touch_channel: str
    first_touch_at: int
    last_event_at: int  # the latest event time seen (events may arrive out of order)
    events: int  # distinct events applied
    type_counts: Mapping[str, int] = field(default_factory=dict)
    recent_ids: tuple[str, ...] = ()
    stall: Stall | None = None
    drift: Drift | None = None
    nudges: tuple[NudgeRef, ...] = ()

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
        return {
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


def state_to_dict(state: CustomerState) -> dict[str, Any]:
    """Compact, stable field names for storage (see :func:`encode_state`)."""
    return {
        "c": state.customer_id,
        "s": state.stage,
        "se": state.stage_entered_at,
        "st": state.stages,
        "fc": state.first_touch_channel,
        "fa": state.first_touch_at,
        "le": state.last_event_at,
        "n": state.events,
        "tc": state.type_counts,
        "r": state.recent_ids,
        **({} if state.stall is None else {"sl": _stall_list(state.stall)}),
        **({} if state.drift is None else {"dr": _drift_list(state.drift)}),
        **({} if not state.nudges else {"nu": [_nudge_list(n) for n in state.nudges]}),
    }


def _stall_list(s: Stall) -> list[Any]:
    return [s.episode_id, s.stage, s.since, s.deadline, s.detected_at]


def _drift_list(d: Drift) -> list[Any]:
    return [d.score, d.at, d.at_risk, d.inactive, [list(x) for x in d.signals]]


def _nudge_list(n: NudgeRef) -> list[Any]:
    out = [n.nudge_id, n.kind, n.stage, n.created_at, n.window_end, n.held_out, n.outcome]
    if n.delivery is not None:  # values written before the field read without it
        out.append(n.delivery)
    return out


def state_from_dict(d: Mapping[str, Any]) -> CustomerState:
    """Inverse of :func:`state_to_dict`; extra keys are ignored."""
    return CustomerState(
        customer_id=d["c"],
        stage=d["s"],
        stage_entered_at=d["se"],
        stages=d["st"],
        first_touch_channel=d["fc"],
        first_touch_at=d["fa"],
        last_event_at=d["le"],
        events=d["n"],
        type_counts=d["tc"],
        recent_ids=tuple(d["r"]),
        stall=Stall(*d["sl"]) if "sl" in d else None,
        drift=_drift_from(d["dr"]) if "dr" in d else None,
        nudges=tuple(NudgeRef(*n) for n in d["nu"]) if "nu" in d else (),
    )


def _drift_from(x: list[Any]) -> Drift:
    return Drift(x[0], x[1], x[2], x[3], tuple((n, c, at) for n, c, at in x[4]))


def encode_state(state: CustomerState) -> bytes:
    """Compact orjson encoding of a state."""
    return orjson.dumps(state_to_dict(state))


def decode_state(raw: bytes) -> CustomerState:
    """Inverse of :func:`encode_state`."""
    return state_from_dict(orjson.loads(raw))


def transition_id(customer_id: str, event_id: str) -> str:
    """Deterministic id of the transition an event caused (one at most).

    A replayed event yields the same id, so consumers drop replays by id.
    """
    digest = hashlib.blake2b(f"{customer_id}\x00{event_id}".encode(), digest_size=16)
    return digest.hexdigest()


@fast_init
@dataclass(frozen=True, slots=True)
class Transition:
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
