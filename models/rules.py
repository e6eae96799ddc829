"""The journey map's rules for drift and nudges, as plain frozen values.

Parsed and validated by :func:`models.journey_map.parse_map` from the map's
``drift:`` and ``nudges:`` sections; README "Stalls, drift and nudges"
documents the YAML and the defaults. Nothing here has behaviour beyond
small look-ups: the scoring lives in :mod:`models.drift`, the nudge policy
in :mod:`models.nudges`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

DAY_S: Final = 86_400

# What a nudge policy reacts to.
Trigger = Literal["stall", "churn_risk", "loyalty"]
TRIGGERS: Final = ("stall", "churn_risk", "loyalty")


@dataclass(frozen=True, slots=True)
class Signal:
    """One drift signal: an event type (optionally with a property test) and its weight.

    ``value_property``/``per_unit``/``value_max``: an extra weight per unit of
    a numeric property (order value, say), capped. ``repeat``: counts only
    from the second event of the type on (a repeat purchase).
    """

    name: str
    on: str
    weight: float
    prop: str | None = None
    at_least: float | None = None
    below: float | None = None
    repeat: bool = False
    value_property: str | None = None
    per_unit: float = 0.0
    value_max: float = 0.0


@dataclass(frozen=True, slots=True)
class DriftRules:
    """How a customer's drift toward loyalty or defection is scored."""

    after: str  # scoring starts once a customer has reached this stage
    half_life_s: int  # recency: a signal's weight halves every half-life
    loyalty_at: float  # a score at or above: moved to the loyalty stage
    loyalty_stage: str | None  # where loyalty moves them (None: no move)
    loyalty_from: frozenset[str]  # stages the loyalty move applies from
    risk_at: float  # a score at or below: one churn_risk record per crossing
    inactive_after_s: int  # no activity this long: the inactivity signal, once per quiet spell
    inactive_weight: float
    defect_after_s: int  # no activity this long: moved to the defection stage
    defect_stage: str
    signals: tuple[Signal, ...] = ()
    by_type: Mapping[str, tuple[Signal, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by: dict[str, list[Signal]] = {}
        for s in self.signals:
            by.setdefault(s.on, []).append(s)
        object.__setattr__(self, "by_type", {k: tuple(v) for k, v in by.items()})


@dataclass(frozen=True, slots=True)
class NudgePolicy:
    """Which situation earns which nudge, on which channel, how often."""

    kind: str
    trigger: Trigger
    stages: frozenset[str]  # stall: the stalled stage; churn_risk/loyalty: the stage at the time (empty: any)
    channel: str
    cooldown_s: int  # per customer and kind: no second nudge of the kind within this
    window_s: int  # the outcome window: converted if the customer converts within it
    converts_on: frozenset[str] = frozenset()  # event types that convert; empty: a forward move


@dataclass(frozen=True, slots=True)
class QuietHours:
    """A daily span (UTC minutes since midnight) in which no nudge goes out."""

    start_min: int
    end_min: int


DEFAULT_HOLDOUT: Final = 0.10
DEFAULT_MAX_AGE_S: Final = DAY_S
DEFAULT_CAP_COUNT: Final = 3
DEFAULT_CAP_WINDOW_S: Final = 7 * DAY_S


@dataclass(frozen=True, slots=True)
class NudgeRules:
    """The nudge section of the map."""

    policies: tuple[NudgePolicy, ...] = ()
    holdout: float = DEFAULT_HOLDOUT  # share of customers held out, by a stable hash of the id
    max_age_s: int = DEFAULT_MAX_AGE_S  # a stall detected later than this after its deadline earns no nudge
    cap_count: int = DEFAULT_CAP_COUNT  # at most this many nudges of any kind per customer ...
    cap_window_s: int = DEFAULT_CAP_WINDOW_S  # ... within this rolling window
    quiet_hours: QuietHours | None = None

    def for_trigger(self, trigger: Trigger, stage: str) -> NudgePolicy | None:
        for p in self.policies:
            if p.trigger == trigger and (not p.stages or stage in p.stages):
                return p
        return None

    def kind(self, kind: str) -> NudgePolicy | None:
        return next((p for p in self.policies if p.kind == kind), None)
