"""The comparison issue 9 was measured against: Quix Streams running a small journey reducer.

Run by ``bench/throughput.py --quix PYTHON`` under an interpreter that has
Quix Streams (not a project dependency; ``python3 -m venv /tmp/qx &&
/tmp/qx/bin/pip install quixstreams==3.28.*``). What a Python user would
pick instead of this project: RocksDB state with a changelog topic,
at-least-once. Per record: parse the value with orjson, skip what is not a
JSON object with a string ``type``; per customer in state: a stage that
only moves forward (``RANKS_JSON``: the stage index of each event type that
enters a stage, which ``throughput.py`` takes from the default map), an
event count and the last 16 event ids (duplicates change nothing). Needs
only the standard library, orjson and quixstreams.

Prints one JSON line: ``{"events": N, "events_per_s": X, "to_last_record_per_s": Y}``.
X runs from the first record to the end of ``Application.run``, after the
last checkpoint: Quix writes state and changelog at each checkpoint (every
5 s by default) and on stop, so a run of a few seconds would otherwise not
count its writes; it includes leaving the group, a fraction of a second.
Y stops at the last record, with its state not yet written.

    PYTHON bench/quix_reducer.py BROKER TOPIC TOTAL STATE_DIR RANKS_JSON
"""

from __future__ import annotations

import sys
import time
import uuid
from typing import Any

import orjson
from quixstreams import Application, State


def main() -> None:
    broker, topic_name, total, state_dir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    # The map's stage index of each event type that enters a stage, from the caller.
    rank_of: dict[str, int] = orjson.loads(sys.argv[5])
    app = Application(
        broker_address=broker,
        consumer_group=f"bench-quix-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        processing_guarantee="at-least-once",
        state_dir=state_dir,
    )
    topic = app.topic(topic_name, key_deserializer="bytes", value_deserializer="bytes")
    seen = 0
    started = last = 0.0

    def count(_value: bytes) -> None:
        nonlocal seen, started, last
        if not started:
            started = time.perf_counter()
        seen += 1
        if seen >= total:
            last = time.perf_counter()
            app.stop()

    def reduce(value: bytes, state: State) -> None:
        try:
            ev: Any = orjson.loads(value)
        except orjson.JSONDecodeError:
            return
        if not isinstance(ev, dict) or not isinstance(ev.get("type"), str):
            return
        recent: list[str] = state.get("recent", [])
        if ev.get("event_id") in recent:
            return
        rank = rank_of.get(ev["type"], 0)
        if rank > state.get("rank", -1):
            state.set("rank", rank)
        state.set("events", state.get("events", 0) + 1)
        state.set("recent", [*recent[-15:], ev.get("event_id")])

    sdf = app.dataframe(topic)
    sdf.update(count)
    sdf = sdf.filter(lambda _value, key, _ts, _headers: key is not None, metadata=True)
    sdf.update(reduce, stateful=True)
    app.run()  # returns after the last checkpoint: state flushed, changelog produced, offsets committed
    finished = time.perf_counter()
    print(
        orjson.dumps(
            {
                "events": seen,
                "events_per_s": seen / (finished - started),
                "to_last_record_per_s": seen / (last - started),
            }
        ).decode()
    )


if __name__ == "__main__":
    main()
