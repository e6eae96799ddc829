"""Bounded dimensions of customers (a segment, an A/B variant, a device
class) and the insight settings: what the map declares, and how a
customer's value is kept.

The map's ``dimensions`` section::

    dimensions:
      - name: device            # the label's name in /funnel and Prometheus
        property: device        # the event property it is read from
        values: [desktop, mobile, tablet]
        keep: first             # first (the first value seen sticks) or latest
      - {name: variant, property: ab_variant, values: [A, B], keep: first, experiment: true}

A value the map does not list is kept as ``other``; a customer who never sent
the property is ``unknown``. So a dimension has at most its values plus
those two, whatever the events send: Prometheus labels stay bounded by the
map. ``experiment: true`` compares the first value (the control) with each of
the others in ``/funnel`` (a two-proportion interval per conversion).

The ``insight`` section::

    insight:
      after_stall: 7d    # what stalled customers did next: their first event within this window
      odds:              # next-stage odds (models.insight)
        horizon: 7d      # the chance of reaching a later stage within this
        by: device       # per value of this dimension, where it has enough evidence
        min_evidence: 30 # customers an estimate rests on at least (else: all customers)

Pure: nothing here touches Kafka, Redis or Faust.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from yaml.nodes import Node, ScalarNode

from models.map_reader import Reader

OTHER: Final = "other"
UNKNOWN: Final = "unknown"
MAX_DIMENSIONS: Final = 4
MAX_VALUES: Final = 12
VALUE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
DAY_S: Final = 86_400
DEFAULT_HORIZON_S: Final = 7 * DAY_S
DEFAULT_EVIDENCE: Final = 30

Keep = Literal["first", "latest"]


@dataclass(frozen=True, slots=True)
class Dimension:
    """One bounded dimension: its values are ``values`` plus ``other`` and ``unknown``."""

    name: str
    property: str
    values: tuple[str, ...]
    keep: Keep = "first"
    experiment: bool = False
    allowed: frozenset[str] = field(init=False, repr=False, compare=False)
    keep_first: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed", frozenset(self.values))
        object.__setattr__(self, "keep_first", self.keep == "first")

    def labels(self) -> tuple[str, ...]:
        """Every value a customer can have in this dimension."""
        return (*self.values, OTHER, UNKNOWN)


@dataclass(frozen=True, slots=True)
class OddsRules:
    horizon_s: int = DEFAULT_HORIZON_S
    by: str | None = None  # a dimension name
    min_evidence: int = DEFAULT_EVIDENCE


@dataclass(frozen=True, slots=True)
class InsightRules:
    after_stall_s: int = 7 * DAY_S
    odds: OddsRules = OddsRules()


def update_dims(
    dims: tuple[Dimension, ...], current: Mapping[str, str], props: Mapping[str, Any] | None
) -> dict[str, str] | None:
    """A customer's dimension values after an event with ``props``: None if
    nothing changes (the common case: no property of a dimension)."""
    if props is None or not dims:
        return None
    out: dict[str, str] | None = None
    for d in dims:  # per event: one lookup per dimension in the common case
        raw = props.get(d.property)
        if raw is None:
            continue
        value = raw if raw.__class__ is str and raw in d.allowed else OTHER
        had = current.get(d.name)
        if had == value or (had is not None and d.keep_first):
            continue
        if out is None:
            out = dict(current)
        out[d.name] = value
    return out


def value(current: Mapping[str, str], d: Dimension) -> str:
    """A customer's value in ``d``: ``unknown`` until an event names one."""
    v = current.get(d.name)
    return v if v is not None and (v in d.values or v == OTHER) else UNKNOWN


def parse_dimensions(r: Reader, node: Node) -> tuple[Dimension, ...]:
    out: list[Dimension] = []
    nodes = r.sequence(node, "dimensions")
    if len(nodes) > MAX_DIMENSIONS:
        raise r.fail(node, f"at most {MAX_DIMENSIONS} dimensions (each multiplies the series)")
    for dnode in nodes:
        f = r.mapping(dnode, "a dimension", ("name", "property", "values", "keep", "experiment"))
        for required in ("name", "property", "values"):
            if required not in f:
                raise r.fail(dnode, f"a dimension needs {required!r}")
        name = r.name(f["name"][1], "dimension name")
        if any(d.name == name for d in out):
            raise r.fail(f["name"][1], f"dimension {name!r} is defined twice")
        prop = r.name(f["property"][1], "property")
        values: list[str] = []
        for vnode in r.sequence(f["values"][1], "values"):
            v = vnode.value if isinstance(vnode, ScalarNode) else None
            if not isinstance(v, str) or not VALUE_RE.match(v):
                raise r.fail(vnode, "a dimension value must be 1 to 32 letters, digits, '_', '.' or '-'")
            if v in (OTHER, UNKNOWN):
                raise r.fail(vnode, f"{v!r} is kept for values the map does not list")
            if v in values:
                raise r.fail(vnode, f"value {v!r} is listed twice")
            values.append(v)
        if not values or len(values) > MAX_VALUES:
            raise r.fail(f["values"][1], f"a dimension needs 1 to {MAX_VALUES} values")
        keep = "first"
        if "keep" in f:
            knode = f["keep"][1]
            keep = str(knode.value) if isinstance(knode, ScalarNode) else ""
            if keep not in ("first", "latest"):
                raise r.fail(knode, "keep must be 'first' or 'latest'")
        experiment = r.boolean(f["experiment"][1], "experiment") if "experiment" in f else False
        if experiment and len(values) < 2:
            raise r.fail(f["values"][1], "an experiment needs at least two values (a control first)")
        out.append(Dimension(name, prop, tuple(values), keep, experiment))  # type: ignore[arg-type]
    return tuple(out)


def parse_insight(r: Reader, node: Node, dims: tuple[Dimension, ...]) -> InsightRules:
    f = r.mapping(node, "the insight section", ("after_stall", "odds"))
    after = r.duration(f["after_stall"][1], "after_stall") if "after_stall" in f else 7 * DAY_S
    odds = OddsRules()
    if "odds" in f:
        o = r.mapping(f["odds"][1], "odds", ("horizon", "by", "min_evidence"))
        by = None
        if "by" in o:
            by = r.name(o["by"][1], "dimension")
            if not any(d.name == by for d in dims):
                raise r.fail(o["by"][1], f"odds by unknown dimension {by!r}")
        evidence = DEFAULT_EVIDENCE
        if "min_evidence" in o:
            n = r.number(o["min_evidence"][1], "min_evidence")
            if n < 1 or n != int(n):
                raise r.fail(o["min_evidence"][1], "min_evidence must be a whole number of at least 1")
            evidence = int(n)
        odds = OddsRules(
            r.duration(o["horizon"][1], "horizon") if "horizon" in o else DEFAULT_HORIZON_S, by, evidence
        )
    return InsightRules(after, odds)
