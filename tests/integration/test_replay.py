"""``journey replay`` on a real topic: under the live map it ends where the
worker's table is (identity merges included, the worker's own records
skipped); under a map that moves add_to_cart to a new stage it gives what
the plain fold under that map gives."""

from __future__ import annotations

import itertools
import os
import subprocess
import time
from pathlib import Path

import orjson

from models import load_map
from models.events import Clock, Touchpoint
from models.journey_map import parse_map
from models.reducer import LinkedFold
from stream.tools.replay import replay
from stream.tools.simulator import SimMessage
from tests.integration.harness import (
    JOURNEY,
    WorkerProcess,
    make_settings,
    send_messages,
    start_ready_worker,
    stored_states,
    wait_for,
    wait_processed,
)

DEFAULT_MAP = Path(__file__).resolve().parents[2] / "models" / "default_map.yaml"
_ids = itertools.count()


def msg(cid: str, etype: str, ago_s: float, **props: object) -> SimMessage:
    ev = Touchpoint(
        f"{cid}-r{next(_ids)}", cid, etype, "web", int(time.time() * 1000 - ago_s * 1000), props or None
    )
    return SimMessage(cid.encode(), ev.to_json())


def test_replay_matches_the_table_and_the_plain_fold_under_a_new_map(
    spawn: list[WorkerProcess], tmp_path: Path
) -> None:
    s = make_settings(tmp_path, partitions=4)  # the default map: no deadline falls due in this test
    w = start_ready_worker(s, tmp_path, spawn)
    # Anonymous browsing first, the logins later (as the worker meets them:
    # replay reads the partitions in append order).
    anonymous: list[SimMessage] = []
    for i in range(40):
        anonymous += [msg(f"anon-{i}", "page_view", 120), msg(f"anon-{i}", "product_view", 110)]
        if i % 2:
            anonymous.append(msg(f"anon-{i}", "add_to_cart", 100))
    send_messages(s, anonymous)
    wait_processed(s, [w])
    messages: list[SimMessage] = []
    for i in range(40):
        messages.append(msg(f"user-{i}", "search", 90))
        if i % 4 == 0:
            messages.append(msg(f"user-{i}", "identify", 80, previous_id=f"anon-{i}"))
        if i % 3 == 0:
            messages.append(msg(f"user-{i}", "checkout_started", 70))
    messages.append(SimMessage(b"bad", b"{not json"))
    send_messages(s, messages)
    wait_for(
        "the merges", lambda: sum(1 for st in stored_states(s).values() if st.merged_into) == 10, timeout=90
    )
    wait_processed(s, [w])

    live = load_map()
    text = DEFAULT_MAP.read_text().replace(
        "  - name: cart\n    enter_on: [add_to_cart, checkout_started]",
        "  - name: basket\n    enter_on: [add_to_cart]\n  - name: cart\n    enter_on: [checkout_started]",
    )
    assert "name: basket" in text
    new = parse_map(text, "new.yaml")
    at = int(time.time() * 1000)
    report = replay(s, live, new, at_ms=at)
    assert report.skipped > 0  # the links and merges the worker wrote

    # Under the live map: the worker's table (nothing fell due).
    assert report.live.folder.states == stored_states(s)

    # Under the new map: the plain fold of the same events under it.
    from models.events import Rejection, parse_touchpoint

    want = LinkedFold(new)
    for m in [*anonymous, *messages]:
        parsed = parse_touchpoint(m.value, new, key=m.key)
        if not isinstance(parsed, Rejection):
            want.apply(parsed)
    for cid in list(want.states):
        if want.states[cid].merged_into is None:
            want.apply(Clock(cid, at))
    assert report.new.folder.states == want.states
    figures = report.to_dict()
    assert (
        figures["new"]["stages"]["basket"]
        == sum(1 for st in want.states.values() if st.stage == "basket")
        > 0
    )
    assert figures["live"]["stages"].get("basket") is None
    assert figures["live"]["merged_ids"] == figures["new"]["merged_ids"] == 10
    assert figures["live"]["refused"] == {"not_json": 1}
    assert figures["customers_moved"] == sum(1 for c, st in want.states.items() if st.stage == "basket")
    assert all(row["new"] == "basket" and "add_to_cart" in row["new_why"] for row in figures["sample"])

    # The command: a table, and the same report as JSON.
    new_path, out = tmp_path / "new.yaml", tmp_path / "replay.json"
    new_path.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOURNEY_")}
    env.update(s.to_env())
    done = subprocess.run(
        [JOURNEY, "replay", "--map", str(new_path), "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "basket" in done.stdout and "customers in another stage under the new map" in done.stdout
    assert orjson.loads(out.read_bytes())["new"]["stages"]["basket"] == figures["new"]["stages"]["basket"]
