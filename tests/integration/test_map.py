"""GET /funnel over two workers, and the live journey map in a real browser
(Debian's chromium, driven by Playwright through executable_path)."""

from __future__ import annotations

import os
import shutil
import threading
from collections import Counter
from itertools import pairwise
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.tools.kafka import ensure_topics, tracker_topics
from stream.tools.simulator import generate
from tests.integration.harness import (
    WorkerProcess,
    make_settings,
    send_messages,
    start_owning_pair,
    stored_states,
    wait_processed,
)

TOKEN = "map-token"
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("JOURNEY_TEST_ARTIFACTS", ROOT / ".test-artifacts"))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As the machine's notes say: no background networking, a fresh profile.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def expected_funnel(
    states: dict[str, Any], stages: list[str]
) -> tuple[Counter[str], dict[str, float | None]]:
    counts = Counter(s.stage for s in states.values())
    ratios: dict[str, float | None] = {}
    for i, (a, b) in enumerate(pairwise(stages)):
        onward = set(stages[i + 1 :])  # B or any later stage: skipping ahead converts
        reached = sum(1 for s in states.values() if a in s.stages)
        both = sum(1 for s in states.values() if a in s.stages and onward & set(s.stages))
        ratios[f"{a}>{b}"] = both / reached if reached else None
    return counts, ratios


def expected_bottleneck(states: dict[str, Any], stages: list[str]) -> str:
    """The stage that lost the most customers who reached it (none of a later
    stage after it), the lower share going on first on a tie."""
    rows = []
    for i, a in enumerate(stages[:-1]):
        reached = [s for s in states.values() if a in s.stages]
        if not reached:
            continue
        on = sum(1 for s in reached if any(s.stages.get(b, -1) >= s.stages[a] for b in stages[i + 1 :]))
        rows.append((len(reached) - on, -on / len(reached), a))
    return max(rows)[2]


def test_funnel_over_two_workers_and_the_map_in_a_browser(spawn: list[WorkerProcess], tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    s = make_settings(tmp_path, partitions=4, api_token=TOKEN)
    ensure_topics(s, tracker_topics(s))
    a, b = start_owning_pair(s, tmp_path, spawn)
    messages = generate(1500, seed=31, duplicates=0.02, malformed=0.01)
    sender = threading.Thread(target=send_messages, args=(s, messages, 600.0))
    sender.start()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1900, "height": 800})
        # While the simulator runs: what the page shows is what its last /funnel said.
        with page.expect_response(lambda r: r.url.endswith("/funnel") and r.status in (200, 206)) as got:
            page.goto(f"{a.url}/map#token={TOKEN}")
        first = got.value.json()
        page.wait_for_function(f"document.body.dataset.customers === '{first['customers']}'")
        for st in first["stages"]:
            assert page.inner_text(f"[data-testid=count-{st['stage']}]") == str(st["customers"])
        assert sender.is_alive(), "the simulator finished before the page was checked; slow it down"
        sender.join()
        wait_processed(s, [a, b])

        # Settled: /funnel from either worker equals the table, over both workers.
        states = stored_states(s)
        funnel_stages = [st.name for st in a_map_stages()]
        want_counts, want_ratios = expected_funnel(states, funnel_stages)
        for w in (a, b):
            status, body = w.get("/funnel")
            assert status == 200 and body["workers"] == {"answered": 2, "missing": []}
            assert {st["stage"]: st["customers"] for st in body["stages"]} == {
                st: want_counts.get(st, 0) for st in [x["stage"] for x in body["stages"]]
            }
            assert {f"{c['from']}>{c['to']}": c["ratio"] for c in body["conversion"]} == pytest.approx(
                want_ratios
            )
            assert body["bottleneck"]["stage"] == expected_bottleneck(states, funnel_stages)

        # The page follows: counts, conversions and the bottleneck as /funnel says.
        _, final = a.get("/funnel")
        page.wait_for_function(f"document.body.dataset.customers === '{final['customers']}'", timeout=15_000)
        for st in final["stages"]:
            assert page.inner_text(f"[data-testid=count-{st['stage']}]") == str(st["customers"])
            assert page.inner_text(f"[data-testid=stalled-{st['stage']}]") == str(st["stalled"])
        bn = final["bottleneck"]
        card = page.locator(f"[data-testid=stage-{bn['stage']}]")
        assert "bottleneck" in (card.get_attribute("class") or "")
        assert f"{bn['lost']} of {bn['reached']}" in page.inner_text("[data-testid=bottleneck]")
        # A replay report (journey replay --out) opened on the page: the two maps side by side.
        from models import load_map
        from models.journey_map import parse_map
        from stream.tools.replay import replay

        text = (Path(__file__).resolve().parents[2] / "models" / "default_map.yaml").read_text()
        new = parse_map(
            text.replace(
                "  - name: cart\n    enter_on: [add_to_cart, checkout_started]",
                "  - name: basket\n    enter_on: [add_to_cart]\n"
                "  - name: cart\n    enter_on: [checkout_started]",
            ),
            "new.yaml",
        )
        report = replay(s, load_map(), new).to_dict()
        report_path = tmp_path / "replay.json"
        report_path.write_bytes(orjson.dumps(report))
        page.locator("[data-testid=replay] summary").click()
        page.set_input_files("[data-testid=replay-file]", str(report_path))
        cells = page.locator("[data-testid=replay-stage-basket] td")
        cells.first.wait_for(timeout=10_000)
        assert (
            cells.nth(2).inner_text() == str(report["new"]["stages"]["basket"])
            and cells.nth(1).inner_text() == "\u2013"  # the page's dash: the live map has no basket
        )
        assert report["new"]["stages"]["basket"] > 0
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "journey-map.png"), full_page=True)
        browser.close()
    assert (ARTIFACTS / "journey-map.png").stat().st_size > 10_000

    # A customer owned by the other worker is found from either, with the token.
    cid = next(iter(states))
    (sa, from_a), (sb, from_b) = a.get(f"/customers/{cid}"), b.get(f"/customers/{cid}")
    odds_a, odds_b = from_a.pop("next_stage_odds"), from_b.pop("next_stage_odds")
    assert (sa, from_a) == (sb, from_b)
    if odds_a is not None:  # the same estimate, read a moment apart
        assert odds_b is not None and odds_a["evidence"] == odds_b["evidence"]
    assert a.get(f"/customers/{cid}")[0] == 200


def a_map_stages() -> list[Any]:
    from models import load_map

    return [st for st in load_map().stages if not st.exit]
