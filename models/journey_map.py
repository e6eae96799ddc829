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
    retention: {idle: 400d, exited: 90d}  # optional: forget idle customers (models.rules.RetentionRules)
    dimensions: [...]             # optional: bounded dimensions (models.dimensions)
    insight: {...}                # optional: after-stall window, next-stage odds (models.dimensions)

Nothing here touches Kafka, Redis or Faust.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode

from models.dimensions import Dimension, InsightRules, parse_dimensions, parse_insight
from models.errors import MapError
from models.map_reader import Reader
from models.rules import DriftRules, NudgeRules, RetentionRules, parse_drift, parse_nudges, parse_retention

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


# The identify event (models.identity): every map knows it. It names the
# customer as a known id and may link an anonymous id to them; like any
# event it counts, and a map may list it under a stage's enter_on.
IDENTIFY = "identify"


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
    retention: RetentionRules | None = None  # None: customers are kept however long idle
    # Segment track event names the map adds to the built-in ones (models.segment) -> event type
    event_names: Mapping[str, str] = field(default_factory=dict, compare=False)
    # The map's version: its `version` key, else a digest of its content
    # (comments and layout aside). Each customer's state records the version
    # that last wrote it; `journey map diff` compares two.
    version: str = field(default="", compare=False)
    # Bounded dimensions of customers (models.dimensions) and the insight settings.
    dimensions: tuple[Dimension, ...] = ()
    insight: InsightRules = field(default_factory=InsightRules)
    # Derived lookups, computed once: the reducer reads them per event.
    stage_by_name: Mapping[str, Stage] = field(init=False, repr=False, compare=False)
    entry_stage: Mapping[str, Stage] = field(init=False, repr=False, compare=False)
    event_types: frozenset[str] = field(init=False, repr=False, compare=False)
    first_stage: Stage = field(init=False, repr=False, compare=False)
    # (current stage or None for a new customer, event type) -> the stage it
    # moves to, or None: :meth:`stage_rule` answered once for every pair.
    stage_table: Mapping[tuple[str | None, str], Stage | None] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name = {s.name: s for s in self.stages}
        entry = {t: s for s in self.stages for t in s.enter_on}
        types = set(entry) | set(self.extra_events) | {IDENTIFY}
        for m in self.moves:
            types |= m.on
        object.__setattr__(self, "stage_by_name", by_name)
        object.__setattr__(self, "entry_stage", entry)
        object.__setattr__(self, "event_types", frozenset(types))
        object.__setattr__(self, "first_stage", next(s for s in self.stages if not s.exit))
        currents: list[str | None] = [None, *by_name]
        table = {(c, t): self.stage_rule(c, t) for c in currents for t in types}
        object.__setattr__(self, "stage_table", table)

    def target(self, current: str | None, event_type: str) -> Stage | None:
        """The stage an event of ``event_type`` moves a customer in ``current`` to, if any."""
        try:
            return self.stage_table[current, event_type]
        except KeyError:  # a type the map does not know
            return self.stage_rule(current, event_type)

    def stage_rule(self, current: str | None, event_type: str) -> Stage | None:
        """The movement rule (README "Journey semantics")."""
        if current is None:
            return self.entry_stage.get(event_type, self.first_stage)
        for move in self.moves:
            if event_type in move.on and current in move.from_:
                return self.stage_by_name[move.to] if move.to != current else None
        target = self.entry_stage.get(event_type)
        if target is None or target.name == current:
            return None
        here = self.stage_by_name[current]
        # Exit stages are reached from anywhere; other stages only forward.
        # A customer in an exit stage comes back only through explicit moves.
        if not here.exit and (target.exit or target.index > here.index):
            return target
        return None

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages)


def parse_map(text: str, source: str = "<map>") -> JourneyMap:
    """Parse and validate a journey map from YAML text."""
    r = Reader(source)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise MapError(source, line, f"not valid YAML: {problem}") from exc
    if root is None:
        raise MapError(source, None, "the map is empty")
    top = r.mapping(
        root,
        "the map",
        (
            "name",
            "version",
            "channels",
            "stages",
            "moves",
            "events",
            "drift",
            "nudges",
            "retention",
            "event_names",
            "dimensions",
            "insight",
        ),
    )
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
        stall = r.duration(fields["stall_after"][1], "stall_after") if "stall_after" in fields else None
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
    drift = parse_drift(r, top["drift"][1], known_stages, known_types) if "drift" in top else None
    nudges = NudgeRules()
    if "nudges" in top:
        nudges = parse_nudges(r, top["nudges"][1], known_stages, known_types, channels)
    if drift is None and any(p.trigger in ("churn_risk", "loyalty") for p in nudges.policies):
        raise r.fail(top["nudges"][1], "churn_risk and loyalty nudges need a 'drift' section")

    names = _event_names(r, top["event_names"][1], known_types) if "event_names" in top else {}
    dims = parse_dimensions(r, top["dimensions"][1]) if "dimensions" in top else ()
    insight = parse_insight(r, top["insight"][1], dims) if "insight" in top else InsightRules()
    if "version" in top:
        vnode = top["version"][1]
        version = vnode.value if isinstance(vnode, ScalarNode) else None
        if not isinstance(version, str) or not 0 < len(version) <= 64 or not version.isprintable():
            raise r.fail(vnode, "version must be text of 1 to 64 printable characters")
    else:
        version = content_version(yaml.safe_load(text))
    return JourneyMap(
        name=name,
        stages=tuple(stages),
        channels=frozenset(channels),
        moves=tuple(moves),
        extra_events=frozenset(extra),
        drift=drift,
        nudges=nudges,
        retention=parse_retention(r, top["retention"][1]) if "retention" in top else None,
        event_names=names,
        version=version,
        dimensions=dims,
        insight=insight,
    )


def content_version(doc: object) -> str:
    """A map's version from its content: the first 12 hex digits of a digest
    of its YAML read as data (keys sorted), so comments and layout do not
    count and any change of meaning does."""

    def plain(v: object) -> object:  # YAML keys may be booleans (`on:`): every key as text
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, list):
            return [plain(x) for x in v]
        return v

    canonical = json.dumps(plain(doc), sort_keys=True, separators=(",", ":"), default=str)
    return "c" + hashlib.blake2b(canonical.encode(), digest_size=6).hexdigest()


def _event_names(r: Reader, node: Node, known_types: set[str]) -> dict[str, str]:
    """``event_names``: a Segment track event name -> one of the map's event types."""
    if not isinstance(node, MappingNode):
        raise r.fail(node, "event_names must be a mapping of event names to event types")
    out: dict[str, str] = {}
    for key_node, value_node in node.value:
        key = key_node.value if isinstance(key_node, ScalarNode) else None
        if not isinstance(key, str) or not key.strip() or len(key) > 128:
            raise r.fail(key_node, "an event name must be text of 1 to 128 characters")
        if key in out:
            raise r.fail(key_node, f"event name {key!r} is listed twice")
        etype = r.name(value_node, "event type")
        if etype not in known_types and etype != IDENTIFY:
            raise r.fail(value_node, f"event name {key!r} maps to {etype!r}, which the map does not know")
        out[key] = etype
    return out


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
