"""The journey map: ordered stages, what moves a customer into each, and rules.

A map is loaded from YAML into frozen dataclasses and validated while the YAML
node tree still knows its line numbers, so every problem is reported as
``FILE:LINE: problem``. The shape (see ``models/default_map.yaml``)::

    name: default
    channels: [web, mobile_app, ...]
    stages:                       # in journey order
      - name: awareness
        enter_on: [page_view, ...]  # event types that move a customer here
        stall_after: 14d            # optional: used by stall detection
      - name: defected
        exit: true                  # reachable from any stage
        enter_on: [unsubscribe]
    moves:                        # explicit moves outside the forward order
      - on: [purchase]
        from: [purchase, service]
        to: loyalty
    events: [coupon_redeemed]     # known types that move nobody on their own
    drift: {...}                  # optional: drift scoring (models.rules.DriftRules)
    nudges: {...}                 # optional: nudge policies (models.rules.NudgeRules)

Nothing here touches Kafka, Redis or Faust.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from models.errors import MapError
from models.rules import (
    DEFAULT_CAP_COUNT,
    DEFAULT_CAP_WINDOW_S,
    DEFAULT_HOLDOUT,
    DEFAULT_MAX_AGE_S,
    TRIGGERS,
    DriftRules,
    NudgePolicy,
    NudgeRules,
    QuietHours,
    Signal,
    Trigger,
)

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_DURATION_RE = re.compile(r"^(\d+)(s|m|h|d)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DEFAULT_MAP_NAME = "default_map.yaml"


@dataclass(frozen=True, slots=True)
class Stage:
    """One stage of the journey."""

    name: str
    index: int
    enter_on: tuple[str, ...] = ()
    exit: bool = False
    stall_after_s: int | None = None


@dataclass(frozen=True, slots=True)
class Move:
    """An explicit move: an event of one of ``on`` in a stage of ``from_`` goes to ``to``."""

    on: frozenset[str]
    from_: frozenset[str]
    to: str


@dataclass(frozen=True, slots=True)
class JourneyMap:
    """A validated journey map; build it with :func:`parse_map` or :func:`load_map`."""

    name: str
    stages: tuple[Stage, ...]
    channels: frozenset[str]
    moves: tuple[Move, ...] = ()
    extra_events: frozenset[str] = frozenset()
    drift: DriftRules | None = None
    nudges: NudgeRules = field(default_factory=NudgeRules)
    # Derived lookups, computed once: the reducer reads them per event.
    stage_by_name: Mapping[str, Stage] = field(init=False, repr=False, compare=False)
    entry_stage: Mapping[str, Stage] = field(init=False, repr=False, compare=False)
    event_types: frozenset[str] = field(init=False, repr=False, compare=False)
    first_stage: Stage = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name = {s.name: s for s in self.stages}
        entry = {t: s for s in self.stages for t in s.enter_on}
        types = set(entry) | set(self.extra_events)
        for m in self.moves:
            types |= m.on
        object.__setattr__(self, "stage_by_name", by_name)
        object.__setattr__(self, "entry_stage", entry)
        object.__setattr__(self, "event_types", frozenset(types))
        object.__setattr__(self, "first_stage", next(s for s in self.stages if not s.exit))

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages)


def parse_duration(text: str) -> int | None:
    """``"90s"``, ``"15m"``, ``"1h"``, ``"14d"`` to seconds; None if malformed or zero."""
    m = _DURATION_RE.match(text)
    if not m or int(m.group(1)) == 0:
        return None
    return int(m.group(1)) * _UNIT_SECONDS[m.group(2)]


class _Reader:
    """Walks the composed YAML node tree, raising MapError with line numbers."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, node: Node | None, problem: str) -> MapError:
        line = node.start_mark.line + 1 if node is not None else None
        return MapError(self.source, line, problem)

    def mapping(self, node: Node, what: str, allowed: Iterable[str]) -> dict[str, tuple[Node, Node]]:
        if not isinstance(node, MappingNode):
            raise self.fail(node, f"{what} must be a mapping")
        allowed_set = set(allowed)
        out: dict[str, tuple[Node, Node]] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, ScalarNode) else None
            if key not in allowed_set:
                raise self.fail(
                    key_node,
                    f"unknown key {key!r} in {what} (expected one of: {', '.join(sorted(allowed_set))})",
                )
            if key in out:
                raise self.fail(key_node, f"duplicate key {key!r} in {what}")
            out[key] = (key_node, value_node)
        return out

    def sequence(self, node: Node, what: str) -> list[Node]:
        if not isinstance(node, SequenceNode):
            raise self.fail(node, f"{what} must be a list")
        return list(node.value)

    def name(self, node: Node, what: str) -> str:
        if not isinstance(node, ScalarNode) or node.tag != "tag:yaml.org,2002:str":
            raise self.fail(node, f"{what} must be a string")
        if not NAME_RE.match(node.value):
            raise self.fail(
                node,
                f"{what} {node.value!r} must be lower-case letters, digits and '_', "
                "starting with a letter (at most 64 characters)",
            )
        return str(node.value)

    def names(self, node: Node, what: str) -> list[tuple[str, Node]]:
        return [(self.name(n, what), n) for n in self.sequence(node, f"{what} list")]

    def number(self, node: Node, what: str) -> float:
        if not isinstance(node, ScalarNode) or node.tag not in (
            "tag:yaml.org,2002:int",
            "tag:yaml.org,2002:float",
        ):
            raise self.fail(node, f"{what} must be a number")
        return float(yaml.safe_load(node.value))

    def duration(self, node: Node, what: str) -> int:
        seconds = parse_duration(str(node.value)) if isinstance(node, ScalarNode) else None
        if seconds is None:
            raise self.fail(node, f"{what} must be a positive duration like 90s, 15m, 1h or 14d")
        return seconds

    def boolean(self, node: Node, what: str) -> bool:
        if not isinstance(node, ScalarNode) or node.tag != "tag:yaml.org,2002:bool":
            raise self.fail(node, f"{what} must be true or false")
        return bool(yaml.safe_load(node.value))


