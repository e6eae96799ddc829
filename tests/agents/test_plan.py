"""The pure batch planner and the thin agent, without a broker."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import orjson
import pytest

from agents import plan as planner
from agents.plan import SourceRecord, plan_batch
from models import fold, load_map, parse_touchpoint
from models.events import CLOCK_HEADER, GROUP_HEADER, Clock, Touchpoint
from models.outputs import Nudge, StallRecord
from stream.engine.codec import decode_stored, encode_stored
from stream.engine.partitioning import key_partition

N = 8
MAP = load_map()


class Rec:
    """The fields of an aiokafka ConsumerRecord the planner reads."""

    def __init__(
        self,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: tuple[tuple[str, bytes], ...] = (),
        timestamp: int | None = None,
    ) -> None:
        self.topic, self.partition, self.offset, self.key, self.value = "tp", partition, offset, key, value
        self.headers = headers
        self.timestamp = timestamp


def clock_rec(cid: str, now: int, offset: int) -> Rec:
    return Rec(
        key_partition(cid.encode(), N),
        offset,
        cid.encode(),
        Clock(cid, now).to_json(),
        ((CLOCK_HEADER, b"1"),),
    )


def event(
    cid: str, eid: str, etype: str, offset: int, *, partition: int | None = None, key: Any = ...
) -> Rec:
    value = orjson.dumps(
        {
            "event_id": eid,
            "customer_id": cid,
            "type": etype,
            "channel": "web",
            "timestamp": 1_790_000_000_000 + offset,
        }
    )
    p = key_partition(cid.encode(), N) if partition is None else partition
    return Rec(p, offset, cid.encode() if key is ... else key, value)


def by_partition(records: list[Rec]) -> dict[int, list[SourceRecord]]:
    out: dict[int, list[SourceRecord]] = defaultdict(list)
    for r in records:
        out[r.partition].append(r)
    return dict(out)


def plan(records: list[Rec], stored: dict[bytes, bytes] | None = None) -> planner.BatchPlan:
    table = stored or {}

    def load(partition: int, key: bytes) -> Any:
        raw = table.get(key)
        return decode_stored(raw) if raw is not None else None

    return plan_batch(MAP, by_partition(records), load, partitions=N, max_event_bytes=65536)


def test_folds_each_customer_and_dead_letters_the_rest() -> None:
    wrong = (key_partition(b"c2", N) + 1) % N
    out = plan(
        [
            event("c1", "a", "page_view", 0),
            event("c2", "b", "add_to_cart", 1),
            event("c1", "c", "add_to_cart", 2),
            event("c1", "a", "page_view", 3),  # same event id again: a duplicate
            event("c2", "d", "purchase", 4, partition=wrong),
            event("c3", "e", "page_view", 5, key=None),
            Rec(0, 6, b"x", b"{"),
        ]
    )
    assert sorted((d.reason, d.record.offset) for d in out.dead) == [("key_mismatch", 5), ("not_json", 6)]
    # Valid, but on another partition than the key's murmur2 one: moved there.
    assert [(m.record.offset, m.home) for m in out.moves] == [(4, key_partition(b"c2", N))]
    assert dict(out.moves[0].headers())["journey-moved-from"] == f"tp:{wrong}:4".encode()
    updates = {u.customer_id: u for u in out.updates}
    c1 = updates["c1"]
    assert c1.fold.state is not None and c1.fold.state.stage == "cart"
    assert (c1.fold.applied, c1.fold.duplicates, c1.last_offset) == (2, 1, 3)
    assert c1.partition == key_partition(b"c1", N)
    assert [t.to_stage for t in updates["c2"].fold.transitions] == ["cart"]
    dl = out.dead[0]
    assert dict(dl.headers())["journey.dlq.source"] == f"tp:{dl.record.partition}:{dl.record.offset}".encode()


def test_a_customer_on_a_wrong_partition_later_in_the_batch_is_moved_too() -> None:
    home = key_partition(b"c1", N)
    out = plan([event("c1", "a", "page_view", 0), event("c1", "b", "search", 1, partition=(home + 1) % N)])
    assert out.dead == [] and [(m.record.offset, m.home) for m in out.moves] == [(1, home)]
    assert out.updates[0].fold.applied == 1


def test_events_moved_from_one_partition_keep_their_order() -> None:
    home = key_partition(b"c1", N)
    away = (home + 1) % N
    out = plan([event("c1", f"e{i}", "page_view", i, partition=away) for i in range(5)])
    assert [m.record.offset for m in out.moves] == [0, 1, 2, 3, 4] and out.updates == []


def test_a_moved_or_internal_record_on_a_wrong_partition_is_dead_lettered_not_moved_again() -> None:
    home = key_partition(b"c1", N)
    moved = event("c1", "a", "page_view", 0, partition=(home + 1) % N)
    moved.headers = (("journey-moved-from", b"tp:0:0"),)
    clock = clock_rec("c1", 1_790_000_000_000, 1)
    clock.partition = (home + 1) % N
    out = plan([moved, clock])
    assert out.moves == []
    assert sorted((d.reason, d.record.offset) for d in out.dead) == [
        ("wrong_partition", 0),
        ("wrong_partition", 1),
    ]


def test_records_at_or_below_the_stored_offset_are_replays() -> None:
    first = [event("c1", "a", "page_view", 10), event("c1", "b", "product_view", 11)]
    state = plan(first).updates[0].fold.state
    assert state is not None
    replay = [*first, event("c1", "c", "add_to_cart", 12)]
    out = plan(replay, {b"c1": encode_stored(11, state)})
    assert out.replayed == 2
    assert out.updates[0].fold.applied == 1
    events = [parse_touchpoint(e.value, MAP) for e in replay]
    assert out.updates[0].fold.state == fold(MAP, [e for e in events if isinstance(e, Touchpoint)])["c1"]


def test_a_customer_whose_events_are_all_replays_is_not_rewritten() -> None:
    first = [event("c1", "a", "page_view", 10)]
    state = plan(first).updates[0].fold.state
    assert state is not None
    out = plan(first, {b"c1": encode_stored(10, state)})
    assert out.replayed == 1 and out.updates == [] and out.changed == []


def test_a_core_failure_dead_letters_only_that_customers_events(monkeypatch: pytest.MonkeyPatch) -> None:
    real = planner.fold_customer

    def flaky(jmap: Any, state: Any, events: Any) -> Any:
        events = list(events)
        if any(e.customer_id == "bad" for e in events):
            raise ValueError("boom")
        return real(jmap, state, events)

    monkeypatch.setattr(planner, "fold_customer", flaky)
    out = plan([event("ok", "1", "page_view", 0), event("bad", "2", "page_view", 1)])
    assert [(d.reason, d.record.offset) for d in out.dead] == [("processing_error", 1)]
    assert "boom" in out.dead[0].detail
    assert [u.customer_id for u in out.updates] == ["ok"]


@pytest.mark.parametrize("where", ["encode_stored", "deadline_of"])
def test_a_failure_after_the_fold_is_isolated_too(monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """Encoding the state, building the records and the next deadline run
    inside the customer's isolation: a raise there dead-letters that
    customer's events of the batch (all of them), the others go on."""
    real = getattr(planner, where)

    def flaky(*args: Any) -> Any:
        state = args[-1]
        if state.customer_id == "bad":
            raise OverflowError("out of range")
        return real(*args)

    monkeypatch.setattr(planner, where, flaky)
    out = plan(
        [event("bad", "1", "page_view", 0), event("ok", "2", "page_view", 1), event("bad", "3", "search", 2)]
    )
    assert [(d.reason, d.record.offset) for d in out.dead] == [
        ("processing_error", 0),
        ("processing_error", 2),
    ]
    assert [u.customer_id for u in out.updates] == ["ok"]
    assert out.updates[0].encoded is not None and out.updates[0].records


