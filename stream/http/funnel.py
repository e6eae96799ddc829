"""``GET /funnel``: the funnel over every worker, and ``GET /funnel/local``, one worker's share.

Each worker counts the customers of the partitions it owns
(``stream.engine.stage_counts``) and keeps time-in-stage histograms. The
worker asked gathers every worker's ``/funnel/local`` (signed by it, never
with the client's credentials: ``stream.http.peers``), counts each worker
once by its identity, and adds them up: :func:`funnel` is the arithmetic,
pure. A worker that does not answer is named, and the answer is a 206.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp
from faust.web import Request, Response, View

from models.dimensions import Dimension
from models.insight import bucket, compare, conversion_times, lift
from models.journey_map import JourneyMap
from models.state import LATER
from stream.engine.metrics import TrackerMetrics
from stream.engine.stage_counts import ENTRY, FIGURES, MINUTE_MS, ONWARD, Figures, StageCounts
from stream.faust.app import peer_urls
from stream.http.peers import peer_headers

if TYPE_CHECKING:
    from stream.worker import Worker

log = logging.getLogger(__name__)


def local_funnel(
    worker_id: str, metrics: TrackerMetrics, counts: StageCounts, now_ms: int | None = None
) -> dict[str, Any]:
    """This worker's figures: counts from its partitions, time-in-stage buckets
    from its histogram, and who it is (so a gatherer never counts it twice).
    The odds' waiting customers go as how long they have waited (log
    buckets at ``now_ms``), not as the minute they began: bounded, whatever
    the history."""
    buckets: dict[str, dict[str, float]] = {}
    for metric in metrics.stage_duration.collect():
        for sample in metric.samples:
            if sample.name.endswith("_bucket"):
                buckets.setdefault(sample.labels["stage"], {})[sample.labels["le"]] = sample.value
    figures = counts.totals().to_dict()
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    ages: dict[str, float] = {}
    for key, n in figures.pop("waiting", {}).items():
        where, minute = key.rsplit("|", 1)
        age = f"{where}|{bucket(max(0, now - int(minute) * MINUTE_MS) / 1000)}"
        ages[age] = ages.get(age, 0) + n
    figures["waiting"] = ages
    return {
        "worker": worker_id,
        "figures": figures,
        "stage_duration_buckets": buckets,
    }


async def gather_funnel(w: Worker) -> tuple[list[dict[str, Any]], list[str]]:
    """Every worker's ``/funnel/local`` (this one's without a request), each
    asked once with this worker's signature; each worker counted once, by its identity."""
    token = w.settings.token
    own = w.own_url()
    parts = [local_funnel(w.worker_id, w.metrics, w.stage_counts)]
    seen = {w.worker_id}
    missing: list[str] = []
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for url in peer_urls(w.app):
            if url == own:
                continue
            headers = peer_headers(token, "GET", "/funnel/local", int(time.time() * 1000))
            try:
                async with session.get(f"{url}/funnel/local", headers=headers, allow_redirects=False) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"status {resp.status}")
                    part = await resp.json()
                    if part.get("worker") in seen:
                        continue
                    seen.add(part.get("worker"))
                    parts.append(part)
            except Exception as exc:
                log.warning("GET /funnel: worker %s did not answer: %r", url, exc)
                missing.append(url)
    return parts, missing


def _top(counter: Counter[str], stage: str, n: int = 3) -> list[dict[str, Any]]:
    mine = [(k.split("|", 1)[1], v) for k, v in counter.items() if k.startswith(f"{stage}|") and v > 0]
    return [{"name": k, "count": int(v)} for k, v in sorted(mine, key=lambda kv: (-kv[1], kv[0]))[:n]]


def quantile_le(buckets: dict[str, float], q: float) -> float | None:
    """The ``q`` quantile from cumulative histogram buckets (linear within a bucket, as Prometheus does)."""
    bounds = sorted((float(le), n) for le, n in buckets.items())
    total = bounds[-1][1] if bounds else 0
    if not total:
        return None
    want, prev_le, prev_n = total * q, 0.0, 0.0
    for le, n in bounds:
        if n >= want:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (want - prev_n) / max(n - prev_n, 1e-9)
        prev_le, prev_n = le, n
    return None


def sliced(total: Figures, slice_: str | None) -> Figures:
    """The figures of one dimension value (``"device=mobile"``), its prefix
    taken off; of all customers (the keys without a prefix) for None."""
    pre = f"{slice_}/" if slice_ else ""
    out = Figures()
    for name in FIGURES:
        mine: Counter[str] = getattr(out, name)
        for k, v in getattr(total, name).items():
            if k.startswith(pre) if pre else "/" not in k:
                mine[k[len(pre) :]] += v
    return out


def add_parts(parts: Sequence[dict[str, Any]]) -> tuple[Figures, dict[str, dict[str, float]]]:
    """Every worker's figures added up, and their time-in-stage buckets."""
    total = Figures()
    buckets: dict[str, dict[str, float]] = {}
    for part in parts:
        total.add(Figures.from_dict(part["figures"]))
        for stage, bs in part.get("stage_duration_buckets", {}).items():
            mine = buckets.setdefault(stage, {})
            for le, n in bs.items():
                mine[le] = mine.get(le, 0.0) + n
    return total, buckets