def parse_map(text: str, source: str = "<map>") -> JourneyMap:
    """Parse and validate a journey map from YAML text."""
    r = _Reader(source)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise MapError(source, line, f"not valid YAML: {problem}") from exc
    if root is None:
        raise MapError(source, None, "the map is empty")
    top = r.mapping(root, "the map", ("name", "channels", "stages", "moves", "events", "drift", "nudges"))
    for required in ("name", "channels", "stages"):
        if required not in top:
            raise r.fail(root, f"the map needs a {required!r} key")

    name = r.name(top["name"][1], "map name")

    channels: set[str] = set()
    for ch, node in r.names(top["channels"][1], "channel"):
        if ch in channels:
            raise r.fail(node, f"channel {ch!r} is listed twice")
        channels.add(ch)
    if not channels:
        raise r.fail(top["channels"][1], "at least one channel is needed")

    stages: list[Stage] = []
    entered_by: dict[str, str] = {}
    stage_nodes = r.sequence(top["stages"][1], "stages")
    if not stage_nodes:
        raise r.fail(top["stages"][1], "at least one stage is needed")
    for index, snode in enumerate(stage_nodes):
        fields = r.mapping(snode, "a stage", ("name", "enter_on", "exit", "stall_after"))
        if "name" not in fields:
            raise r.fail(snode, "a stage needs a 'name'")
        sname = r.name(fields["name"][1], "stage name")
        if any(s.name == sname for s in stages):
            raise r.fail(fields["name"][1], f"stage {sname!r} is defined twice")
        enter_on: list[str] = []
        if "enter_on" in fields:
            for etype, enode in r.names(fields["enter_on"][1], "event type"):
                if etype in entered_by:
                    raise r.fail(
                        enode,
                        f"event type {etype!r} already moves customers to {entered_by[etype]!r}; "
                        "an event type enters one stage at most (use 'moves' for the exceptions)",
                    )
                entered_by[etype] = sname
                enter_on.append(etype)
        is_exit = r.boolean(fields["exit"][1], "exit") if "exit" in fields else False
        stall: int | None = None
        if "stall_after" in fields:
            vnode = fields["stall_after"][1]
            stall = parse_duration(str(vnode.value)) if isinstance(vnode, ScalarNode) else None
            if stall is None:
                raise r.fail(vnode, "stall_after must be a positive duration like 90s, 15m, 1h or 14d")
        stages.append(Stage(sname, index, tuple(enter_on), is_exit, stall))
    if all(s.exit for s in stages):
        raise r.fail(top["stages"][1], "at least one stage must not be an exit stage")
    known_stages = {s.name for s in stages}

    moves: list[Move] = []
    if "moves" in top:
        for mnode in r.sequence(top["moves"][1], "moves"):
            fields = r.mapping(mnode, "a move", ("on", "from", "to"))
            for required in ("on", "from", "to"):
                if required not in fields:
                    raise r.fail(mnode, f"a move needs {required!r}")
            on = [t for t, _ in r.names(fields["on"][1], "event type")]
            from_: list[str] = []
            for st, st_node in r.names(fields["from"][1], "stage"):
                if st not in known_stages:
                    raise r.fail(st_node, f"move from unknown stage {st!r}")
                from_.append(st)
            to_node = fields["to"][1]
            to = r.name(to_node, "stage")
            if to not in known_stages:
                raise r.fail(to_node, f"move to unknown stage {to!r}")
            if not on or not from_:
                raise r.fail(mnode, "a move needs at least one event type in 'on' and one stage in 'from'")
            moves.append(Move(frozenset(on), frozenset(from_), to))

    extra: set[str] = set()
    if "events" in top:
        extra = {t for t, _ in r.names(top["events"][1], "event type")}

    known_types = set(extra) | set(entered_by) | {t for m in moves for t in m.on}
    drift = _drift(r, top["drift"][1], known_stages, known_types) if "drift" in top else None
    nudges = (
        _nudges(r, top["nudges"][1], known_stages, known_types, channels) if "nudges" in top else NudgeRules()
    )
    if drift is None and any(p.trigger != "stall" for p in nudges.policies):
        raise r.fail(top["nudges"][1], "churn_risk and loyalty nudges need a 'drift' section")

    return JourneyMap(
        name=name,
        stages=tuple(stages),
        channels=frozenset(channels),
        moves=tuple(moves),
        extra_events=frozenset(extra),
        drift=drift,
        nudges=nudges,
    )


