"""Hostile HTTP through a real worker: bodies in pieces, deep nesting, bad
headers, the no-token guard, and forwarding that never leaks the token."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.engine.partitioning import key_partition
from stream.settings import Settings
from stream.tools.kafka import ensure_topics, tracker_topics
from tests.integration.harness import WorkerProcess, free_port, make_settings, wait_for

TOKEN = "hostile-token"
NOW_MS = int(time.time() * 1000)


def event(cid: str, eid: str, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": eid,
        "customer_id": cid,
        "type": "page_view",
        "channel": "web",
        "timestamp": NOW_MS - 60_000,
        **extra,
    }


def raw_request(port: int, head: bytes, chunks: list[bytes], pause: float = 0.0) -> tuple[int, bytes]:
    """Send a request by hand, its body in ``chunks`` with ``pause`` between them."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        for c in chunks:
            sock.sendall(c)
            if pause:
                time.sleep(pause)
        data = b""
        while True:
            got = sock.recv(65536)
            if not got:
                break
            data += got
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


@pytest.fixture(scope="module")
def token_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WorkerProcess, Settings]]:
    tmp = tmp_path_factory.mktemp("hostile")
    s = make_settings(tmp, partitions=2, api_token=TOKEN)
    ensure_topics(s, tracker_topics(s))
    worker = WorkerProcess(s, tmp / "worker.log").start()
    worker.wait_ready()
    yield worker, s
    worker.stop()


def big_batch() -> bytes:
    events = [event(f"chunk-{i % 50}", f"chunk-e{i}", properties={"pad": "x" * 1700}) for i in range(500)]
    body = orjson.dumps(events)
    assert 880_000 < len(body) < 1_000_000
    return body


def test_a_body_sent_slowly_in_small_pieces_is_read_whole(
    token_worker: tuple[WorkerProcess, Settings],
) -> None:
    worker, _ = token_worker
    body = big_batch()
    head = (
        f"POST /events HTTP/1.1\r\nHost: 127.0.0.1:{worker.web_port}\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    pieces = [body[i : i + 16_384] for i in range(0, len(body), 16_384)]
    status, answer = raw_request(worker.web_port, head, pieces, pause=0.02)
    assert status == 200, answer[:300]
    got = orjson.loads(answer)
    assert (got["accepted"], got["rejected"]) == (500, 0)


def test_a_chunked_body_is_read_whole(token_worker: tuple[WorkerProcess, Settings]) -> None:
    worker, _ = token_worker
    body = big_batch()
    head = (
        f"POST /events HTTP/1.1\r\nHost: 127.0.0.1:{worker.web_port}\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    ).encode()
    pieces = [body[i : i + 7000] for i in range(0, len(body), 7000)]
    chunks = [f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in pieces] + [b"0\r\n\r\n"]
    status, answer = raw_request(worker.web_port, head, chunks, pause=0.005)
    assert status == 200, answer[:300]
    assert orjson.loads(answer)["accepted"] == 500


def test_deep_nesting_and_bad_headers_get_a_4xx(token_worker: tuple[WorkerProcess, Settings]) -> None:
    worker, _ = token_worker
    json_ct = {"Content-Type": "application/json"}
    deep_array = b"[" * 300 + b"]" * 300
    status, body, _ = worker.request("POST", "/events", deep_array, json_ct)
    assert status < 500, body
    deep_props = json.dumps(event("deep-1", "d1", properties=json.loads(deep_array))).encode()
    status, body, _ = worker.request("POST", "/events", deep_props, json_ct)
    assert status == 200 and body["results"][0]["reason"] == "bad_field", body
    # An Authorization header that is not UTF-8.
    head = (
        f"GET /openapi.json HTTP/1.1\r\nHost: 127.0.0.1:{worker.web_port}\r\n".encode()
        + b"Authorization: Bearer \xff\xfe\xc3(\r\nConnection: close\r\n\r\n"
    )
    status, _ = raw_request(worker.web_port, head, [])
    assert status == 401
    # Ids the store reserves or that carry control characters.
    for bad in ("__faust%00offset__", "a%0Ab", "__faust"):
        assert worker.request("GET", f"/customers/{bad}")[0] == 400
        assert worker.request("DELETE", f"/customers/{bad}", headers=json_ct)[0] == 400


@pytest.fixture(scope="module")
def open_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WorkerProcess, Settings]]:
    tmp = tmp_path_factory.mktemp("open")
    s = make_settings(tmp, partitions=2)
    ensure_topics(s, tracker_topics(s))
    worker = WorkerProcess(s, tmp / "worker.log").start()
    worker.wait_ready()
    yield worker, s
    worker.stop()


def test_without_a_token_cross_site_and_rebinding_requests_are_refused(
    open_worker: tuple[WorkerProcess, Settings],
) -> None:
    worker, _ = open_worker
    body = orjson.dumps(event("xsite-1", "x1"))
    own = f"http://127.0.0.1:{worker.web_port}"
    # A page elsewhere posting text/plain (a "simple" request: no preflight).
    status, got, _ = worker.request(
        "POST", "/events", body, {"Content-Type": "text/plain", "Origin": "http://evil.example"}
    )
    assert (status, got["error"]) == (403, "cross_origin")
    status, got, _ = worker.request("POST", "/events", body, {"Content-Type": "text/plain", "Origin": own})
    assert (status, got["error"]) == (415, "unsupported_media_type")
    # DNS rebinding: a foreign name that resolves to 127.0.0.1.
    for method in ("GET", "DELETE"):
        status, got, _ = worker.request(
            method, "/customers/xsite-1", headers={"Host": f"evil.example:{worker.web_port}"}
        )
        assert (status, got["error"]) == (403, "bad_host")
    # The worker's own page and programs on the host still work.
    status, got, _ = worker.request(
        "POST", "/events", body, {"Content-Type": "application/json", "Origin": own}
    )
    assert status == 200 and got["accepted"] == 1
    assert worker.request("GET", "/health")[0] in (200, 503)


