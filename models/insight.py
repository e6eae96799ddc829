"""The arithmetic of the insight layer: flows, time to convert, comparisons
with confidence intervals, nudge lift and next-stage odds.

Pure functions of counts. The counts come from the customers' states
(``stream.engine.stage_counts`` sums them per partition and ``GET /funnel``
over the workers), so the same functions applied to the plain fold's states
give the same answers: the tests hold them to that.

**Durations** are kept in logarithmic buckets: bucket ``i`` holds durations
in ``(2**((i-1)/8), 2**(i/8)]`` seconds (bucket 0: a second or less), so a
percentile is known to within one bucket, about 9% of its value, from a
second to years, in at most ~230 buckets per pair.

**Censoring.** A customer who reached stage A and not yet B is *waiting*:
* time to convert (:func:`conversion_times`) keeps them in the cohort as not
  converted at any time: ``of_all`` percentiles are the times by which that
  share of everyone who reached A had reached B (``None`` while fewer have);
  ``of_converted`` are over those who did. Neither drops a waiting customer
  silently: the answer says how many wait.
* next-stage odds (:func:`odds`) use the Kaplan-Meier estimate, each waiting
  customer censored at the time they have waited so far.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from models.dimensions import value as dim_value
from models.journey_map import JourneyMap
from models.state import CustomerState

# Buckets per doubling of a duration.
STEPS: Final = 8
Z95: Final = 1.959963984540054
# Prometheus buckets for time to convert: a minute to four weeks (seconds).
TTC_BUCKETS: Final = (
    60.0,
    300.0,
    900.0,
    1800.0,
    3600.0,
    7200.0,
    14400.0,
    43200.0,
    86400.0,
    172800.0,
    345600.0,
    604800.0,
    1209600.0,
    2419200.0,
)


def bucket(seconds: float) -> int:
    """The log bucket of a duration (see the module's doc)."""
    if seconds <= 1:
        return 0
    return math.ceil(math.log2(seconds) * STEPS - 1e-9)


def upper(i: int) -> float:
    """The upper bound of bucket ``i``, in seconds."""
    return float(2 ** (i / STEPS))


def mid(i: int) -> float:
    """A bucket's representative value: the geometric middle (0.5 s for bucket 0)."""
    return 0.5 if i <= 0 else float(2 ** ((i - 0.5) / STEPS))


def quantile(counts: Mapping[int, float], q: float, total: float | None = None) -> float | None:
    """The ``q`` quantile of the durations in ``counts`` (bucket -> customers),
    out of ``total`` (default: their sum; more when some never converted). None
    if fewer than ``q * total`` are in the buckets."""
    n = sum(counts.values())
    total = n if total is None else total
    if total <= 0 or n < q * total:
        return None
    need, seen = q * total, 0.0
    for i in sorted(counts):
        seen += counts[i]
        if seen >= need - 1e-9:
            return round(mid(i), 3)
    return None


def conversion_times(converted: Mapping[int, float], waiting: float) -> dict[str, Any]:
    """Time to convert from A to B: percentiles over those who converted and
    over everyone who reached A (waiting customers: not converted)."""
    n = sum(converted.values())
    return {
        "converted": int(n),
        "waiting": int(waiting),
        "of_converted": {f"p{int(q * 100)}": quantile(converted, q) for q in (0.5, 0.9, 0.99)},
        "of_all": {f"p{int(q * 100)}": quantile(converted, q, n + waiting) for q in (0.5, 0.9, 0.99)},
    }


def histogram(
    converted: Mapping[int, float], bounds: Iterable[float] = TTC_BUCKETS
) -> list[tuple[float, float]]:
    """Cumulative counts at Prometheus bucket bounds (a log bucket counts
    under the first bound at or above its upper end), ``+Inf`` last."""
    out, items = [], sorted(converted.items())
    for le in (*bounds, math.inf):
        out.append((le, float(sum(n for i, n in items if upper(i) <= le * (1 + 1e-12)))))
    return out


@dataclass(frozen=True, slots=True)
class Interval:
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"low": round(self.low, 4), "high": round(self.high, 4)}


def wilson(x: float, n: float) -> Interval | None:
    """The Wilson score 95% interval of a proportion ``x / n``."""
    if n <= 0:
        return None
    p, z2 = x / n, Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return Interval(max(0.0, centre - half), min(1.0, centre + half))


