"""``journey replay --map NEW``: what a changed map would have made of the
retained touchpoints, beside what the live map makes of them.

Reads the touchpoints topic with a consumer of its own (no group: the
workers are not disturbed), from the beginning or from ``--from``, to its
current end, and folds the apps' events twice in memory, once under each
map, with identity stitching (``models.reducer.LinkedFold``). The worker's
own records (clock readings, deliveries, links, merges, re-keyed and moved
copies) are skipped: each fold makes its own from the events. Erasures are
applied. At the end one clock reading (``--at``, default now) reaches every
customer under both maps, so stalls, defections and retention are judged
as of the same moment.

The report, per map: customers per stage, conversions between consecutive
funnel stages (reached both, skipping ahead counts), stalls open, and
events refused; then a sample of customers whose stage differs, with the
last move each map made for them. As a table on the terminal and as JSON.

The horizon: replay sees only what the topic still retains
(``retention.ms``); a customer whose first events are gone replays from
the first one kept.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from agents.plan import MOVED_HEADER
from models.events import (
    CLOCK_HEADER,
    DELIVERY_HEADER,
    ERASE_HEADER,
    ODDS_HEADER,
    Clock,
    Rejection,
    parse_erase,
    parse_touchpoint,
)
from models.identity import LINK_HEADER, MERGE_HEADER, REKEYED_HEADER
from models.journey_map import JourneyMap
from models.reducer import LinkedFold
from models.state import CustomerState, Transition
from models.timeutil import ms_to_iso
from stream.settings import Settings
from stream.tools.kafka import Record, read_topic

# The worker's own records and copies: each fold makes its own from the events.
SKIPPED = frozenset(
    (CLOCK_HEADER, DELIVERY_HEADER, LINK_HEADER, MERGE_HEADER, REKEYED_HEADER, MOVED_HEADER, ODDS_HEADER)
)


@dataclass(slots=True)
class MapResult:
    """One map's fold of the replayed records."""

    jmap: JourneyMap
    folder: LinkedFold
    refused: Counter[str] = field(default_factory=Counter)  # by reason

    def figures(self) -> dict[str, Any]:
        from stream.engine.stage_counts import StageCounts

        jmap = self.jmap
        states = [s for s in self.folder.states.values() if s.merged_into is None]
        counts = StageCounts(jmap.stage_names, [st.name for st in jmap.stages if not st.exit])
        counts.on_partition_recovered(0)
        counts.on_partition_loaded(0, states)
        totals = counts.totals()
        pairs = {}
        for a, b in counts.pairs:
            reached = totals.reached.get(a, 0)
            both = totals.pairs.get(f"{a}>{b}", 0)
            pairs[f"{a}>{b}"] = {
                "reached": reached,
                "converted": both,
                "rate": both / reached if reached else None,
            }
        return {
            "map": jmap.name,
            "version": jmap.version,
            "customers": len(states),
            "merged_ids": len(self.folder.states) - len(states),
            "stages": {name: totals.customers.get(name, 0) for name in jmap.stage_names},
            "conversions": pairs,
            "stalls_open": {k: v for k, v in totals.stalled.items() if v},
            "refused": dict(self.refused),
        }


def _why(t: Transition | None) -> str | None:
    if t is None:
        return None
    return f"{t.from_stage or 'new'} -> {t.to_stage} on {t.event_type} at {ms_to_iso(t.at)}"


@dataclass(slots=True)
class Report:
    live: MapResult
    new: MapResult
    records: int = 0
    events: int = 0
    skipped: int = 0
    seconds: float = 0.0
    since: str | None = None
    at: str = ""
    sample: list[dict[str, Any]] = field(default_factory=list)
    moved: int = 0  # customers whose stage differs

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "events": self.events,
            "skipped_internal": self.skipped,
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.events / self.seconds) if self.seconds else None,
            "from": self.since,
            "at": self.at,
            "live": self.live.figures(),
            "new": self.new.figures(),
            "customers_moved": self.moved,
            "sample": self.sample,
        }


