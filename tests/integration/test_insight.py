"""The insight layer through the real broker, two workers and Redis: flows
and time to convert equal the plain fold's, the lift and its interval equal
a direct computation on the outcome records, dimension labels stay within
the map whatever the events send, a customer's next-stage odds answer with
their evidence, and the map page shows flows, lift and the dimension
selector in a real browser (screenshots: .test-artifacts/journey-insight.png, and
-treatment.png with one variant chosen)."""

from __future__ import annotations

import os
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from models import load_map
from models.events import Touchpoint
from models.insight import bucket, compare, quantile
from models.state import CustomerState
from stream.tools.kafka import ensure_topics, tracker_topics
from stream.tools.simulator import SimMessage
from tests.integration.harness import (
    WorkerProcess,
    make_settings,
    send_messages,
    settled_states,
    start_owning_pair,
    stored_states,
    topic_records,
    wait_for,
    wait_processed,
)
from tests.integration.test_map import CHROMIUM, CHROMIUM_ARGS

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("JOURNEY_TEST_ARTIFACTS", ROOT / ".test-artifacts"))
DEMO_MAP = ROOT / "deploy" / "local" / "demo-map.yaml"
TOKEN = "insight-token"
CARTS = 120
WINDOW_S = 30
BROWSERS = 20


def msg(cid: str, i: int, etype: str, at: int, **props: Any) -> SimMessage:
    return SimMessage(cid.encode(), Touchpoint(f"{cid}-{i}", cid, etype, "web", at, props or None).to_json())


def journeys(now: int) -> list[SimMessage]:
    """Abandoned carts (each earns a cart reminder or a held-out twin), with
    dimension values among them that no map lists (and some that are not
    even text); and journeys that skip, go backward and defect."""
    out: list[SimMessage] = []
    for n in range(CARTS):
        cid = f"cart-{n}"
        props: dict[str, Any] = {"variant": "treatment" if n % 2 else "control"}
        props["device"] = "mobile" if n % 3 == 0 else ("x" * 300 if n % 10 == 1 else "desktop")
        if n % 7 == 0:
            props["segment"] = {"nested": [1, 2]}
        if n % 4 == 0:
            props["tz"] = "Europe/Berlin"
        out += [msg(cid, 0, "page_view", now - 60_000, **props), msg(cid, 1, "add_to_cart", now - 50_000)]
    for n in range(30):
        cid = f"skip-{n}"  # consideration -> purchase (a skip), loyalty, then service (backward)
        out += [
            msg(cid, 0, "product_view", now - 40_000, device="tablet", segment="vip"),
            msg(cid, 1, "purchase", now - 39_000, order_value=50),
            msg(cid, 2, "review_written", now - 38_000, rating=5),
            msg(cid, 3, "support_ticket", now - 37_000),
        ]
    for n in range(BROWSERS):
        cid = f"browse-{n}"  # stays in consideration: low odds, a rescue nudge
        out += [msg(cid, 0, "page_view", now - 40_000), msg(cid, 1, "price_compare", now - 39_000)]
    for n in range(30):
        cid = f"gone-{n}"  # awareness -> consideration -> defected
        out += [
            msg(cid, 0, "page_view", now - 40_000, variant="C" * 80),
            msg(cid, 1, "search", now - 39_500),
            msg(cid, 2, "unsubscribe", now - 39_000),
        ]
    return out


def direct_ttc(states: dict[str, CustomerState], a: str, b: str, later: list[str]) -> dict[str, Any]:
    """Time to convert from a to b straight from the customers' stages (no figures)."""
    converted: Counter[int] = Counter()
    waiting = 0
    for s in states.values():
        at = s.stages.get(a)
        if at is None:
            continue
        if b == "(any later stage)":
            onward = [s.stages[x] for x in later if x in s.stages and s.stages[x] >= at]
            bt = min(onward) if onward else None
        else:
            bt = s.stages.get(b)
            if bt is not None and bt < at:
                continue
        if bt is None:
            waiting += 1
        else:
            converted[bucket((bt - at) / 1000)] += 1
    n = sum(converted.values())
    return {
        "converted": n,
        "waiting": waiting,
        "of_converted": {f"p{int(q * 100)}": quantile(converted, q) for q in (0.5, 0.9, 0.99)},
        "of_all": {f"p{int(q * 100)}": quantile(converted, q, n + waiting) for q in (0.5, 0.9, 0.99)},
    }


