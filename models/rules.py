"""The journey map's rules for drift and nudges, as plain frozen values.

Parsed and validated here from the map's ``drift:`` and ``nudges:``
sections (:func:`parse_drift`, :func:`parse_nudges`, called by
:func:`models.journey_map.parse_map`); README "Stalls, drift and nudges"
documents the YAML and the defaults. Nothing here has behaviour beyond
small look-ups: the scoring lives in :mod:`models.drift`, the nudge policy
in :mod:`models.nudges`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from yaml.nodes import Node, ScalarNode

from models.map_reader import Reader
from models.timeutil import is_zone

DAY_S: Final = 86_400

# What a nudge policy reacts to.
Trigger = Literal["stall", "churn_risk", "loyalty", "low_odds"]
TRIGGERS: Final = ("stall", "churn_risk", "loyalty", "low_odds")


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
    # low_odds: checked once per stage visit, ``after_s`` into it; a nudge if
    # the customer's next-stage odds (models.insight.next_stage) are below ``below``.
    below: float | None = None
    after_s: int | None = None


@dataclass(frozen=True, slots=True)
class QuietHours:
    """A daily span (minutes since local midnight, in the customer's zone) in which no nudge goes out."""

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
    # The zone of quiet hours and daily caps for a customer whose events name
    # none (properties.tz): an IANA name.
    time_zone: str = "UTC"
    daily_cap: int | None = None  # at most this many nudges per calendar day in the customer's zone

    def for_trigger(self, trigger: Trigger, stage: str) -> NudgePolicy | None:
        for p in self.policies:
            if p.trigger == trigger and (not p.stages or stage in p.stages):
                return p
        return None

    def kind(self, kind: str) -> NudgePolicy | None:
        return next((p for p in self.policies if p.kind == kind), None)


# Parsing: the map's drift: and nudges: sections into the values above.

_SIGNAL_KEYS = (
    "name",
    "on",
    "weight",
    "property",
    "at_least",
    "below",
    "repeat",
    "value_property",
    "per_unit",
    "max",
)


def _signal(r: Reader, node: Node, known_types: set[str]) -> list[Signal]:
    f = r.mapping(node, "a signal", _SIGNAL_KEYS)
    for required in ("name", "on", "weight"):
        if required not in f:
            raise r.fail(node, f"a signal needs {required!r}")
    name = r.name(f["name"][1], "signal name")
    prop = r.name(f["property"][1], "property") if "property" in f else None
    at_least = r.number(f["at_least"][1], "at_least") if "at_least" in f else None
    below = r.number(f["below"][1], "below") if "below" in f else None
    if prop is None and (at_least is not None or below is not None):
        raise r.fail(node, "at_least and below test a 'property'; name it")
    if prop is not None and at_least is None and below is None:
        raise r.fail(f["property"][1], "a signal's property needs 'at_least' or 'below'")
    value_prop = r.name(f["value_property"][1], "value_property") if "value_property" in f else None
    per_unit = r.number(f["per_unit"][1], "per_unit") if "per_unit" in f else 0.0
    value_max = r.number(f["max"][1], "max") if "max" in f else 0.0
    if value_prop is not None and (per_unit == 0 or value_max <= 0):
        raise r.fail(
            f["value_property"][1], "value_property needs a non-zero 'per_unit' and a positive 'max'"
        )
    return [
        Signal(
            name=name,
            on=t,
            weight=r.number(f["weight"][1], "weight"),
            prop=prop,
            at_least=at_least,
            below=below,
            repeat=r.boolean(f["repeat"][1], "repeat") if "repeat" in f else False,
            value_property=value_prop,
            per_unit=per_unit,
            value_max=value_max,
        )
        for t in r.type_refs(f["on"][1], known_types)
    ]


_DRIFT_KEYS = (
    "after",
    "half_life",
    "loyalty_at",
    "loyalty_to",
    "loyalty_from",
    "risk_at",
    "inactive_after",
    "inactive_weight",
    "defect_after",
    "defect_to",
    "signals",
)


def parse_drift(r: Reader, node: Node, stages: set[str], types: set[str]) -> DriftRules:
    f = r.mapping(node, "the drift section", _DRIFT_KEYS)
    for required in ("after", "half_life", "loyalty_at", "risk_at", "defect_after", "defect_to"):
        if required not in f:
            raise r.fail(node, f"the drift section needs {required!r}")
    loyalty_at = r.number(f["loyalty_at"][1], "loyalty_at")
    risk_at = r.number(f["risk_at"][1], "risk_at")
    if risk_at >= loyalty_at:
        raise r.fail(f["risk_at"][1], f"risk_at ({risk_at:g}) must be below loyalty_at ({loyalty_at:g})")
    inactive_after = r.duration(f["inactive_after"][1], "inactive_after") if "inactive_after" in f else 0
    defect_after = r.duration(f["defect_after"][1], "defect_after")
    if inactive_after and inactive_after >= defect_after:
        raise r.fail(f["inactive_after"][1], "inactive_after must be shorter than defect_after")
    signals: list[Signal] = []
    seen: set[str] = set()
    for snode in r.sequence(f["signals"][1], "signals") if "signals" in f else []:
        new = _signal(r, snode, types)
        if new[0].name in seen:
            raise r.fail(snode, f"signal {new[0].name!r} is defined twice")
        seen.add(new[0].name)
        signals.extend(new)
    loyalty_from = (
        frozenset(r.stage_ref(n, stages) for n in r.sequence(f["loyalty_from"][1], "loyalty_from"))
        if "loyalty_from" in f
        else frozenset()
    )
    return DriftRules(
        after=r.stage_ref(f["after"][1], stages),
        half_life_s=r.duration(f["half_life"][1], "half_life"),
        loyalty_at=loyalty_at,
        loyalty_stage=r.stage_ref(f["loyalty_to"][1], stages) if "loyalty_to" in f else None,
        loyalty_from=loyalty_from,
        risk_at=risk_at,
        inactive_after_s=inactive_after,
        inactive_weight=r.number(f["inactive_weight"][1], "inactive_weight")
        if "inactive_weight" in f
        else 0.0,
        defect_after_s=defect_after,
        defect_stage=r.stage_ref(f["defect_to"][1], stages),
        signals=tuple(signals),
    )


_CLOCK_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def _clock(r: Reader, node: Node, what: str) -> int:
    m = _CLOCK_RE.match(str(node.value)) if isinstance(node, ScalarNode) else None
    if m is None:
        raise r.fail(node, f'{what} must be a time of day like "21:00" (UTC)')
    return int(m.group(1)) * 60 + int(m.group(2))


_POLICY_KEYS = ("kind", "on", "stages", "channel", "cooldown", "window", "converts_on", "below", "after")


def _policy(r: Reader, node: Node, stages: set[str], types: set[str], channels: set[str]) -> NudgePolicy:
    f = r.mapping(node, "a nudge policy", _POLICY_KEYS)
    for required in ("kind", "on", "channel", "cooldown", "window"):
        if required not in f:
            raise r.fail(node, f"a nudge policy needs {required!r}")
    trigger_node = f["on"][1]
    trigger = str(trigger_node.value) if isinstance(trigger_node, ScalarNode) else ""
    if trigger not in TRIGGERS:
        raise r.fail(trigger_node, f"a nudge policy's 'on' must be one of: {', '.join(TRIGGERS)}")
    channel = r.name(f["channel"][1], "channel")
    if channel not in channels:
        raise r.fail(f["channel"][1], f"unknown channel {channel!r}")
    on_stages = (
        frozenset(r.stage_ref(n, stages) for n in r.sequence(f["stages"][1], "stages"))
        if "stages" in f
        else frozenset()
    )
    if trigger == "stall" and not on_stages:
        raise r.fail(node, "a stall nudge needs the 'stages' whose stalls earn it")
    below = after = None
    if trigger == "low_odds":
        if not on_stages or "below" not in f or "after" not in f:
            raise r.fail(
                node, "a low_odds nudge needs 'stages', 'below' (a probability) and 'after' (time in stage)"
            )
        below = r.number(f["below"][1], "below")
        if not 0 < below < 1:
            raise r.fail(f["below"][1], "below must be a probability between 0 and 1")
        after = r.duration(f["after"][1], "after")
    elif "below" in f or "after" in f:
        raise r.fail(node, "'below' and 'after' belong to a low_odds nudge")
    trig: Trigger = trigger  # type: ignore[assignment]
    return NudgePolicy(
        kind=r.name(f["kind"][1], "nudge kind"),
        trigger=trig,
        stages=on_stages,
        channel=channel,
        cooldown_s=r.duration(f["cooldown"][1], "cooldown"),
        window_s=r.duration(f["window"][1], "window"),
        converts_on=frozenset(r.type_refs(f["converts_on"][1], types)) if "converts_on" in f else frozenset(),
        below=below,
        after_s=after,
    )


def parse_nudges(r: Reader, node: Node, stages: set[str], types: set[str], channels: set[str]) -> NudgeRules:
    f = r.mapping(
        node,
        "the nudges section",
        ("holdout", "max_age", "cap", "quiet_hours", "policies", "time_zone", "daily_cap"),
    )
    holdout = r.number(f["holdout"][1], "holdout") if "holdout" in f else DEFAULT_HOLDOUT
    if not 0 <= holdout < 1:
        raise r.fail(f["holdout"][1], "holdout must be a share from 0 up to (not including) 1")
    cap_count, cap_window = DEFAULT_CAP_COUNT, DEFAULT_CAP_WINDOW_S
    if "cap" in f:
        c = r.mapping(f["cap"][1], "the nudge cap", ("count", "per"))
        if "count" not in c or "per" not in c:
            raise r.fail(f["cap"][1], "the nudge cap needs 'count' and 'per'")
        count = r.number(c["count"][1], "count")
        if count < 1 or count != int(count):
            raise r.fail(c["count"][1], "the cap count must be a whole number of at least 1")
        cap_count, cap_window = int(count), r.duration(c["per"][1], "per")
    quiet = None
    if "quiet_hours" in f:
        q = r.mapping(f["quiet_hours"][1], "quiet_hours", ("from", "to"))
        if "from" not in q or "to" not in q:
            raise r.fail(
                f["quiet_hours"][1],
                "quiet_hours needs 'from' and 'to' (the customer's local time, like \"21:00\")",
            )
        quiet = QuietHours(_clock(r, q["from"][1], "from"), _clock(r, q["to"][1], "to"))
        if quiet.start_min == quiet.end_min:
            raise r.fail(f["quiet_hours"][1], "quiet_hours 'from' and 'to' must differ")
    tz = "UTC"
    if "time_zone" in f:
        znode = f["time_zone"][1]
        tz = str(znode.value) if isinstance(znode, ScalarNode) else ""
        if not is_zone(tz):
            raise r.fail(znode, f"time_zone {tz!r} is not an IANA time zone (like Europe/Berlin or UTC)")
    daily = None
    if "daily_cap" in f:
        n = r.number(f["daily_cap"][1], "daily_cap")
        if n < 1 or n != int(n):
            raise r.fail(f["daily_cap"][1], "daily_cap must be a whole number of at least 1")
        daily = int(n)
    policies: list[NudgePolicy] = []
    for pnode in r.sequence(f["policies"][1], "policies") if "policies" in f else []:
        pol = _policy(r, pnode, stages, types, channels)
        if any(p.kind == pol.kind for p in policies):
            raise r.fail(pnode, f"nudge kind {pol.kind!r} is defined twice")
        policies.append(pol)
    return NudgeRules(
        policies=tuple(policies),
        holdout=holdout,
        max_age_s=r.duration(f["max_age"][1], "max_age") if "max_age" in f else DEFAULT_MAX_AGE_S,
        cap_count=cap_count,
        cap_window_s=cap_window,
        quiet_hours=quiet,
        time_zone=tz,
        daily_cap=daily,
    )


@dataclass(frozen=True, slots=True)
class RetentionRules:
    """How long an idle customer is kept: past the limit after their last
    event, a clock reading forgets them (the table's tombstone) and a later
    event starts a new journey. ``exited_s``: the limit in an exit stage
    (defected), if it differs from ``idle_s``."""

    idle_s: int
    exited_s: int | None = None

    def limit_ms(self, exited: bool) -> int:
        """The idle time after which a customer (in an exit stage or not) is forgotten."""
        if exited and self.exited_s is not None:
            return self.exited_s * 1000
        return self.idle_s * 1000


def parse_retention(r: Reader, node: Node) -> RetentionRules:
    f = r.mapping(node, "the retention section", ("idle", "exited"))
    if "idle" not in f:
        raise r.fail(node, "the retention section needs 'idle' (how long after the last event)")
    return RetentionRules(
        idle_s=r.duration(f["idle"][1], "idle"),
        exited_s=r.duration(f["exited"][1], "exited") if "exited" in f else None,
    )