def test_a_transition_record_that_cannot_be_built_is_isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    from models.state import Transition

    real = Transition.to_record

    def flaky(self: Transition) -> Any:
        if self.customer_id == "bad":
            raise ValueError("year 10000 is out of range")
        return real(self)

    monkeypatch.setattr(Transition, "to_record", flaky)
    out = plan([event("bad", "1", "page_view", 0), event("ok", "2", "page_view", 1)])
    assert [(d.reason, d.record.offset) for d in out.dead] == [("processing_error", 0)]
    assert "year 10000" in out.dead[0].detail
    assert [u.customer_id for u in out.updates] == ["ok"]


def test_event_times_far_past_the_records_own_time_are_refused() -> None:
    """The future bound is judged against the record's Kafka timestamp, so a
    replay of the record judges it the same way (the fold stays a fold)."""
    ok, ahead = event("c1", "a", "page_view", 0), event("c2", "b", "page_view", 1)
    ok.timestamp = 1_790_000_000_000  # the event's own time (offset 0)
    ahead.timestamp = 1_790_000_000_000 - 86_400_001  # the event is a day and a millisecond ahead
    out = plan_batch(
        MAP,
        by_partition([ok, ahead]),
        lambda p, k: None,
        partitions=N,
        max_event_bytes=65536,
        max_future_ms=86_400_000,
    )
    assert [(d.reason, d.record.offset) for d in out.dead] == [("in_future", 1)]
    assert [u.customer_id for u in out.updates] == ["c1"]