def compare(x1: float, n1: float, x2: float, n2: float) -> dict[str, Any] | None:
    """Two proportions, ``x1/n1`` (treated, variant) against ``x2/n2``
    (control, held out): the difference and its 95% interval by Newcombe's
    method (from the two Wilson intervals; sound for small counts and rates
    near 0 or 1, where the plain Wald interval is not). Significant when the
    interval excludes 0. None without customers on both sides."""
    a, b = wilson(x1, n1), wilson(x2, n2)
    if a is None or b is None:
        return None
    p1, p2 = x1 / n1, x2 / n2
    d = p1 - p2
    low = d - math.sqrt((p1 - a.low) ** 2 + (b.high - p2) ** 2)
    high = d + math.sqrt((a.high - p1) ** 2 + (p2 - b.low) ** 2)
    return {
        "rate": round(p1, 4),
        "baseline_rate": round(p2, 4),
        "difference": round(d, 4),
        "interval": Interval(low, high).to_dict(),
        "significant": low > 0 or high < 0,
    }


def lift(outcomes: Mapping[str, float], triggers: Mapping[str, str]) -> list[dict[str, Any]]:
    """Per nudge kind (and its trigger): the conversion of nudged customers
    against held-out ones, from outcome counts keyed
    ``kind|nudged-or-held_out|converted-or-not_converted``."""
    kinds: dict[str, dict[str, float]] = {}
    for key, n in outcomes.items():
        kind, group, result = key.split("|")
        k = kinds.setdefault(kind, {})
        k[f"{group}|{result}"] = k.get(f"{group}|{result}", 0) + n
    out = []
    for kind in sorted(kinds):
        k = kinds[kind]
        xn, xh = k.get("nudged|converted", 0), k.get("held_out|converted", 0)
        nn, nh = xn + k.get("nudged|not_converted", 0), xh + k.get("held_out|not_converted", 0)
        out.append(
            {
                "kind": kind,
                "trigger": triggers.get(kind),
                "nudged": {"customers": int(nn), "converted": int(xn)},
                "held_out": {"customers": int(nh), "converted": int(xh)},
                "lift": compare(xn, nn, xh, nh),
            }
        )
    return out


def survival(events: Mapping[int, float], censored: Mapping[int, float]) -> list[tuple[int, float, float]]:
    """The Kaplan-Meier curve from conversion times (bucket -> customers who
    converted then) and censoring times (bucket -> customers still waiting
    after that long): ``(bucket, S after it, customers at risk in it)``, in
    order. Within a bucket conversions come before censoring (the usual tie rule)."""
    at_risk = float(sum(events.values()) + sum(censored.values()))
    s, out = 1.0, []
    for i in sorted(set(events) | set(censored)):
        d = events.get(i, 0.0)
        if at_risk > 0 and d:
            s *= 1 - d / at_risk
        out.append((i, s, at_risk))
        at_risk -= d + censored.get(i, 0.0)
    return out


def _s_at(curve: list[tuple[int, float, float]], seconds: float, *, inclusive: bool) -> tuple[float, float]:
    """S at ``seconds`` (after the buckets before its own, or up to and
    including it) and the customers at risk at the start of its bucket."""
    b = bucket(seconds)
    s = 1.0
    for i, si, ri in curve:
        if i > b or (i == b and not inclusive):
            return s, ri
        s = si
    return s, 0.0