class Sniffer(ThreadingHTTPServer):
    """An HTTP server that records the headers of every request it gets."""

    def __init__(self, port: int) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.seen.append((self.path, dict(self.headers)))
                payload = b'{"worker": "sniffer", "figures": {}, "stage_duration_buckets": {}}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", port), Handler)


def test_forwarding_never_passes_on_the_clients_authorization(
    spawn: list[WorkerProcess], tmp_path: Path
) -> None:
    """Worker b advertises a URL where a sniffer listens: a by-stander, as a
    group member could advertise. What reaches it carries worker a's
    signature, never the client's token; a request forwarded once is never
    forwarded again."""
    s = make_settings(tmp_path, partitions=4, api_token=TOKEN)
    ensure_topics(s, tracker_topics(s))
    sniff_port = free_port()
    sniffer = Sniffer(sniff_port)
    threading.Thread(target=sniffer.serve_forever, daemon=True).start()
    try:
        a = WorkerProcess(s, tmp_path / "worker-a.log").start()
        spawn.append(a)
        a.wait_ready()
        b = WorkerProcess(
            s, tmp_path / "worker-b.log", extra_env={"NODE_CANONICAL_URL": f"http://127.0.0.1:{sniff_port}"}
        ).start()
        spawn.append(b)
        b.wait_ready()

        def b_owns_something() -> list[int] | None:
            h = b.health()
            ha = a.health()
            if not h or not ha or not h.get("partitions") or ha.get("rebalancing") or not ha.get("ready"):
                return None
            return list(h["partitions"])

        owned_by_b = wait_for("b to own partitions and a to be settled", b_owns_something, timeout=120)
        cid = next(f"fw-{i}" for i in range(10_000) if key_partition(f"fw-{i}".encode(), 4) in owned_by_b)
        status, _, _ = a.request("GET", f"/customers/{cid}")
        assert status == 200  # the sniffer's answer, passed through
        status, funnel, _ = a.request("GET", "/funnel")
        assert status == 200, funnel
        paths = [p for p, _ in sniffer.seen]
        assert f"/customers/{cid}" in paths and "/funnel/local" in paths, paths
        for _, headers in sniffer.seen:
            lower = {k.lower(): v for k, v in headers.items()}
            assert "authorization" not in lower, headers
            assert TOKEN not in json.dumps(headers)
            assert lower["x-journey-forwarded"] == "1" and ":" in lower["x-journey-peer"]
        # A request marked as forwarded is answered here or refused, never forwarded again.
        before = len(sniffer.seen)
        status, body, _ = a.request("GET", f"/customers/{cid}", headers={"X-Journey-Forwarded": "1"})
        assert status == 503 and body["error"] == "unavailable"
        assert len(sniffer.seen) == before
        # The signature is good for its own method and path only, and only from a worker.
        _, sig_headers = sniffer.seen[0]
        forged = {k: v for k, v in sig_headers.items() if k.lower().startswith("x-journey")}
        assert a.request("GET", "/openapi.json", headers=forged, auth=False)[0] == 401
    finally:
        sniffer.shutdown()


PATHS = st.one_of(
    st.sampled_from(
        ["/events", "/customers/c1", "/customers/", "/funnel", "/funnel/local", "/map", "/health", "/metrics"]
    ),
    st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="#?"), max_size=30).map(
        lambda t: "/customers/" + t
    ),
    st.binary(min_size=1, max_size=20).map(lambda b: "/customers/" + "".join(f"%{c:02X}" for c in b)),
    st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="#"), max_size=40).map(
        lambda t: "/" + t
    ),
)
METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "FOO"])
HEADER_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
HEADERS = st.dictionaries(
    st.sampled_from(
        [
            "Authorization",
            "Content-Type",
            "Origin",
            "X-Journey-Peer",
            "X-Journey-Forwarded",
            "Accept",
            "Cookie",
        ]
    ),
    HEADER_TEXT | st.sampled_from(["application/json", f"Bearer {TOKEN}", "1", "text/plain; charset=x"]),
    max_size=4,
)


def send_any(port: int, method: str, path: str, headers: dict[str, str], body: bytes) -> int:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        return conn.getresponse().status
    finally:
        conn.close()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=METHODS, path=PATHS, headers=HEADERS, body=st.binary(max_size=200) | st.just(b"[]"))
def test_no_method_path_or_header_gets_a_5xx(
    token_worker: tuple[WorkerProcess, Settings],
    open_worker: tuple[WorkerProcess, Settings],
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
) -> None:
    for worker, _ in (token_worker, open_worker):
        status = send_any(worker.web_port, method, path, headers, body)
        assert status < 500, (worker.settings.api_token is not None, method, path, headers, status)