def test_a_clock_record_opens_a_stall_in_order_with_the_events_and_is_stored() -> None:
    cart = event("c9", "e1", "add_to_cart", 10)
    first = plan([cart])
    assert first.changed and first.clocks == 0
    stored = {b"c9": encode_stored(10, first.changed[0].fold.state)}  # type: ignore[arg-type]
    due = 1_790_000_000_000 + 10 + 3_600_000
    p = plan([clock_rec("c9", due, 11)], stored)
    assert p.clocks == 1 and not p.dead and len(p.changed) == 1
    u = p.changed[0]
    assert u.last_offset == 11 and u.fold.state is not None and u.fold.state.stall is not None
    assert [type(o) for o in u.fold.outputs][:1] == [StallRecord]
    assert all(isinstance(o, StallRecord | Nudge) for o in u.fold.outputs)
    # Replayed, it is skipped by offset like any record.
    again = plan([clock_rec("c9", due, 11)], {b"c9": encode_stored(11, u.fold.state)})
    assert again.replayed == 1 and not again.changed
    # A clock record before the deadline changes nothing and is not written.
    early = plan([clock_rec("c9", due - 1, 11)], stored)
    assert not early.changed and not early.dead


def test_a_bad_clock_record_is_dead_lettered() -> None:
    rec = Rec(0, 5, b"x", b'{"clock": "soon"}', ((CLOCK_HEADER, b"1"),))
    p = plan([rec])
    assert [d.reason for d in p.dead] == ["bad_field"]


def test_another_groups_own_records_are_skipped_and_ours_applied() -> None:
    """Two tracker groups on one topic (blue/green): each applies its own
    clock readings and those that name no group, never the other's."""
    cart = event("c9", "e1", "add_to_cart", 10)
    first = plan([cart])
    stored = {b"c9": encode_stored(10, first.changed[0].fold.state)}  # type: ignore[arg-type]
    due = 1_790_000_000_000 + 10 + 3_600_000
    rec = clock_rec("c9", due, 11)

    def tagged(group: bytes) -> Rec:
        return Rec(
            rec.partition, rec.offset, rec.key, rec.value, ((CLOCK_HEADER, b"1"), (GROUP_HEADER, group))
        )

    def run(r: Rec) -> planner.BatchPlan:
        def load(partition: int, key: bytes) -> Any:
            return decode_stored(stored[key]) if key in stored else None

        return plan_batch(MAP, by_partition([r]), load, partitions=N, max_event_bytes=65536, group="blue")

    foreign = run(tagged(b"green"))
    assert foreign.foreign == 1 and not foreign.changed and not foreign.dead
    for own in (tagged(b"blue"), rec):  # ours, or a record that names no group
        p = run(own)
        assert p.foreign == 0 and p.clocks == 1 and p.changed[0].fold.state.stall is not None  # type: ignore[union-attr]