def odds(
    events: Mapping[int, float], censored: Mapping[int, float], waited_s: float, horizon_s: float
) -> dict[str, Any] | None:
    """The chance that a customer who has waited ``waited_s`` reaches the
    next stage within ``horizon_s`` more: ``(S(w) - S(w+h)) / S(w)`` on the
    Kaplan-Meier curve. With the evidence: the customers the curve rests on,
    how many converted, how many are at risk at ``w`` (those who waited as
    long), a 95% interval (Wilson's, on the customers at risk), and the
    median further wait of those who convert within the horizon. None
    without evidence."""
    curve = survival(events, censored)
    if not curve:
        return None
    s_w, risk_w = _s_at(curve, waited_s, inclusive=False)
    s_h, _ = _s_at(curve, waited_s + horizon_s, inclusive=True)
    if s_w <= 0:
        return None
    p = max(0.0, min(1.0, (s_w - s_h) / s_w))
    interval = wilson(p * risk_w, risk_w) if risk_w >= 1 else None
    wait = None
    if p > 0:
        half = s_w - (s_w - s_h) / 2
        for i, si, _ in curve:
            if upper(i) > waited_s and si <= half + 1e-12:
                wait = round(max(0.0, mid(i) - waited_s), 1)
                break
    return {
        "probability": round(p, 4),
        "interval": interval.to_dict() if interval is not None else None,
        "expected_wait_seconds": wait,
        "evidence": {
            "customers": int(sum(events.values()) + sum(censored.values())),
            "converted": int(sum(events.values())),
            "at_risk": int(risk_w),
        },
    }


def brier(pairs: Iterable[tuple[float, bool]]) -> float:
    """The Brier score of (predicted probability, outcome) pairs (0 is perfect)."""
    items = list(pairs)
    return sum((p - float(y)) ** 2 for p, y in items) / len(items) if items else math.nan


def reliability(pairs: Iterable[tuple[float, bool]], bins: int = 10) -> list[dict[str, Any]]:
    """Calibration by decile of the predictions: per bin, the mean prediction
    against the share that happened."""
    items = sorted(pairs)
    out = []
    for b in range(bins):
        chunk = items[b * len(items) // bins : (b + 1) * len(items) // bins]
        if not chunk:
            continue
        out.append(
            {
                "bin": b + 1,
                "customers": len(chunk),
                "predicted": round(sum(p for p, _ in chunk) / len(chunk), 4),
                "observed": round(sum(1 for _, y in chunk if y) / len(chunk), 4),
            }
        )
    return out


def _curve_of(
    ttc: Mapping[str, float], waiting: Mapping[str, float], prefix: str, stage: str
) -> tuple[dict[int, float], dict[int, float]]:
    """The conversion and censoring buckets of ``stage`` onward, of one slice."""
    ev_pre, cen_pre = f"{prefix}{stage}>+|", f"{prefix}{stage}|"
    events = {int(k[len(ev_pre) :]): n for k, n in ttc.items() if n and k.startswith(ev_pre)}
    censored = {int(k[len(cen_pre) :]): n for k, n in waiting.items() if n and k.startswith(cen_pre)}
    return events, censored


def next_stage(
    jmap: JourneyMap,
    state: CustomerState,
    ttc: Mapping[str, float],
    waiting: Mapping[str, float],
    now_ms: int,
) -> dict[str, Any] | None:
    """A customer's odds of reaching a later stage (any that is not an exit)
    within the map's horizon, given how long ago they reached their stage:
    :func:`odds` on the Kaplan-Meier curve of everyone who reached it (of
    their value of the map's ``odds.by`` dimension, where that rests on at
    least ``min_evidence`` customers). ``ttc`` and ``waiting`` are the summed
    funnel figures (``stream.engine.stage_counts``: ``stage>+|bucket`` and
    ``stage|age bucket``). None in an exit stage or the last one."""
    here = jmap.stage_by_name.get(state.stage)
    if here is None or here.exit or not any(s.index > here.index and not s.exit for s in jmap.stages):
        return None
    rules = jmap.insight.odds
    since = state.stages.get(state.stage, state.stage_entered_at)
    waited = max(0.0, (now_ms - since) / 1000)
    group = "all customers"
    events, censored = _curve_of(ttc, waiting, "", state.stage)
    if rules.by is not None:
        d = next(x for x in jmap.dimensions if x.name == rules.by)
        v = dim_value(state.dims, d)
        e2, c2 = _curve_of(ttc, waiting, f"{d.name}={v}/", state.stage)
        if sum(e2.values()) + sum(c2.values()) >= rules.min_evidence:
            events, censored, group = e2, c2, f"{d.name}={v}"
    answer = odds(events, censored, waited, rules.horizon_s)
    if answer is None:
        return None
    return {
        "stage": state.stage,
        "to": "any later stage",
        "horizon_seconds": rules.horizon_s,
        "waited_seconds": round(waited, 1),
        "estimated_from": group,
        **answer,
    }
