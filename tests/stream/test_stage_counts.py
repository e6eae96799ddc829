"""Funnel figures per owned partition, summed at scrape and for /funnel."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from models import Touchpoint, fold, load_map
from models.events import Clock, Erase
from models.reducer import fold_batch
from models.state import CustomerState
from stream.engine.stage_counts import Figures, StageCounts
from tests.models.strategies import journeys

MAP = load_map()
T0 = 1_790_000_000_000


def states(*journeys: tuple[str, list[str]]) -> dict[str, object]:
    events = [
        Touchpoint(f"{cid}-{i}", cid, t, "web", T0 + i)
        for cid, types in journeys
        for i, t in enumerate(types)
    ]
    return fold(MAP, events)  # type: ignore[return-value]


def load(counts: StageCounts, partition: int, states: object) -> None:
    """As the lifecycle's scan does: recovered, then the stored states in chunks (of one, here)."""
    counts.on_partition_recovered(partition)
    for state in states:  # type: ignore[attr-defined]
        counts.on_partition_loaded(partition, [state])


def test_figures_follow_states_and_forget_revoked_partitions() -> None:
    counts = StageCounts(MAP.stage_names, [s.name for s in MAP.stages if not s.exit])
    registry = CollectorRegistry()
    registry.register(counts)
    s = states(("a", ["page_view"]), ("b", ["page_view", "add_to_cart"]), ("c", ["product_view", "purchase"]))
    load(counts, 0, [s["a"], s["b"]])  # type: ignore[list-item]
    load(counts, 1, [s["c"]])  # type: ignore[list-item]
    t = counts.totals()
    assert t.customers == {
        "awareness": 1,
        "consideration": 1,
        "cart": 1,
        "purchase": 0,
        "service": 0,
        "loyalty": 0,
        "defected": 0,
    } | {"consideration": 0, "purchase": 1}
    assert t.reached["awareness"] == 2 and t.reached["consideration"] == 1 and t.pairs["awareness>cart"] == 0
    # Skipping ahead converts: b went awareness -> cart, c consideration -> purchase.
    assert t.pairs["awareness>consideration"] == 1 and t.pairs["consideration>cart"] == 1
    assert t.pairs["cart>purchase"] == 0
    assert 'journey_customers{stage="purchase"} 1.0' in generate_latest(registry).decode()
    # b buys: cart -> purchase; then c is erased.
    after = states(("b", ["page_view", "add_to_cart", "purchase"]))["b"]
    counts.update(0, s["b"], after)  # type: ignore[arg-type]
    counts.update(1, s["c"], None)  # type: ignore[arg-type]
    counts.update(7, None, after)  # type: ignore[arg-type]  # not owned: ignored
    t = counts.totals()
    assert (t.customers["cart"], t.customers["purchase"]) == (0, 1) and t.pairs["cart>purchase"] == 1
    counts.on_partition_revoked(0)
    assert counts.totals().customers["awareness"] == 0
    assert Figures.from_dict(t.to_dict()) == t
    assert fold(MAP, [Erase("x", "e", T0)]) == {}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(journeys(customers=2, max_items=40), st.integers(min_value=1, max_value=7))
def test_updates_between_any_two_states_equal_counting_them_from_scratch(
    items: list[Touchpoint | Clock | Erase], step: int
) -> None:
    """The same-stage shortcut in update() gives the figures a full recount
    gives, the insight figures (flows, time to convert, dimensions, outcomes) too."""
    counts = StageCounts.for_map(MAP)
    load(counts, 0, [])
    states: dict[str, CustomerState] = {}
    for i in range(0, len(items), step):
        folds = fold_batch(MAP, dict(states), items[i : i + step])  # type: ignore[arg-type]
        for cid, f in folds.items():
            before = states.get(cid)
            if f.state is not None:
                states[cid] = f.state
            else:
                states.pop(cid, None)
            counts.update(0, before, f.state)
    scratch = StageCounts.for_map(MAP)
    load(scratch, 0, states.values())
    assert counts.totals().to_dict() == scratch.totals().to_dict()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(journeys(customers=3, max_items=40))
def test_dimension_labels_never_exceed_what_the_map_declares_whatever_the_events_send(
    items: list[Touchpoint | Clock | Erase],
) -> None:
    counts = StageCounts.for_map(MAP)
    load(counts, 0, fold(MAP, items).values())
    registry = CollectorRegistry()
    registry.register(counts)
    allowed = {(d.name, v) for d in MAP.dimensions for v in d.labels()}
    stages = set(MAP.stage_names)
    for metric in registry.collect():
        for sample in metric.samples:
            labels = sample.labels
            if "dimension" in labels:
                assert (labels["dimension"], labels["value"]) in allowed
            for name in ("stage", "from_stage", "to_stage"):
                if name in labels:
                    assert labels[name] in stages | {"(entry)"}
            if "kind" in labels:
                assert labels["kind"] in {p.kind for p in MAP.nudges.policies}
    for state in fold(MAP, items).values():
        for d in MAP.dimensions:
            assert state.dims.get(d.name, "unknown") in d.labels()
