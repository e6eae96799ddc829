"""Backtest of the next-stage odds (``models.insight.next_stage``) on the simulator.

The simulator's personas convert at different rates and paces
(``stream.tools.simulator.PERSONAS``). The backtest folds the first part of
a stream (events up to the cut, ``--learn`` of its span), builds the funnel
figures from those states exactly as a worker does
(``stream.engine.stage_counts``, ``stream.http.funnel.local_funnel``),
and asks for every customer then in a stage with a later one the odds of
reaching a later stage within the map's horizon. It then folds the rest of
the stream and checks who did. Printed: the Brier score against the base
rate's (predicting everyone the share that converted), reliability by
decile of the predictions, and per persona (a property the model never
sees) the mean prediction against what happened.

**The aim** (:data:`AIM`), which ``tests/models/test_odds.py`` holds on a
smaller run: the Brier score is at most 90% of the base rate's (the odds
know something), and in every decile of at least 100 customers the mean
prediction is within 0.08 of the share that converted. Not a timed test.

    .venv/bin/python bench/odds.py [--customers 20000] [--seed 7] [--learn 0.5]
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from bench.results import recorded  # noqa: E402
from models import load_map, parse_touchpoint  # noqa: E402
from models.events import Touchpoint  # noqa: E402
from models.insight import brier, next_stage, reliability  # noqa: E402
from models.reducer import LinkedFold  # noqa: E402
from stream.engine.lifecycle import PartitionLifecycle  # noqa: E402
from stream.engine.metrics import TrackerMetrics  # noqa: E402
from stream.engine.stage_counts import StageCounts  # noqa: E402
from stream.http.funnel import add_parts, local_funnel  # noqa: E402
from stream.tools.simulator import DAY_MS, generate  # noqa: E402

# Brier at most this share of the base rate's; each decile of at least
# DECILE_MIN customers within DECILE_GAP of what happened.
AIM = {"brier_ratio": 0.9, "decile_gap": 0.08, "decile_min": 100}
NOW_MS = 1_790_000_000_000
SPAN_DAYS = 14.0


@dataclass
class Backtest:
    scored: int
    brier: float
    base_brier: float
    base_rate: float
    deciles: list[dict[str, Any]]
    personas: dict[str, tuple[int, float, float]]  # persona -> (customers, mean predicted, observed)

    def meets_aim(self) -> list[str]:
        """What misses the aim (empty: it is met)."""
        misses = []
        if self.brier > AIM["brier_ratio"] * self.base_brier:
            misses.append(f"Brier {self.brier:.4f} > {AIM['brier_ratio']} x base {self.base_brier:.4f}")
        for d in self.deciles:
            if (
                d["customers"] >= AIM["decile_min"]
                and abs(d["predicted"] - d["observed"]) > AIM["decile_gap"]
            ):
                misses.append(f"decile {d['bin']}: predicted {d['predicted']} vs observed {d['observed']}")
        return misses


def backtest(customers: int, seed: int, learn: float = 0.5) -> Backtest:
    jmap = load_map()
    start = NOW_MS - int(SPAN_DAYS * DAY_MS)
    cut = start + int(learn * SPAN_DAYS * DAY_MS)
    horizon_ms = jmap.insight.odds.horizon_s * 1000
    events: list[Touchpoint] = []
    persona: dict[str, str] = {}
    for m in generate(customers, seed=seed, now_ms=NOW_MS, span_days=SPAN_DAYS):
        ev = parse_touchpoint(m.value, jmap, key=m.key)
        if isinstance(ev, Touchpoint):
            events.append(ev)
            if ev.properties and "persona" in ev.properties:
                persona.setdefault(ev.customer_id, str(ev.properties["persona"]))
    folder = LinkedFold(jmap)
    rest = []
    for ev in events:
        if ev.ts <= cut:
            folder.apply(ev)
        else:
            rest.append(ev)
    at_cut = dict(folder.states)
    counts = StageCounts.for_map(jmap)
    counts.on_partition_recovered(0)
    counts.on_partition_loaded(0, [s for s in at_cut.values() if s.merged_into is None])
    metrics = TrackerMetrics.create(CollectorRegistry(), PartitionLifecycle())
    total, _ = add_parts([orjson.loads(orjson.dumps(local_funnel("bench", metrics, counts, cut)))])
    for ev in rest:
        folder.apply(ev)
    later_of = {
        st.name: [b.name for b in jmap.stages if b.index > st.index and not b.exit] for st in jmap.stages
    }
    pairs: list[tuple[float, bool]] = []
    by_persona: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    for cid, state in at_cut.items():
        if state.merged_into is not None:
            continue
        entered = state.stages.get(state.stage, state.stage_entered_at)
        if any(state.stages.get(b, -1) >= entered for b in later_of.get(state.stage, [])):
            continue  # back in an earlier stage after a later one: on already
        answer = next_stage(jmap, state, total.ttc, total.waiting, cut)
        if answer is None:
            continue
        final = folder.states.get(cid)
        went = final is not None and any(
            cut < final.stages.get(b, -1) <= cut + horizon_ms for b in later_of[state.stage]
        )
        pairs.append((answer["probability"], went))
        by_persona[persona.get(cid, "?")].append((answer["probability"], went))
    rate = sum(1 for _, y in pairs if y) / len(pairs)
    return Backtest(
        scored=len(pairs),
        brier=brier(pairs),
        base_brier=brier((rate, y) for _, y in pairs),
        base_rate=rate,
        deciles=reliability(pairs),
        personas={
            name: (len(ps), sum(p for p, _ in ps) / len(ps), sum(1 for _, y in ps if y) / len(ps))
            for name, ps in sorted(by_persona.items())
        },
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--customers", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--learn", type=float, default=0.5, help="share of the stream's span learned on")
    args = ap.parse_args()
    jmap = load_map()
    b = backtest(args.customers, args.seed, args.learn)
    print(
        f"odds backtest: {args.customers} simulated customers over {SPAN_DAYS:g} days, learned on the first "
        f"{args.learn:.0%}, horizon {jmap.insight.odds.horizon_s // 86400}d, by {jmap.insight.odds.by}"
    )
    print(f"scored customers: {b.scored} (in a stage with a later one at the cut)")
    print(f"converted within the horizon: {b.base_rate:.3f}")
    print(
        f"Brier score: {b.brier:.4f}   base rate's: {b.base_brier:.4f}   ratio {b.brier / b.base_brier:.3f}"
    )
    print("reliability by decile of the prediction:")
    print("  decile  customers  predicted  observed")
    for d in b.deciles:
        print(f"  {d['bin']:>6}  {d['customers']:>9}  {d['predicted']:>9.3f}  {d['observed']:>8.3f}")
    print("per persona (never seen by the model):")
    for name, (n, p, o) in b.personas.items():
        print(f"  {name:<11} {n:>6}  predicted {p:.3f}  observed {o:.3f}")
    misses = b.meets_aim()
    aim = (
        f"Brier <= {AIM['brier_ratio']} x base, deciles of >= {AIM['decile_min']} within {AIM['decile_gap']}"
    )
    print(f"aim ({aim}): {'met' if not misses else 'MISSED: ' + '; '.join(misses)}")


if __name__ == "__main__":
    with recorded("odds"):
        main()
