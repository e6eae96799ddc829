"""Reads the journey map's YAML node tree, failing with the file and line of the bad node.

Used by :mod:`models.journey_map` (stages, moves, events) and
:mod:`models.rules` (drift and nudges): each parses the section it defines.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from models.errors import MapError

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_DURATION_RE = re.compile(r"^(\d+)(s|m|h|d)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


# The longest duration a map may state: a hundred years. Deadlines are event
# times (before year 3000) plus durations, and the deadline index keeps them
# as signed 64-bit integers; "99999999999999999999d" must be refused by line,
# not overflow a clock tick.
MAX_DURATION_S = 36_500 * 86_400


def parse_duration(text: str) -> int | None:
    """``"90s"``, ``"15m"``, ``"1h"``, ``"14d"`` to seconds; None if malformed, zero
    or longer than :data:`MAX_DURATION_S`."""
    m = _DURATION_RE.match(text)
    if not m or int(m.group(1)) == 0:
        return None
    seconds = int(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    return seconds if seconds <= MAX_DURATION_S else None


def format_duration(seconds: int) -> str:
    """The inverse of :func:`parse_duration`: the largest unit that divides it."""
    unit, size = next(
        (u, n) for u, n in sorted(_UNIT_SECONDS.items(), key=lambda u: -u[1]) if seconds % n == 0
    )
    return f"{seconds // size}{unit}"


class Reader:
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
            raise self.fail(
                node, f"{what} must be a positive duration like 90s, 15m, 1h or 14d, at most 36500d"
            )
        return seconds

    def boolean(self, node: Node, what: str) -> bool:
        if not isinstance(node, ScalarNode) or node.tag != "tag:yaml.org,2002:bool":
            raise self.fail(node, f"{what} must be true or false")
        return bool(yaml.safe_load(node.value))

    def stage_ref(self, node: Node, known: set[str]) -> str:
        """A stage name that must be one of ``known``."""
        name = self.name(node, "stage")
        if name not in known:
            raise self.fail(node, f"unknown stage {name!r}")
        return name

    def type_refs(self, node: Node, known: set[str]) -> list[str]:
        """One event type or a list of them, each one of ``known``."""
        nodes = [node] if isinstance(node, ScalarNode) else self.sequence(node, "event type list")
        out = []
        for n in nodes:
            t = self.name(n, "event type")
            if t not in known:
                raise self.fail(
                    n, f"unknown event type {t!r} (not entered, moved on or listed under 'events')"
                )
            out.append(t)
        return out
