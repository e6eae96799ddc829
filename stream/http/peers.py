"""Worker-to-worker requests: how one worker proves itself to another, and
forwards a request at most once.

A worker that forwards a request (``GET /customers/{id}`` to the owner of the
customer's partition, ``GET /funnel/local`` to every peer) never passes on
the client's ``Authorization`` header: a group member can advertise any URL,
and the token must not reach it. Instead it signs the request with a key
derived from ``JOURNEY_API_TOKEN``::

    X-Journey-Peer: <epoch ms>:<hex HMAC-SHA256(key, "METHOD\\npath?query\\n<epoch ms>")>
    X-Journey-Forwarded: 1

where ``key = SHA-256("journey-peer\\0" + token)``. The receiving worker's
token check takes a valid signature, no older or newer than
:data:`MAX_SKEW_MS`, in place of the bearer token, for that method and path
only. The signature reveals nothing of the token, and a captured one is good
for that one read for a minute at most. A request carrying
``X-Journey-Forwarded`` is never forwarded again: a worker that does not own
the customer then answers 503 (the group is rebalancing), so no request
bounces A -> B -> A.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

PEER_HEADER: Final = "X-Journey-Peer"
FORWARDED_HEADER: Final = "X-Journey-Forwarded"
MAX_SKEW_MS: Final = 60_000


def _key(token: str) -> bytes:
    return hashlib.sha256(b"journey-peer\x00" + token.encode()).digest()


def _mac(token: str, method: str, path_qs: str, ts: int) -> str:
    msg = f"{method.upper()}\n{path_qs}\n{ts}".encode("utf-8", "surrogateescape")
    return hmac.new(_key(token), msg, hashlib.sha256).hexdigest()


def peer_headers(token: str | None, method: str, path_qs: str, now_ms: int) -> dict[str, str]:
    """The headers of a forwarded request: the mark that it was forwarded, and
    with a token, the signature that proves the sender is a worker."""
    headers = {FORWARDED_HEADER: "1"}
    if token:
        headers[PEER_HEADER] = f"{now_ms}:{_mac(token, method, path_qs, now_ms)}"
    return headers


def verify_peer(token: str, method: str, path_qs: str, value: str, now_ms: int) -> bool:
    """Whether ``value`` (an ``X-Journey-Peer`` header) signs this request with
    this token, within :data:`MAX_SKEW_MS` of ``now_ms``."""
    stamp, sep, mac = value.partition(":")
    if not sep or not stamp.isdigit() or len(stamp) > 16:
        return False
    ts = int(stamp)
    if abs(now_ms - ts) > MAX_SKEW_MS:
        return False
    return hmac.compare_digest(mac.encode("ascii", "replace"), _mac(token, method, path_qs, ts).encode())