def _stage_ref(r: _Reader, node: Node, known: set[str]) -> str:
    name = r.name(node, "stage")
    if name not in known:
        raise r.fail(node, f"unknown stage {name!r}")
    return name


def _type_refs(r: _Reader, node: Node, known: set[str]) -> list[str]:
    nodes = [node] if isinstance(node, ScalarNode) else r.sequence(node, "event type list")
    out = []
    for n in nodes:
        t = r.name(n, "event type")
        if t not in known:
            raise r.fail(n, f"unknown event type {t!r} (not entered, moved on or listed under 'events')")
        out.append(t)
    return out


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


def _signal(r: _Reader, node: Node, known_types: set[str]) -> list[Signal]:
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
        for t in _type_refs(r, f["on"][1], known_types)
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


def _drift(r: _Reader, node: Node, stages: set[str], types: set[str]) -> DriftRules:
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
        frozenset(_stage_ref(r, n, stages) for n in r.sequence(f["loyalty_from"][1], "loyalty_from"))
        if "loyalty_from" in f
        else frozenset()
    )
    return DriftRules(
        after=_stage_ref(r, f["after"][1], stages),
        half_life_s=r.duration(f["half_life"][1], "half_life"),
        loyalty_at=loyalty_at,
        loyalty_stage=_stage_ref(r, f["loyalty_to"][1], stages) if "loyalty_to" in f else None,
        loyalty_from=loyalty_from,
        risk_at=risk_at,
        inactive_after_s=inactive_after,
        inactive_weight=r.number(f["inactive_weight"][1], "inactive_weight")
        if "inactive_weight" in f
        else 0.0,
        defect_after_s=defect_after,
        defect_stage=_stage_ref(r, f["defect_to"][1], stages),
        signals=tuple(signals),
    )


_CLOCK_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def _clock(r: _Reader, node: Node, what: str) -> int:
    m = _CLOCK_RE.match(str(node.value)) if isinstance(node, ScalarNode) else None
    if m is None:
        raise r.fail(node, f'{what} must be a time of day like "21:00" (UTC)')
    return int(m.group(1)) * 60 + int(m.group(2))


_POLICY_KEYS = ("kind", "on", "stages", "channel", "cooldown", "window", "converts_on")


def _policy(r: _Reader, node: Node, stages: set[str], types: set[str], channels: set[str]) -> NudgePolicy:
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
        frozenset(_stage_ref(r, n, stages) for n in r.sequence(f["stages"][1], "stages"))
        if "stages" in f
        else frozenset()
    )
    if trigger == "stall" and not on_stages:
        raise r.fail(node, "a stall nudge needs the 'stages' whose stalls earn it")
    trig: Trigger = trigger  # type: ignore[assignment]
    return NudgePolicy(
        kind=r.name(f["kind"][1], "nudge kind"),
        trigger=trig,
        stages=on_stages,
        channel=channel,
        cooldown_s=r.duration(f["cooldown"][1], "cooldown"),
        window_s=r.duration(f["window"][1], "window"),
        converts_on=frozenset(_type_refs(r, f["converts_on"][1], types))
        if "converts_on" in f
        else frozenset(),
    )


def _nudges(r: _Reader, node: Node, stages: set[str], types: set[str], channels: set[str]) -> NudgeRules:
    f = r.mapping(node, "the nudges section", ("holdout", "max_age", "cap", "quiet_hours", "policies"))
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
            raise r.fail(f["quiet_hours"][1], "quiet_hours needs 'from' and 'to' (UTC, like \"21:00\")")
        quiet = QuietHours(_clock(r, q["from"][1], "from"), _clock(r, q["to"][1], "to"))
        if quiet.start_min == quiet.end_min:
            raise r.fail(f["quiet_hours"][1], "quiet_hours 'from' and 'to' must differ")
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
    )


def load_map(path: str | Path | None = None) -> JourneyMap:
    """Load a map file; ``None`` loads the default map shipped with the package."""
    if path is None:
        text = resources.files("models").joinpath(DEFAULT_MAP_NAME).read_text(encoding="utf-8")
        return parse_map(text, f"models/{DEFAULT_MAP_NAME}")
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise MapError(str(p), None, f"cannot read the map: {exc.strerror or exc}") from exc
    return parse_map(text, str(p))