def replay(
    settings: Settings,
    live: JourneyMap,
    new: JourneyMap,
    *,
    since_ms: int | None = None,
    at_ms: int | None = None,
    sample: int = 20,
) -> Report:
    """Fold the retained touchpoints under ``live`` and ``new``."""
    started = time.perf_counter()
    a, b = MapResult(live, LinkedFold(live)), MapResult(new, LinkedFold(new))
    report = Report(a, b, since=ms_to_iso(since_ms) if since_ms is not None else None)
    source = in_append_order(
        read_topic(settings, settings.touchpoints_topic, timeout_s=None, since_ms=since_ms)
    )
    limit = settings.max_event_bytes
    for rec in source:
        report.records += 1
        headers = rec.headers
        if headers and not SKIPPED.isdisjoint(headers):
            report.skipped += 1
            continue
        if headers and ERASE_HEADER in headers:
            erase = parse_erase(rec.value, rec.key)
            if not isinstance(erase, Rejection):
                a.folder.apply(erase)
                b.folder.apply(erase)
            continue
        report.events += 1
        for side in (a, b):
            parsed = parse_touchpoint(rec.value, side.jmap, key=rec.key, max_bytes=limit)
            if isinstance(parsed, Rejection):
                side.refused[parsed.reason] += 1
            else:
                side.folder.apply(parsed)
    now = at_ms if at_ms is not None else int(time.time() * 1000)
    report.at = ms_to_iso(now)
    for side in (a, b):
        for cid in list(side.folder.states):
            state = side.folder.states.get(cid)
            if state is not None and state.merged_into is None:
                side.folder.apply(Clock(cid, now))
    report.seconds = time.perf_counter() - started
    _sample(report, sample)
    return report


def in_append_order(records: Iterable[Record]) -> Iterator[Record]:
    """The partitions' records merged by their record timestamps, each
    partition's in offset order: the order the workers met them, near
    enough (a customer's records share a partition, so their order is
    exact). Holds the records in memory while it sorts."""
    by_partition: dict[int, list[Record]] = {}
    for rec in records:
        by_partition.setdefault(rec.partition, []).append(rec)
    return heapq.merge(*by_partition.values(), key=lambda r: r.timestamp or 0)


def _stage(state: CustomerState | None) -> str | None:
    if state is None or state.merged_into is not None:
        return None
    return state.stage


def _sample(report: Report, limit: int) -> None:
    a, b = report.live.folder, report.new.folder
    for cid in sorted(set(a.states) | set(b.states)):
        old, new = _stage(a.states.get(cid)), _stage(b.states.get(cid))
        if old == new:
            continue
        report.moved += 1
        if len(report.sample) < limit:
            report.sample.append(
                {
                    "customer_id": cid,
                    "live": old,
                    "new": new,
                    "live_why": _why(a.last.get(cid)),
                    "new_why": _why(b.last.get(cid)),
                }
            )


def render(d: dict[str, Any]) -> str:
    """A report (:meth:`Report.to_dict`) as a terminal table."""
    live, new = d["live"], d["new"]
    lines = [
        f"replayed {d['records']} records ({d['events']} events, "
        f"{d['skipped_internal']} worker records skipped) in {d['seconds']:.1f} s "
        f"({d['events_per_second'] or 0} events/s), as of {d['at']}"
        + (f", from {d['from']}" if d["from"] else ""),
        f"{'':30}{'live ' + live['version']:>20}{'new ' + new['version']:>20}",
        f"{'customers':30}{live['customers']:>20}{new['customers']:>20}",
        f"{'merged ids':30}{live['merged_ids']:>20}{new['merged_ids']:>20}",
    ]
    for stage in dict.fromkeys([*live["stages"], *new["stages"]]):
        lo, ne = live["stages"].get(stage), new["stages"].get(stage)
        lines.append(f"  {stage:28}{_cell(lo):>20}{_cell(ne):>20}")
    lines.append("conversions")
    for pair in dict.fromkeys([*live["conversions"], *new["conversions"]]):
        lo, ne = live["conversions"].get(pair), new["conversions"].get(pair)
        lines.append(f"  {pair.replace('>', ' -> '):28}{_rate(lo):>20}{_rate(ne):>20}")
    lines.append("stalls open")
    for stage in dict.fromkeys([*live["stalls_open"], *new["stalls_open"]]):
        lo, ne = live["stalls_open"].get(stage, 0), new["stalls_open"].get(stage, 0)
        lines.append(f"  {stage:28}{_cell(lo):>20}{_cell(ne):>20}")
    lines.append(
        f"{'events refused':30}{sum(live['refused'].values()):>20}{sum(new['refused'].values()):>20}"
    )
    lines.append(f"customers in another stage under the new map: {d['customers_moved']}")
    for s in d["sample"]:
        lines.append(f"  {s['customer_id']}: {s['live']} -> {s['new']}")
        lines.append(f"      live: {s['live_why']}")
        lines.append(f"      new:  {s['new_why']}")
    return "\n".join(lines)


def _cell(v: int | None) -> str:
    return "-" if v is None else str(v)


def _rate(v: dict[str, Any] | None) -> str:
    if v is None:
        return "-"
    rate = v["rate"]
    return f"{v['converted']}/{v['reached']}" + (f" {100 * rate:.1f}%" if rate is not None else "")
