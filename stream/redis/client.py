"""The one Redis client factory: the gate and the serving view both use it."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis


def redis_client(url: str, timeout_s: float) -> Any:
    """A ``redis.asyncio`` client (never blocks the loop) for which a call
    slower than ``timeout_s`` fails: the callers count Redis as down."""
    return aioredis.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, decode_responses=True
    )