def funnel(
    jmap: JourneyMap,
    pairs: Iterable[tuple[str, str]],
    parts: Sequence[dict[str, Any]],
    slice_: str | None = None,
) -> dict[str, Any]:
    """The funnel from every worker's figures (of one dimension value with
    ``slice_``, e.g. ``"device=mobile"``): live counts per stage, conversion
    between consecutive stages (of the customers who reached the first,
    those who reached the second or a later one), time in stage, the flows
    and the bottleneck they show, what stalled customers did next, time to
    convert, nudge lift, and per dimension its values' funnels and, for an
    experiment, each variant against the control."""
    everything, buckets = add_parts(parts)
    total = sliced(everything, slice_)
    pairs = tuple(pairs)
    stages = [
        {
            "stage": s.name,
            "customers": int(total.customers.get(s.name, 0)),
            "reached": int(total.reached.get(s.name, 0)),
            "stalled": int(total.stalled.get(s.name, 0)),
            # Time in stage is observed per move, not per customer: all customers only.
            "median_seconds_in_stage": None if slice_ else quantile_le(buckets.get(s.name, {}), 0.5),
            "p90_seconds_in_stage": None if slice_ else quantile_le(buckets.get(s.name, {}), 0.9),
            "top_touchpoints": _top(total.touchpoints, s.name),
            "top_channels": _top(total.channels, s.name),
            "mean_drift_score": (
                round(total.score_sum[s.name] / 1000 / total.scored[s.name], 3)
                if total.scored.get(s.name)
                else None
            ),
        }
        for s in jmap.stages
    ]
    out: dict[str, Any] = {
        "customers": sum(total.customers.values()),
        "stages": stages,
        "conversion": _conversion(total, pairs),
    }
    out.update(insight(jmap, total))
    if slice_ is None:
        out["dimensions"] = [_dimension(jmap, d, everything, pairs) for d in jmap.dimensions]
    return out


