"""What the core says happened besides transitions: stalls, recoveries,
churn risks, nudges decided and nudge outcomes.

Each is a frozen value with a deterministic id, so a replayed event or clock
record yields the same record again and consumers drop repeats by id.
``topic`` names the settings field of the topic it goes to.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from models.timeutil import ms_to_iso


def stable_id(*parts: object) -> str:
    """A 128-bit hex id from its parts (blake2b), the same on every run."""
    text = "\x00".join(str(p) for p in parts)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class StallRecord:
    """A stall episode began (one per episode)."""

    topic = "stalls_topic"
    episode_id: str
    customer_id: str
    stage: str
    since: int
    threshold_s: int
    deadline: int
    detected_at: int

    def to_record(self) -> dict[str, Any]:
        return {
            "type": "stall",
            "episode_id": self.episode_id,
            "customer_id": self.customer_id,
            "stage": self.stage,
            "since": ms_to_iso(self.since),
            "threshold_seconds": self.threshold_s,
            "deadline": ms_to_iso(self.deadline),
            "detected_at": ms_to_iso(self.detected_at),
        }


@dataclass(frozen=True, slots=True)
class Recovered:
    """Activity moved a stalled customer on: the episode ended."""

    topic = "stalls_topic"
    episode_id: str
    customer_id: str
    stage: str
    to_stage: str
    at: int
    event_id: str

    def to_record(self) -> dict[str, Any]:
        return {
            "type": "recovered",
            "episode_id": self.episode_id,
            "customer_id": self.customer_id,
            "stage": self.stage,
            "to_stage": self.to_stage,
            "at": ms_to_iso(self.at),
            "event_id": self.event_id,
        }


@dataclass(frozen=True, slots=True)
class ChurnRisk:
    """The drift score crossed the risk bar (downward)."""

    topic = "drift_topic"
    risk_id: str
    customer_id: str
    stage: str
    score: float
    signals: tuple[tuple[str, float, int], ...]
    at: int

    def to_record(self) -> dict[str, Any]:
        return {
            "type": "churn_risk",
            "risk_id": self.risk_id,
            "customer_id": self.customer_id,
            "stage": self.stage,
            "score": round(self.score, 3),
            "signals": [{"signal": n, "change": round(c, 3), "at": ms_to_iso(t)} for n, c, t in self.signals],
            "at": ms_to_iso(self.at),
        }


@dataclass(frozen=True, slots=True)
class Nudge:
    """A nudge the policy decided; the worker's gate (caps, cooldowns, quiet
    hours, in Redis) decides whether and when it goes out."""

    topic = "nudges_topic"
    nudge_id: str
    customer_id: str
    kind: str
    channel: str
    stage: str
    trigger: str
    reason: dict[str, Any]
    created_at: int  # event or clock time of the decision
    held_out: bool
    cooldown_s: int
    tz: str = ""  # the customer's IANA zone (quiet hours, daily caps); "" for the map's default

    def to_record(self, sent_at: int | None = None) -> dict[str, Any]:
        return {
            "nudge_id": self.nudge_id,
            "customer_id": self.customer_id,
            "kind": self.kind,
            "channel": self.channel,
            "reason": {"trigger": self.trigger, "stage": self.stage, **self.reason},
            "created_at": ms_to_iso(self.created_at),
            "held_out": self.held_out,
            **({"tz": self.tz} if self.tz else {}),
            **({} if sent_at is None else {"sent_at": ms_to_iso(sent_at)}),
        }


@dataclass(frozen=True, slots=True)
class OddsDue:
    """The core asks the worker for a customer's next-stage odds: a low_odds
    policy's checkpoint in ``stage`` came (the visit that began at ``visit``).
    Not a record: the worker answers with an odds reading
    (``models.events.OddsReading``) on the touchpoints topic."""

    topic = ""
    customer_id: str
    stage: str
    visit: int
    at: int

    def to_record(self) -> dict[str, Any]:
        return {"customer_id": self.customer_id, "stage": self.stage, "visit": self.visit, "at": self.at}


def outcome_key(kind: str, held_out: bool, converted: bool) -> str:
    """How a customer's state counts a nudge outcome (``CustomerState.outcomes``)."""
    return f"{kind}|{'held_out' if held_out else 'nudged'}|{'converted' if converted else 'not_converted'}"


@dataclass(frozen=True, slots=True)
class NudgeOutcome:
    """Whether a nudged or held-out customer converted within the policy's window."""

    topic = "outcomes_topic"
    nudge_id: str
    customer_id: str
    kind: str
    held_out: bool
    converted: bool
    at: int

    def to_record(self) -> dict[str, Any]:
        return {
            "type": "nudge_outcome",
            "nudge_id": self.nudge_id,
            "customer_id": self.customer_id,
            "kind": self.kind,
            "group": "held_out" if self.held_out else "nudged",
            "converted": self.converted,
            "at": ms_to_iso(self.at),
        }


@dataclass(frozen=True, slots=True)
class Erased:
    """A customer's state was erased (downstream systems erase theirs)."""

    topic = "erasures_topic"
    erasure_id: str
    customer_id: str
    at: int

    def to_record(self) -> dict[str, Any]:
        return {
            "type": "erased",
            "erasure_id": self.erasure_id,
            "customer_id": self.customer_id,
            "at": ms_to_iso(self.at),
        }


@dataclass(frozen=True, slots=True)
class IdentityRecord:
    """The audit of one merge or one refused link (the identities topic)."""

    topic = "identities_topic"
    outcome: str  # "merged" or "refused"
    merge_id: str
    anonymous_id: str
    known_id: str
    at: int
    anonymous_stage: str | None = None  # before the merge
    known_stage: str | None = None  # before the merge
    stage: str | None = None  # after the merge
    reason: str | None = None  # why it was refused

    def to_record(self) -> dict[str, Any]:
        return {
            "type": self.outcome,
            "merge_id": self.merge_id,
            "anonymous_id": self.anonymous_id,
            "known_id": self.known_id,
            "anonymous_stage": self.anonymous_stage,
            "known_stage": self.known_stage,
            "stage": self.stage,
            "reason": self.reason,
            "at": ms_to_iso(self.at),
        }


Output = StallRecord | Recovered | ChurnRisk | Nudge | NudgeOutcome | Erased | IdentityRecord | OddsDue
