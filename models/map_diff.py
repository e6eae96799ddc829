"""What changes between two journey maps: ``journey map diff OLD NEW``.

Pure: two validated maps in, a list of :class:`Change` out, each naming the
section, the thing and its old and new value (None: absent). Stages added,
removed, reordered, made an exit or given another stall threshold; event
types moved to another stage (or added, or dropped); explicit moves,
channels, extra events and Segment event names added or removed; drift,
nudge and retention settings changed.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from models.journey_map import JourneyMap
from models.map_reader import format_duration


@dataclass(frozen=True, slots=True)
class Change:
    section: str  # stages, events, moves, channels, drift, nudges, retention, event_names, map
    what: str
    old: Any
    new: Any

    def to_dict(self) -> dict[str, Any]:
        return {"section": self.section, "what": self.what, "old": _plain(self.old), "new": _plain(self.new)}

    def line(self) -> str:
        if self.old is None:
            return f"+ {self.section}: {self.what} = {_show(self.new)}"
        if self.new is None:
            return f"- {self.section}: {self.what} (was {_show(self.old)})"
        return f"~ {self.section}: {self.what}: {_show(self.old)} -> {_show(self.new)}"


def _plain(v: Any) -> Any:
    if isinstance(v, frozenset | set):
        return sorted(v)
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    return v


def _show(v: Any) -> str:
    v = _plain(v)
    if isinstance(v, list):
        return "[" + ", ".join(str(x) for x in v) + "]"
    return str(v)


def _seconds(s: int | None) -> str | None:
    return None if s is None else format_duration(s)


def _fields(section: str, old: Any, new: Any, prefix: str = "") -> list[Change]:
    """Field by field, for two values of one rules dataclass (either may be None)."""
    if old is None and new is None:
        return []
    if old is None or new is None:
        return [
            Change(section, prefix or section, None if old is None else "set", None if new is None else "set")
        ]
    out = []
    for f in fields(old):
        if not f.compare:
            continue
        a, b = getattr(old, f.name), getattr(new, f.name)
        if a != b:
            out.append(Change(section, f"{prefix}{f.name}", a, b))
    return out


def diff_maps(old: JourneyMap, new: JourneyMap) -> list[Change]:
    """Every change from ``old`` to ``new``, section by section."""
    out: list[Change] = []
    if old.name != new.name:
        out.append(Change("map", "name", old.name, new.name))
    if old.version != new.version:
        out.append(Change("map", "version", old.version, new.version))

    o_st, n_st = old.stage_by_name, new.stage_by_name
    for name in [*old.stage_names, *(s for s in new.stage_names if s not in o_st)]:
        a, b = o_st.get(name), n_st.get(name)
        if a is None:
            assert b is not None
            out.append(
                Change("stages", name, None, f"position {b.index + 1}" + (" (exit)" if b.exit else ""))
            )
        elif b is None:
            out.append(Change("stages", name, f"position {a.index + 1}", None))
        else:
            if a.index != b.index:
                out.append(Change("stages", f"{name} position", a.index + 1, b.index + 1))
            if a.exit != b.exit:
                out.append(Change("stages", f"{name} exit", a.exit, b.exit))
            if a.stall_after_s != b.stall_after_s:
                out.append(
                    Change(
                        "stages", f"{name} stall_after", _seconds(a.stall_after_s), _seconds(b.stall_after_s)
                    )
                )

    entries = sorted(set(old.entry_stage) | set(new.entry_stage))
    for etype in entries:
        a_s, b_s = old.entry_stage.get(etype), new.entry_stage.get(etype)
        a_n = a_s.name if a_s is not None else None
        b_n = b_s.name if b_s is not None else None
        if a_n != b_n:
            out.append(Change("events", f"{etype} enters", a_n, b_n))
    for etype in sorted(old.event_types - new.event_types):
        out.append(Change("events", f"{etype} known", True, None))
    for etype in sorted(new.event_types - old.event_types):
        if etype not in new.entry_stage:
            out.append(Change("events", f"{etype} known", None, True))

    def moves(m: JourneyMap) -> set[tuple[tuple[str, ...], tuple[str, ...], str]]:
        return {(tuple(sorted(x.on)), tuple(sorted(x.from_)), x.to) for x in m.moves}

    for on, frm, to in sorted(moves(old) - moves(new)):
        out.append(Change("moves", f"on {_show(on)} from {_show(frm)}", to, None))
    for on, frm, to in sorted(moves(new) - moves(old)):
        out.append(Change("moves", f"on {_show(on)} from {_show(frm)}", None, to))

    for ch in sorted(old.channels - new.channels):
        out.append(Change("channels", ch, True, None))
    for ch in sorted(new.channels - old.channels):
        out.append(Change("channels", ch, None, True))

    for name in sorted(set(old.event_names) | set(new.event_names)):
        a_t, b_t = old.event_names.get(name), new.event_names.get(name)
        if a_t != b_t:
            out.append(Change("event_names", name, a_t, b_t))

    out += _fields("drift", old.drift, new.drift)
    o_n, n_n = old.nudges, new.nudges
    for f in fields(o_n):
        if f.name != "policies" and getattr(o_n, f.name) != getattr(n_n, f.name):
            out.append(Change("nudges", f.name, getattr(o_n, f.name), getattr(n_n, f.name)))
    o_p = {p.kind: p for p in o_n.policies}
    n_p = {p.kind: p for p in n_n.policies}
    for kind in sorted(set(o_p) | set(n_p)):
        out += _fields("nudges", o_p.get(kind), n_p.get(kind), f"{kind}.")
    out += _fields("retention", old.retention, new.retention)
    return out