def _conversion(total: Figures, pairs: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    conversion: list[dict[str, Any]] = []
    for a, b in pairs:
        reached, both = int(total.reached.get(a, 0)), int(total.pairs.get(f"{a}>{b}", 0))
        conversion.append(
            {
                "from": a,
                "to": b,
                "reached_from": reached,
                "reached_both": both,
                "ratio": both / reached if reached else None,
            }
        )
    return conversion


def _dimension(
    jmap: JourneyMap, d: Dimension, everything: Figures, pairs: tuple[tuple[str, str], ...]
) -> dict[str, Any]:
    """One dimension: per value its customers and conversions; for an
    experiment, each variant's conversion against the control's (the first value)."""
    values: list[dict[str, Any]] = []
    for v in d.labels():
        part = sliced(everything, f"{d.name}={v}")
        values.append(
            {
                "value": v,
                "customers": int(sum(part.customers.values())),
                "conversion": _conversion(part, pairs),
            }
        )
    out: dict[str, Any] = {"name": d.name, "property": d.property, "keep": d.keep, "values": values}
    if d.experiment:
        control = values[0]
        out["comparisons"] = [
            {
                "variant": other["value"],
                "control": control["value"],
                "from": c["from"],
                "to": c["to"],
                **(
                    compare(c["reached_both"], c["reached_from"], k["reached_both"], k["reached_from"])
                    or {"difference": None, "significant": False}
                ),
            }
            for other in values[1 : len(d.values)]
            for c, k in zip(other["conversion"], control["conversion"], strict=True)
        ]
    return out


def insight(jmap: JourneyMap, total: Figures) -> dict[str, Any]:
    """Flows, the bottleneck, after-stall steps, time to convert and lift, from summed figures."""
    flows = [
        {"from": k.split(">", 1)[0] or ENTRY, "to": k.split(">", 1)[1], "customers": int(n)}
        for k, n in sorted(total.flows.items(), key=lambda kv: -kv[1])
        if n
    ]
    converted: dict[str, dict[int, float]] = {}
    for key, n in total.ttc.items():
        pair, i = key.rsplit("|", 1)
        if n:
            converted.setdefault(pair, {})[int(i)] = n
    stage_order = {s.name: s.index for s in jmap.stages}
    ttc = []
    for pair in sorted(
        set(converted) | {k for k, n in total.ttc_waiting.items() if n},
        key=lambda p: (stage_order.get(p.split(">")[0], 99), stage_order.get(p.split(">")[1], 98)),
    ):
        a, b = pair.split(">", 1)
        ttc.append(
            {
                "from": a,
                "to": "(any later stage)" if b == ONWARD else b,
                **conversion_times(converted.get(pair, {}), total.ttc_waiting.get(pair, 0)),
            }
        )
    return {
        "flows": flows,
        "bottleneck": _bottleneck(jmap, total, converted),
        "after_stall": _after_stall(jmap, total),
        "time_to_convert": ttc,
        "lift": lift(total.outcomes, {p.kind: p.trigger for p in jmap.nudges.policies}),
    }


def _bottleneck(
    jmap: JourneyMap, total: Figures, converted: dict[str, dict[int, float]]
) -> dict[str, Any] | None:
    """The stage that loses the most customers: of those who reached it,
    the most who have not gone on to any later stage (skips count as going
    on), with where they went instead (from the flows)."""
    live = [s for s in jmap.stages if not s.exit]
    rows: list[dict[str, Any]] = []
    for s in live[:-1]:
        reached = int(total.reached.get(s.name, 0))
        if not reached:
            continue
        went_on = int(sum(converted.get(f"{s.name}>{ONWARD}", {}).values()))
        instead: list[dict[str, Any]] = []
        for k, n in total.flows.items():
            frm, to = k.split(">", 1)
            dest = jmap.stage_by_name.get(to)
            if n and frm == s.name and dest is not None and (dest.exit or dest.index < s.index):
                instead.append({"to": to, "customers": int(n)})
        rows.append(
            {
                "stage": s.name,
                "reached": reached,
                "went_on": went_on,
                "ratio": round(went_on / reached, 4),
                "lost": reached - went_on,
                "stalled_now": int(total.stalled.get(s.name, 0)),
                "went_instead": sorted(instead, key=lambda r: -r["customers"]),
            }
        )
    return max(rows, key=lambda r: (r["lost"], -r["ratio"])) if rows else None


def _after_stall(jmap: JourneyMap, total: Figures) -> list[dict[str, Any]]:
    """Per stalled stage: the first thing customers did after a stall (within
    the map's window; later ones are counted as such), by event type and by
    the stage it left them in."""
    by_stage: dict[str, dict[str, Counter[str]]] = {}
    for key, n in total.after_stall.items():
        if not n:
            continue
        stage, etype, after = key.split("|")
        mine = by_stage.setdefault(stage, {"types": Counter(), "stages": Counter()})
        mine["types"][etype] += n
        if etype != LATER:
            mine["stages"][after] += n
    out = []
    for s in jmap.stages:
        if s.name not in by_stage:
            continue
        types, next_stages = by_stage[s.name]["types"], by_stage[s.name]["stages"]
        out.append(
            {
                "stage": s.name,
                "window_seconds": jmap.insight.after_stall_s,
                "next_within_window": int(sum(n for t, n in types.items() if t != LATER)),
                "next_later": int(types.get(LATER, 0)),
                "still_stalled": int(total.stalled.get(s.name, 0)),
                "top_next_events": [
                    {"type": t, "customers": int(n)}
                    for t, n in sorted(types.items(), key=lambda kv: (-kv[1], kv[0]))
                    if t != LATER
                ][:5],
                "top_next_stages": [
                    {"stage": st, "customers": int(n)}
                    for st, n in sorted(next_stages.items(), key=lambda kv: (-kv[1], kv[0]))
                ][:5],
            }
        )
    return out


# How long GET /customers reuses the gathered figures for the odds.
ODDS_FIGURES_TTL_S = 15.0


class FiguresCache:
    """Every worker's figures, summed, for the odds of ``GET /customers``:
    gathered at most once per :data:`ODDS_FIGURES_TTL_S` (one gather at a
    time), not once per request."""

    def __init__(self) -> None:
        self._at = -1e9
        self._total: Figures | None = None
        self._lock = asyncio.Lock()

    async def get(self, w: Worker) -> Figures:
        async with self._lock:
            if self._total is None or time.monotonic() - self._at > ODDS_FIGURES_TTL_S:
                parts, _ = await gather_funnel(w)
                self._total, _ = add_parts(parts)
                self._at = time.monotonic()
            return self._total


FIGURES_CACHE = FiguresCache()  # one per process: the API's odds and the odds checker (agents.odds)


def register(w: Worker) -> None:
    """Register ``GET /funnel`` and ``GET /funnel/local``."""

    @w.app.page("/funnel/local")
    class LocalFunnelView(View):
        """This worker's share of the funnel (its partitions, its histograms)."""

        async def get(self, request: Request) -> Response:
            return self.json(local_funnel(w.worker_id, w.metrics, w.stage_counts))

    @w.app.page("/funnel")
    class FunnelView(View):
        """The funnel over all workers."""

        async def get(self, request: Request) -> Response:
            slice_ = None
            dim, value = request.query.get("dimension"), request.query.get("value")
            if dim is not None or value is not None:
                d = next((d for d in w.journey_map.dimensions if d.name == dim), None)
                if d is None or value not in d.labels():
                    names = {x.name: list(x.labels()) for x in w.journey_map.dimensions}
                    return self.json(
                        {"error": f"dimension and value must be one of the map's: {names}"}, status=400
                    )
                slice_ = f"{dim}={value}"
            parts, missing = await gather_funnel(w)
            body = funnel(w.journey_map, w.stage_counts.pairs, parts, slice_)
            body["workers"] = {"answered": len(parts), "missing": missing}
            return self.json(body, status=200 if not missing else 206)
