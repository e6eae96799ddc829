"""``GET /funnel``: the funnel over every worker, and ``GET /funnel/local``, one worker's share.

Each worker counts the customers of the partitions it owns
(``stream.engine.stage_counts``) and keeps time-in-stage histograms. The
worker asked gathers every worker's ``/funnel/local`` (signed by it, never
with the client's credentials: ``stream.http.peers``), counts each worker
once by its identity, and adds them up: :func:`funnel` is the arithmetic,
pure. A worker that does not answer is named, and the answer is a 206.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp
from faust.web import Request, Response, View

from models.journey_map import JourneyMap
from stream.engine.metrics import TrackerMetrics
from stream.engine.stage_counts import Figures, StageCounts
from stream.faust.app import peer_urls
from stream.http.peers import peer_headers

if TYPE_CHECKING:
    from stream.worker import Worker

log = logging.getLogger(__name__)


def local_funnel(worker_id: str, metrics: TrackerMetrics, counts: StageCounts) -> dict[str, Any]:
    """This worker's figures: counts from its partitions, time-in-stage buckets
    from its histogram, and who it is (so a gatherer never counts it twice)."""
    buckets: dict[str, dict[str, float]] = {}
    for metric in metrics.stage_duration.collect():
        for sample in metric.samples:
            if sample.name.endswith("_bucket"):
                buckets.setdefault(sample.labels["stage"], {})[sample.labels["le"]] = sample.value
    return {
        "worker": worker_id,
        "figures": counts.totals().to_dict(),
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


def median(buckets: dict[str, float]) -> float | None:
    """The median from cumulative histogram buckets (linear within a bucket, as Prometheus does)."""
    bounds = sorted((float(le), n) for le, n in buckets.items())
    total = bounds[-1][1] if bounds else 0
    if not total:
        return None
    half, prev_le, prev_n = total / 2, 0.0, 0.0
    for le, n in bounds:
        if n >= half:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (half - prev_n) / max(n - prev_n, 1e-9)
        prev_le, prev_n = le, n
    return None


def _top(counter: Counter[str], stage: str, n: int = 3) -> list[dict[str, Any]]:
    mine = [(k.split("|", 1)[1], v) for k, v in counter.items() if k.startswith(f"{stage}|") and v > 0]
    return [{"name": k, "count": int(v)} for k, v in sorted(mine, key=lambda kv: (-kv[1], kv[0]))[:n]]


def funnel(
    jmap: JourneyMap, pairs: Iterable[tuple[str, str]], parts: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """The funnel from every worker's figures: live counts per stage,
    conversion between consecutive stages (of the customers who reached the
    first, those who reached the second or a later one), median time in
    stage, the bottleneck (the lowest conversion)."""
    total = Figures()
    buckets: dict[str, dict[str, float]] = {}
    for part in parts:
        total.add(Figures.from_dict(part["figures"]))
        for stage, bs in part.get("stage_duration_buckets", {}).items():
            mine = buckets.setdefault(stage, {})
            for le, n in bs.items():
                mine[le] = mine.get(le, 0.0) + n
    stages = [
        {
            "stage": s.name,
            "customers": int(total.customers.get(s.name, 0)),
            "reached": int(total.reached.get(s.name, 0)),
            "stalled": int(total.stalled.get(s.name, 0)),
            "median_seconds_in_stage": median(buckets.get(s.name, {})),
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
    scored = [c for c in conversion if c["ratio"] is not None]
    bottleneck = min(scored, key=lambda c: c["ratio"]) if scored else None
    return {
        "customers": sum(total.customers.values()),
        "stages": stages,
        "conversion": conversion,
        "bottleneck": bottleneck,
    }


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
            parts, missing = await gather_funnel(w)
            body = funnel(w.journey_map, w.stage_counts.pairs, parts)
            body["workers"] = {"answered": len(parts), "missing": missing}
            return self.json(body, status=200 if not missing else 206)
