"""The funnel's arithmetic: workers' figures added, conversions, medians from buckets, the bottleneck."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from models import Touchpoint, fold, load_map
from stream.engine.lifecycle import PartitionLifecycle
from stream.engine.metrics import TrackerMetrics
from stream.engine.stage_counts import StageCounts
from stream.http.funnel import funnel, local_funnel, quantile_le

MAP = load_map()
T0 = 1_790_000_000_000
FUNNEL = [s.name for s in MAP.stages if not s.exit]


def worker_part(worker: str, journeys: dict[str, list[str]], durations: dict[str, list[float]]) -> dict:  # type: ignore[type-arg]
    """One worker's /funnel/local from its customers and the times in stage it observed."""
    counts = StageCounts.for_map(MAP)
    counts.on_partition_recovered(0)
    events = [
        Touchpoint(f"{cid}-{i}", cid, t, "web", T0 + i)
        for cid, types in journeys.items()
        for i, t in enumerate(types)
    ]
    counts.on_partition_loaded(0, list(fold(MAP, events).values()))
    metrics = TrackerMetrics.create(CollectorRegistry(), PartitionLifecycle())
    for stage, seconds in durations.items():
        for s in seconds:
            metrics.stage_duration.labels(stage).observe(s)
    return local_funnel(worker, metrics, counts)


def test_two_workers_figures_add_up_with_conversions_and_the_lowest_one_named() -> None:
    a = worker_part("a", {"c1": ["page_view"], "c2": ["page_view", "add_to_cart"]}, {"awareness": [30, 30]})
    b = worker_part("b", {"c3": ["product_view", "add_to_cart", "purchase"]}, {"awareness": [90]})
    out = funnel(MAP, StageCounts(MAP.stage_names, FUNNEL).pairs, [a, b])
    stages = {s["stage"]: s for s in out["stages"]}
    assert out["customers"] == 3
    assert (
        stages["awareness"]["customers"],
        stages["cart"]["customers"],
        stages["purchase"]["customers"],
    ) == (
        1,
        1,
        1,
    )
    conv = {(c["from"], c["to"]): c for c in out["conversion"]}
    # Reached awareness: c1 and c2 (c3 entered at consideration); only c2 went on (to cart: skipping counts).
    assert conv[("awareness", "consideration")]["reached_from"] == 2
    assert conv[("awareness", "consideration")]["reached_both"] == 1
    assert conv[("cart", "purchase")]["ratio"] == pytest.approx(1 / 2)
    assert conv[("purchase", "service")]["ratio"] == 0.0
    # The bottleneck from the flows: the stage that lost the most of those who
    # reached it; awareness and purchase lost one each (c1 stayed in awareness,
    # c2 went on to cart, a skip; c3 stays in purchase): the lower share going
    # on breaks the tie.
    assert out["bottleneck"]["stage"] == "purchase"
    bn = out["bottleneck"]
    assert (bn["reached"], bn["went_on"], bn["lost"]) == (1, 0, 1)
    assert {(f["from"], f["to"]): f["customers"] for f in out["flows"]} == {
        ("(entry)", "awareness"): 2,
        ("(entry)", "consideration"): 1,
        ("awareness", "cart"): 1,
        ("consideration", "cart"): 1,
        ("cart", "purchase"): 1,
    }
    # Histograms add up across workers before the median is read: 30, 30, 90 -> within the 30 s bucket.
    assert stages["awareness"]["median_seconds_in_stage"] is not None
    assert stages["awareness"]["median_seconds_in_stage"] <= 60
    assert stages["awareness"]["top_touchpoints"][0] == {"name": "page_view", "count": 1}


def test_the_median_interpolates_within_its_bucket_as_prometheus_does() -> None:
    assert quantile_le({}, 0.5) is None
    assert quantile_le({"10.0": 0, "+Inf": 0}, 0.5) is None
    assert quantile_le({"10.0": 2, "20.0": 4, "+Inf": 4}, 0.5) == pytest.approx(10.0)
    assert quantile_le({"10.0": 0, "20.0": 4, "+Inf": 4}, 0.5) == pytest.approx(15.0)
    assert (
        quantile_le({"10.0": 1, "+Inf": 4}, 0.5) == 10.0
    )  # the middle is past the last bound: its lower edge


def test_a_dimension_values_funnel_and_an_experiments_comparison() -> None:
    from models.events import Touchpoint as T

    events = [
        T(f"{c}-{i}", c, t, "web", T0 + i, {"variant": v, "device": "mobile"} if i == 0 else None)
        for c, v, types in [
            *[(f"t{n}", "treatment", ["page_view", "add_to_cart"]) for n in range(30)],
            *[(f"k{n}", "control", ["page_view", "add_to_cart"][: 2 if n < 10 else 1]) for n in range(30)],
        ]
        for i, t in enumerate(types)
    ]
    counts = StageCounts.for_map(MAP)
    counts.on_partition_recovered(0)
    counts.on_partition_loaded(0, list(fold(MAP, events).values()))
    metrics = TrackerMetrics.create(CollectorRegistry(), PartitionLifecycle())
    part = local_funnel("a", metrics, counts)
    out = funnel(MAP, counts.pairs, [part])
    variant = next(d for d in out["dimensions"] if d["name"] == "variant")
    assert [v["value"] for v in variant["values"]] == ["control", "treatment", "other", "unknown"]
    comp = next(c for c in variant["comparisons"] if (c["from"], c["to"]) == ("awareness", "consideration"))
    assert comp["variant"] == "treatment" and comp["control"] == "control"
    assert comp["rate"] == 1.0 and comp["baseline_rate"] == pytest.approx(10 / 30, abs=1e-4)
    assert comp["significant"] is True
    treated = funnel(MAP, counts.pairs, [part], "variant=treatment")
    assert treated["customers"] == 30
    assert {(f["from"], f["to"]): f["customers"] for f in treated["flows"]} == {
        ("(entry)", "awareness"): 30,
        ("awareness", "cart"): 30,
    }
    mobile = funnel(MAP, counts.pairs, [part], "device=mobile")
    assert mobile["customers"] == 60
