"""The deadline index: what is due comes out once, in time order, per owned partition."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models import Touchpoint, fold, load_map
from models.effects import deadline_of
from models.state import CustomerState
from stream.engine import deadlines
from stream.engine.deadlines import DeadlineIndex

MAP = load_map()
T0 = 1_790_000_000_000


def index() -> DeadlineIndex:
    idx = DeadlineIndex(lambda state: deadline_of(MAP, state))
    idx.on_partition_recovered(0)
    return idx


def carts(n: int) -> Sequence[CustomerState]:
    events = [Touchpoint(f"e{i}", f"c{i}", "add_to_cart", "web", T0 + i * 1000) for i in range(n)]
    return list(fold(MAP, events).values())


def test_loaded_states_come_out_when_due_in_deadline_order_and_once() -> None:
    idx = index()
    states = carts(5)
    idx.on_partition_loaded(0, states[:2])  # the scan's chunks
    idx.on_partition_loaded(0, states[2:])
    first = deadline_of(MAP, states[0])
    assert first is not None and idx.next_due(0) == first and len(idx) == 5
    assert idx.pop_due(0, first - 1) == []
    assert idx.pop_due(0, first + 2500) == ["c0", "c1", "c2"]
    assert idx.pop_due(0, first + 2500) == []  # taken out: a batch puts them back
    assert idx.pop_due(0, first + 10**9, limit=1) == ["c3"]
    assert len(idx) == 1


def test_a_new_deadline_replaces_the_old_and_none_removes_it() -> None:
    idx = index()
    idx.set(0, "a", 100)
    idx.set(0, "a", 300)  # moved later: the stale heap entry no longer counts
    idx.set(0, "b", 200)
    idx.set(0, "c", 150)
    idx.set(0, "c", None)  # nothing left to wait for
    assert idx.pop_due(0, 250) == ["b"]
    assert idx.next_due(0) == 300 and idx.pop_due(0, 300) == ["a"]


def test_partitions_not_owned_are_ignored_and_revoked_ones_forgotten() -> None:
    idx = index()
    idx.set(7, "x", 1)  # not owned
    assert idx.pop_due(7, 10) == [] and idx.partitions() == [0]
    idx.set(0, "y", 1)
    idx.on_partition_revoked(0)
    assert idx.pop_due(0, 10) == [] and len(idx) == 0 and idx.next_due(0) is None


@given(st.lists(st.tuples(st.sampled_from("abcdef"), st.one_of(st.none(), st.integers(0, 50))), max_size=200))
def test_pops_equal_the_latest_deadline_of_each_customer(sets: list[tuple[str, int | None]]) -> None:
    """Whatever was loaded in bulk and set after (and however many stale entries
    the heap compacts), a pop returns exactly the customers whose latest deadline is due."""
    idx = index()
    latest: dict[str, int | None] = {}
    half = len(sets) // 2
    scanned = dict(sets[:half])  # the store's keys: each customer once
    idx.load(0, scanned.items())  # the scan's bulk load: the run is built once, when first read
    for customer, deadline in scanned.items():
        if deadline is not None:
            latest[customer] = deadline
    for customer, deadline in sets[half:]:
        idx.set(0, customer, deadline)
        latest[customer] = deadline
    due = sorted(c for c, d in latest.items() if d is not None and d <= 25)
    assert sorted(idx.pop_due(0, 25)) == due
    assert len(idx) == sum(1 for d in latest.values() if d is not None and d > 25)


@pytest.mark.parametrize("merge_at", [2, 10**9], ids=["merging", "not merging"])
@pytest.mark.parametrize("colliding", [False, True], ids=["hashes", "every hash equal"])
@given(
    scanned=st.dictionaries(st.sampled_from("abcdefghé"), st.one_of(st.none(), st.integers(0, 50))),
    sets=st.lists(st.tuples(st.sampled_from("abcdefghé"), st.one_of(st.none(), st.integers(0, 50)))),
    ticks=st.lists(st.integers(0, 60), max_size=5),
)
def test_every_customer_counts_once_and_comes_out_at_its_latest_deadline(
    merge_at: int,
    colliding: bool,
    scanned: dict[str, int | None],
    sets: list[tuple[str, int | None]],
    ticks: list[int],
) -> None:
    """The loaded run and the active part together act as one map of latest
    deadlines: through sets, merges and pops, whatever the hashes do."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(deadlines, "MERGE_AT", merge_at)
        if colliding:
            mp.setattr(deadlines, "_hash", lambda customer: 7)
        idx = index()
        idx.load(0, scanned.items())
        latest = {c: d for c, d in scanned.items() if d is not None}
        for i, (customer, deadline) in enumerate(sets):
            idx.set(0, customer, deadline)
            if deadline is None:
                latest.pop(customer, None)
            else:
                latest[customer] = deadline
            if ticks and i % 3 == 0:
                now = ticks[(i // 3) % len(ticks)]
                want = sorted(c for c, d in latest.items() if d <= now)
                assert sorted(idx.pop_due(0, now)) == want
                for c in want:
                    del latest[c]
            assert len(idx) == len(latest)
            assert idx.next_due(0) == (min(latest.values()) if latest else None)
        assert sorted(idx.pop_due(0, 10**6)) == sorted(latest)


def test_a_million_loaded_customers_fit_in_a_few_tens_of_megabytes() -> None:
    idx = index()
    n = 100_000
    idx.load(0, ((f"cust-1-{i:06d}", T0 + (i * 7919) % n * 1000) for i in range(n)))
    per_customer = idx.run_bytes() / n
    assert per_customer < 50  # 8 + 4 + 8 + 4 + 1 bytes and the id's 13
    due = sorted(f"cust-1-{i:06d}" for i in range(n) if (i * 7919) % n <= 2)
    assert sorted(idx.pop_due(0, T0 + 2000)) == due and len(due) == 3
    assert len(idx) == n - 3


def test_the_latest_possible_deadline_fits_the_loaded_run() -> None:
    """An event time just before year 3000 plus the longest duration a map may state."""
    from models.map_reader import MAX_DURATION_S
    from models.timeutil import MAX_MS

    latest = MAX_MS - 1 + MAX_DURATION_S * 1000
    idx = index()
    idx.load(0, [("late", latest), ("early", 5)])
    assert idx.next_due(0) == 5 and idx.pop_due(0, latest) == ["early", "late"]
