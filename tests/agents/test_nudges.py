"""The nudge dispatcher on fakes: the gate's decisions, quiet hours, Redis away, a partition's scan."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import orjson
from msgspec.structs import replace as replace_struct
from prometheus_client import CollectorRegistry

from agents.nudges import NudgeDispatcher
from models import Touchpoint, fold, load_map
from models.outputs import Nudge
from models.rules import QuietHours
from models.state import NudgeRef
from stream.engine.lifecycle import PartitionLifecycle
from stream.engine.metrics import TrackerMetrics
from stream.redis.gate import Claim, GateDown
from stream.settings import Settings

MAP = load_map()
NOW = 1_795_503_600_000  # 2026-11-24 07:00 UTC
MIDNIGHT = NOW - NOW % 86_400_000
SETTINGS = Settings()


class Gate:
    """Decides as told per nudge id; down while ``down`` is set."""

    def __init__(self) -> None:
        self.decisions: dict[str, str] = {}
        self.decided: set[str] = set()
        self.done: list[tuple[str, str, str, str]] = []
        self.down = False

    async def claim_many(self, requests: list[Any]) -> list[Claim]:
        if self.down:
            raise GateDown("redis: down")
        out = []
        for r in requests:
            out.append(Claim(self.decisions.get(r.nudge_id, "sent"), r.nudge_id not in self.decided))  # type: ignore[arg-type]
            self.decided.add(r.nudge_id)
        return out

    async def done_many(self, items: list[tuple[str, str, str, str]]) -> None:
        self.done.extend(items)


class Batches:
    def __init__(self, sink: list[tuple[str, int, bytes, bytes]]) -> None:
        self.sink, self.added = sink, []  # type: ignore[var-annotated]

    def add(self, topic: str, partition: int, key: bytes, value: bytes, *rest: Any) -> None:
        self.added.append((topic, partition, key, value))

    async def send(self) -> dict[Any, int]:
        self.sink.extend(self.added)
        return {}


def dispatcher(
    now: list[int] | None = None,
) -> tuple[NudgeDispatcher, Gate, list[tuple[str, int, bytes, bytes]]]:
    gate, sink = Gate(), []  # type: ignore[var-annotated]
    clock = now if now is not None else [NOW]
    metrics = TrackerMetrics.create(CollectorRegistry(), PartitionLifecycle())
    d = NudgeDispatcher(SETTINGS, MAP, gate, lambda: Batches(sink), metrics, lambda: clock[0])  # type: ignore[arg-type,return-value]
    d.on_partition_recovered(0)
    return d, gate, sink


def nudge(cid: str, nid: str, created: int = NOW) -> Nudge:
    return Nudge(nid, cid, "cart_reminder", "email", "cart", "stall", {}, created, False, 3600)


def count(d: NudgeDispatcher, outcome: str) -> float:
    return d._metrics.nudges.labels("cart_reminder", outcome)._value.get()  # type: ignore[no-any-return]


def test_a_sent_nudge_goes_to_its_topic_with_its_delivery_record_and_is_recorded_done() -> None:
    d, gate, sink = dispatcher()
    d.submit(0, nudge("c1", "n1"))
    d.submit(0, nudge("c1", "n1"))  # the same decision twice (a replay): one entry
    asyncio.run(d.flush())
    topics = [t for t, *_ in sink]
    assert topics == [SETTINGS.nudges_topic, SETTINGS.touchpoints_topic]  # the nudge, then its delivery
    assert orjson.loads(sink[1][3])["delivery"] == "sent"
    assert gate.done == [("c1", "cart_reminder", "n1", "sent")]
    assert len(d) == 0 and count(d, "sent") == 1


def test_held_out_goes_to_the_held_out_topic_and_capped_goes_nowhere() -> None:
    d, gate, sink = dispatcher()
    gate.decisions = {"n1": "held_out", "n2": "capped"}
    d.submit(0, nudge("c1", "n1"))
    d.submit(0, nudge("c2", "n2"))
    asyncio.run(d.flush())
    assert [t for t, *_ in sink] == [SETTINGS.held_out_topic, SETTINGS.touchpoints_topic]
    assert count(d, "capped") == 1 and count(d, "held_out") == 1 and len(d) == 0


def test_quiet_hours_hold_a_nudge_until_they_end_and_count_it_once() -> None:
    quiet = replace(MAP, nudges=replace(MAP.nudges, quiet_hours=QuietHours(0, 60)))  # 00:00-01:00 UTC
    now = [MIDNIGHT + 20 * 60_000]  # 00:20
    d, _, sink = dispatcher(now)
    d._jmap = quiet
    d.submit(0, nudge("c1", "n1", created=now[0]))
    asyncio.run(d.flush())
    asyncio.run(d.flush())
    assert sink == [] and len(d) == 1 and count(d, "quiet_hours") == 1
    now[0] = MIDNIGHT + 60 * 60_000  # 01:00
    asyncio.run(d.flush())
    assert [t for t, *_ in sink][:1] == [SETTINGS.nudges_topic]


def test_while_redis_is_down_nudges_wait_and_go_once_it_is_back() -> None:
    d, gate, sink = dispatcher()
    gate.down = True
    d.submit(0, nudge("c1", "n1"))
    asyncio.run(d.flush())
    assert sink == [] and not d.gate_up and len(d) == 1
    asyncio.run(d.flush(from_batch=True))  # a batch never waits for Redis while it is down
    gate.down = False
    asyncio.run(d.flush())
    assert d.gate_up and len(d) == 0 and sink[0][0] == SETTINGS.nudges_topic


def test_a_nudge_past_the_maps_max_age_expires_unsent() -> None:
    d, _, sink = dispatcher()
    d.submit(0, nudge("c1", "n1", created=NOW - MAP.nudges.max_age_s * 1000 - 1))
    asyncio.run(d.flush())
    assert sink == [] and len(d) == 0 and count(d, "expired") == 1


def test_a_loaded_partition_gives_back_its_open_nudges_and_a_revoked_one_takes_them_away() -> None:
    d, _, _ = dispatcher()
    [state] = fold(MAP, [Touchpoint("e1", "c1", "add_to_cart", "web", NOW - 1000)]).values()
    open_ref = NudgeRef("n-open", "cart_reminder", "cart", NOW - 1000, NOW + 3_600_000, False)
    closed = NudgeRef("n-done", "cart_reminder", "cart", NOW - 1000, NOW + 3_600_000, False, "converted")
    d.on_partition_recovered(3)
    d.on_partition_loaded(3, [replace_struct(state, nudges=(open_ref, closed))])
    assert list(d.pending) == ["n-open"] and d.pending["n-open"].partition == 3
    d.on_partition_revoked(3)
    assert len(d) == 0
