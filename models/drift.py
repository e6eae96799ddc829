"""Drift scoring: a customer's score toward loyalty (up) or defection (down).

Pure and deterministic. A score starts at 0 when the customer first reaches
the rules' ``after`` stage (a purchase, by default). Each matching signal
adds its weight at the event's time; every weight halves each half-life, so
recent behaviour counts most (recency). Repeat purchases with their order
value carry frequency and value. An event older than the score's reference
time adds its weight undecayed rather than rewinding the score: scores never
depend on arrival order beyond the order the fold applies events in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from models.rules import DriftRules, Signal
from models.state import SIGNALS_KEPT, Drift

INACTIVITY = "inactivity"


def decayed(score: float, from_ms: int, to_ms: int, half_life_s: int) -> float:
    """``score`` at ``to_ms``, halving every ``half_life_s``; no decay backwards."""
    if to_ms <= from_ms or score == 0.0:
        return score
    return score * math.pow(0.5, (to_ms - from_ms) / (half_life_s * 1000.0))


def _number(props: Mapping[str, Any] | None, name: str) -> float | None:
    if props is None:
        return None
    v = props.get(name)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def signal_weight(sig: Signal, props: Mapping[str, Any] | None, seen_before: int) -> float | None:
    """The change ``sig`` makes for an event with ``props``; None if it does not match.

    ``seen_before``: earlier events of the same type (for ``repeat``)."""
    if sig.repeat and seen_before < 1:
        return None
    if sig.prop is not None:
        v = _number(props, sig.prop)
        if v is None:
            return None
        if sig.at_least is not None and v < sig.at_least:
            return None
        if sig.below is not None and v >= sig.below:
            return None
    weight = sig.weight
    if sig.value_property is not None:
        v = _number(props, sig.value_property)
        if v is not None and v > 0:
            weight += min(sig.value_max, v * sig.per_unit)
    return weight


def hits(
    rules: DriftRules, event_type: str, props: Mapping[str, Any] | None, seen_before: int
) -> list[tuple[str, float]]:
    """The signals an event fires, with their changes."""
    out = []
    for sig in rules.by_type.get(event_type, ()):
        w = signal_weight(sig, props, seen_before)
        if w is not None and w != 0:
            out.append((sig.name, w))
    return out


def add(rules: DriftRules, drift: Drift, fired: list[tuple[str, float]], at: int) -> Drift:
    """``drift`` with ``fired`` signals applied at event time ``at``; the risk
    flag is left to :func:`crossed_risk`. New activity ends an inactive spell."""
    score = decayed(drift.score, drift.at, at, rules.half_life_s)
    signals = drift.signals
    for name, change in fired:
        score += change
        signals = (*signals, (name, change, at))
    if len(signals) > SIGNALS_KEPT:
        signals = signals[-SIGNALS_KEPT:]
    return Drift(score, max(drift.at, at), drift.at_risk, False, signals)


def crossed_risk(rules: DriftRules, before: Drift, after: Drift) -> bool:
    """True when the score has just gone to or below the risk bar."""
    return after.score <= rules.risk_at and not before.at_risk


def loyal(rules: DriftRules, drift: Drift) -> bool:
    return drift.score >= rules.loyalty_at
