"""The batch histogram renders as prometheus_client's own histogram does."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from stream.engine.metrics import EVENT_LAG_BUCKETS, STAGE_DURATION_BUCKETS, BatchHistogram


def exposition(registry: CollectorRegistry) -> list[str]:
    """The text format without the ``_created`` series (only the library's histogram has them)."""
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["cart", "purchase"]),
            st.floats(min_value=0, max_value=4e7, allow_nan=False) | st.sampled_from(STAGE_DURATION_BUCKETS),
        ),
        max_size=60,
    ),
    st.lists(st.floats(min_value=0, max_value=1e7, allow_nan=False) | st.sampled_from(EVENT_LAG_BUCKETS)),
)
def test_the_same_exposition_as_prometheus_clients_histogram(
    durations: list[tuple[str, float]], lags: list[float]
) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    mine = BatchHistogram("d_seconds", "doc", STAGE_DURATION_BUCKETS, ("stage",), registry=ours)
    lib = Histogram("d_seconds", "doc", ["stage"], buckets=STAGE_DURATION_BUCKETS, registry=theirs)
    lag = BatchHistogram("lag_seconds", "doc", EVENT_LAG_BUCKETS, registry=ours)
    lib_lag = Histogram("lag_seconds", "doc", buckets=EVENT_LAG_BUCKETS, registry=theirs)
    for stage in sorted({s for s, _ in durations}):
        mine.observe_many([d for s, d in durations if s == stage], (stage,))
        for s, d in durations:
            if s == stage:
                lib.labels(stage).observe(d)
    lag.observe_many(lags[: len(lags) // 2])
    for v in lags[len(lags) // 2 :]:
        lag.observe(v)
    for v in lags:
        lib_lag.observe(v)
    if not lags:  # the library's unlabelled histogram shows zeros from the start
        lag.observe_many([])
    assert exposition(ours) == exposition(theirs)
