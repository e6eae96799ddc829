"""Segment's own Python SDK, unchanged, pointed at a worker: anonymous calls
on two devices, a login (identify) and a purchase, and the person comes out
as one customer at the right stage. A wrong write key gets the 401 the SDK
does not retry; a bad call in a batch is dead-lettered."""

from __future__ import annotations

import gzip
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
from segment.analytics.client import Client
from segment.analytics.request import APIError

from tests.integration.harness import (
    WorkerProcess,
    dead_letters,
    make_settings,
    start_ready_worker,
    wait_for,
    wait_processed,
    worker_metric,
)

DEMO_MAP = Path(__file__).resolve().parents[2] / "deploy" / "local" / "demo-map.yaml"
WRITE_KEY = "wk-test-1"


def test_segments_sdk_sends_unchanged_and_the_devices_merge(
    spawn: list[WorkerProcess], tmp_path: Path
) -> None:
    s = make_settings(tmp_path, partitions=4, map_path=DEMO_MAP, segment_write_key=WRITE_KEY)
    w = start_ready_worker(s, tmp_path, spawn)
    errors: list[Any] = []
    sdk = Client(
        WRITE_KEY,
        host=w.url,
        sync_mode=True,
        gzip=True,
        on_error=lambda e, batch: errors.append(e),
        max_retries=2,
    )
    # Two devices, anonymous: browsing, a cart on one, a search on the other.
    sdk.page(anonymous_id="dev-a", name="Home")
    sdk.track(anonymous_id="dev-a", event="Product Viewed", properties={"sku": "K-1"})
    sdk.track(anonymous_id="dev-a", event="Product Added", properties={"sku": "K-1"})
    sdk.screen(anonymous_id="dev-b", name="Search", context={"library": {"name": "analytics-android"}})
    sdk.track(anonymous_id="dev-b", event="Products Searched", properties={"query": "kettle"})
    # The login on device a, then the order on device b (the SDK sends both ids).
    sdk.identify(user_id="person-1", anonymous_id="dev-a", traits={"email": "p1@example.com"})
    sdk.track(user_id="person-1", anonymous_id="dev-b", event="Order Completed", properties={"total": 30})
    sdk.flush()
    assert errors == []

    def person() -> dict[str, Any] | None:
        status, body = w.get("/customers/person-1")
        return body if status == 200 and len(body["identity"]["merged_ids"]) == 2 else None

    body = wait_for("the devices merged into the person", person, timeout=60)
    assert body["stage"] == "purchase" and sorted(body["identity"]["merged_ids"]) == ["dev-a", "dev-b"]
    assert body["events"] == 7 and body["first_touch_channel"] == "web"
    assert body["event_counts"]["add_to_cart"] == 1 and body["event_counts"]["identify"] == 1
    status, dev = w.get("/customers/dev-b")
    assert status == 200 and dev["customer_id"] == "person-1" and dev["merged_from"] == "dev-b"

    # Later calls from a device's old anonymous id land on the person.
    sdk.track(anonymous_id="dev-a", event="Product Reviewed", properties={"rating": 5})
    sdk.flush()
    wait_for("the review re-keyed", lambda: w.get("/customers/person-1")[1].get("stage") == "loyalty")
    wait_processed(s, [w])
    assert worker_metric(w, "journey_identities_total", outcome="merged") == 2
    assert sum(worker_metric(w, "journey_customers", stage=st) for st in ("loyalty",)) == 1

    # A wrong write key: 401, which the SDK raises (sync mode) and does not retry.
    bad = Client("not-the-key", host=w.url, sync_mode=True, max_retries=1)
    with pytest.raises(APIError) as refused:
        bad.track(anonymous_id="dev-x", event="Product Viewed")
    assert refused.value.status == 401 and refused.value.code == "unauthorized"
    assert w.get("/customers/dev-x")[0] == 404


def test_the_tracking_api_answers_as_segment_does(spawn: list[WorkerProcess], tmp_path: Path) -> None:
    s = make_settings(tmp_path, partitions=2, map_path=DEMO_MAP, segment_write_key=WRITE_KEY)
    w = start_ready_worker(s, tmp_path, spawn)
    import base64

    auth = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()

    def post(path: str, body: bytes, **headers: str) -> tuple[int, Any]:
        h = {"Content-Type": "application/json", "Authorization": auth, **headers}
        req = urllib.request.Request(w.url + path, data=body, method="POST", headers=h)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, orjson.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, orjson.loads(err.read())

    good = {"type": "track", "event": "Product Added", "messageId": "m-1", "userId": "c-1"}
    bad = {"type": "track", "event": "Rocket Launched", "messageId": "m-2", "userId": "c-2"}
    status, body = post("/v1/batch", orjson.dumps({"batch": [good, bad]}))
    assert status == 200 and body == {"success": True, "accepted": 1, "rejected": 1}
    status, body = post(
        "/v1/track", gzip.compress(orjson.dumps(good | {"messageId": "m-3"})), **{"Content-Encoding": "gzip"}
    )
    assert status == 200 and body["accepted"] == 1
    assert post("/v1/batch", b"{nope")[0] == 400
    assert post("/v1/group", b"{}")[0] == 404
    assert post("/v1/track", orjson.dumps(good | {"properties": {"x": "y" * 40_000}}))[0] == 413
    bomb = gzip.compress(b'{"batch": [' + b" " * 2_000_000 + b"]}")
    status, body = post("/v1/batch", bomb, **{"Content-Encoding": "gzip"})
    assert status == 413 and body["code"] == "too_large"
    assert (
        post("/v1/track", orjson.dumps(good), Authorization="Basic " + base64.b64encode(b"x:").decode())[0]
        == 401
    )
    wait_for("c-1 applied", lambda: w.get("/customers/c-1")[0] == 200)
    wait_processed(s, [w])
    assert w.get("/customers/c-1")[1]["events"] == 2
    dead, _ = dead_letters(s)
    assert [reason for (_, reason) in dead] == ["unknown_type"]