def test_flows_time_to_convert_lift_dimensions_and_odds_over_two_workers(
    spawn: list[WorkerProcess], tmp_path: Path
) -> None:
    text = DEMO_MAP.read_text()
    short = (
        text.replace("holdout: 0.10", "holdout: 0.5")
        .replace("cooldown: 10m, window: 5m}", f"cooldown: 10m, window: {WINDOW_S}s}}")
        .replace(
            "  policies:\n",
            "  policies:\n    - {kind: rescue, on: low_odds, stages: [consideration],\n"
            "       below: 0.5, after: 5s, channel: email, cooldown: 1h, window: 1h}\n",
        )
    )
    assert "on: low_odds" in short
    assert short.count("holdout: 0.5") == 1 and f"window: {WINDOW_S}s" in short
    map_path = tmp_path / "map.yaml"
    map_path.write_text(short)
    jmap = load_map(map_path)
    s = make_settings(tmp_path, partitions=4, map_path=map_path, api_token=TOKEN)
    ensure_topics(s, tracker_topics(s))
    a, b = start_owning_pair(s, tmp_path, spawn)
    now = int(time.time() * 1000)
    send_messages(s, journeys(now))

    # Every abandoned cart earns a reminder (sent or held out) and its
    # delivery reaches the customer's state; then half of them buy.
    carts = [f"cart-{n}" for n in range(CARTS)]

    def delivered() -> bool:
        states = stored_states(s)
        return all(
            c in states and states[c].nudges and states[c].nudges[0].delivery is not None for c in carts
        )

    wait_for("every cart reminder decided and delivered", delivered, timeout=120, every=1)
    buyers = [c for n, c in enumerate(carts) if n % 4 < 2]  # in both variants
    send_messages(s, [msg(c, 2, "purchase", int(time.time() * 1000)) for c in buyers])

    def outcomes() -> dict[str, dict[str, Any]]:
        return {r["nudge_id"]: r for r in topic_records(s, s.outcomes_topic)}

    got = wait_for(
        "an outcome for every cart reminder",
        lambda: len(o := outcomes()) >= CARTS and o,
        timeout=120,
        every=2,
    )
    wait_processed(s, [a, b])
    states, folded = settled_states(s, jmap=jmap)
    assert states == folded

    _, body = a.get("/funnel")
    assert body["workers"] == {"answered": 2, "missing": []}

    # Flows: the states' moves over both workers equal every distinct
    # transition record (first stages from "(entry)").
    transitions = {r["transition_id"]: r for r in topic_records(s, s.transitions_topic)}
    from_records = Counter((r["from"] or "(entry)", r["to"]) for r in transitions.values())
    assert {(f["from"], f["to"]): f["customers"] for f in body["flows"]} == dict(from_records)
    assert from_records[("consideration", "purchase")] == 30  # skips
    assert from_records[("loyalty", "service")] == 30  # backward moves
    assert from_records[("consideration", "defected")] == 30

    # Low odds: each customer left in consideration was checked once, against
    # every worker's figures (30 went on within seconds, the rest waited far
    # longer), and earned the map's rescue nudge; the readings are in the fold.
    browsers = [f"browse-{n}" for n in range(BROWSERS)]
    for c in browsers:
        st = folded[c]
        assert st.odds_checked == st.stage_entered_at, c
        assert [n.kind for n in st.nudges] == ["rescue"], c
    rescues = [
        r
        for topic in (s.nudges_topic, s.held_out_topic)
        for r in topic_records(s, topic)
        if r["kind"] == "rescue"
    ]
    assert {r["customer_id"] for r in rescues} == set(browsers)
    assert all(r["reason"]["trigger"] == "low_odds" and r["reason"]["odds"] < 0.5 for r in rescues)

    # Time to convert: every pair as computed straight from the plain fold's stages.
    later = [st.name for st in jmap.stages if not st.exit]
    assert body["time_to_convert"]
    for row in body["time_to_convert"]:
        onward = [x for x in later if jmap.stage_by_name[x].index > jmap.stage_by_name[row["from"]].index]
        want = direct_ttc(folded, row["from"], row["to"], onward)
        assert {k: row[k] for k in want} == want, row

    # Lift: per kind, as computed directly from the outcome records.
    counts: Counter[tuple[str, bool, bool]] = Counter(
        (r["kind"], r["group"] == "held_out", r["converted"]) for r in got.values()
    )
    rows = {r["kind"]: r for r in body["lift"]}
    for kind in {k for k, _, _ in counts}:
        xn, nn = counts[(kind, False, True)], counts[(kind, False, True)] + counts[(kind, False, False)]
        xh, nh = counts[(kind, True, True)], counts[(kind, True, True)] + counts[(kind, True, False)]
        assert rows[kind]["nudged"] == {"customers": nn, "converted": xn}
        assert rows[kind]["held_out"] == {"customers": nh, "converted": xh}
        assert rows[kind]["lift"] == compare(xn, nn, xh, nh)
    assert (
        rows["cart_reminder"]["nudged"]["customers"] + rows["cart_reminder"]["held_out"]["customers"] >= CARTS
    )

    # Dimensions: whatever the events sent, labels are the map's values, other or unknown.
    allowed = {(d.name, v) for d in jmap.dimensions for v in d.labels()}
    for w in (a, b):
        with urllib.request.urlopen(w.url + "/metrics", timeout=10) as resp:
            metrics = resp.read().decode()
        for line in metrics.splitlines():
            if line.startswith("journey_segment_"):
                labels = dict(
                    part.split("=", 1) for part in line[line.index("{") + 1 : line.index("}")].split(",")
                )
                assert (labels["dimension"].strip('"'), labels["value"].strip('"')) in allowed, line
    device = next(d for d in body["dimensions"] if d["name"] == "device")
    by_value = {v["value"]: v["customers"] for v in device["values"]}
    assert by_value["other"] == sum(1 for n in range(CARTS) if n % 3 != 0 and n % 10 == 1)
    assert sum(by_value.values()) == body["customers"]
    status, bad = a.get("/funnel?dimension=device&value=fridge")
    assert status == 400 and "device" in bad["error"]

    # A customer's odds: how many customers they rest on, and an interval.
    status, customer = b.get("/customers/cart-3")
    assert status == 200
    odds = customer["next_stage_odds"]
    assert odds is not None and odds["stage"] == customer["stage"] == "cart"
    assert 0 <= odds["probability"] <= 1 and odds["evidence"]["customers"] >= 30
    assert odds["estimated_from"] in ("all customers", "device=mobile")
    assert customer["next_stage_odds"] is not None
    status, defected = a.get("/customers/gone-0")
    assert status == 200 and defected["next_stage_odds"] is None  # an exit stage: no next stage

    # The page: flows, lift and the dimension selector, in a real browser.
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1700, "height": 1000})
        page.goto(f"{a.url}/map#token={TOKEN}")
        page.locator("[data-testid=lift-cart_reminder]").wait_for(timeout=15_000)
        flow = page.locator("[data-testid=flow-cart-purchase]")
        assert flow.get_attribute("data-count") == str(from_records[("cart", "purchase")])
        assert page.locator("[data-testid=flow-loyalty-service]").count() == 1
        cells = page.locator("[data-testid=lift-cart_reminder] td")
        assert cells.nth(1).inner_text() == "{converted}/{customers}".format(
            **rows["cart_reminder"]["nudged"]
        )
        verdict = cells.nth(4).inner_text()
        assert verdict == (
            "significant" if rows["cart_reminder"]["lift"]["significant"] else "not yet significant"
        )
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "journey-insight.png"), full_page=True)
        page.select_option("[data-testid=dimension]", "variant=treatment")
        page.wait_for_function("document.getElementById('meta').textContent.includes('variant: treatment')")
        _, treated = a.get("/funnel?dimension=variant&value=treatment")
        page.wait_for_function(f"document.body.dataset.customers === '{treated['customers']}'")
        assert treated["customers"] == CARTS // 2
        page.screenshot(path=str(ARTIFACTS / "journey-insight-treatment.png"), full_page=True)
        browser.close()
    assert (ARTIFACTS / "journey-insight.png").stat().st_size > 10_000
    assert orjson.dumps(body)  # the whole answer is JSON (no NaN, no infinity)
