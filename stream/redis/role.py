"""Blue/green: which tracker group is the active one.

Two groups (two app ids, ``JOURNEY_APP_ID``) may read one touchpoints topic,
each with its own table: the live one and a shadow running a new map from
the start of the retained log (README "Blue/green"). One Redis key,
``<JOURNEY_REDIS_PREFIX>active-group``, names the active group;
``journey promote APP_ID`` sets it. Without the key a worker's
``JOURNEY_ROLE`` says (``active``, the default, or ``shadow``).

Every worker reads the key each second (:meth:`GroupRole.poll`). The
active group's workers write the serving view, export the stage gauge as
``journey_customers`` and send nudges through the gate; a shadow's write no
view, export ``journey_shadow_customers`` and send no nudge (its decisions
stay in its table). A worker that becomes active rewrites the view from
its table and puts its open nudges back in the outbox; the values the other
group wrote stay until rewritten, so no customer is ever missing from the
view. While Redis does not answer, a worker keeps the role it had.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from stream.redis.client import redis_client
from stream.settings import Settings

log = logging.getLogger(__name__)

# How long a demoted worker still answers ready on /health?active=1: longer
# than the one-second poll, so a load balancer always has a group to send
# API calls to while the other group's workers notice the switch.
SERVE_GRACE_S = 3.0


def active_key(settings: Settings) -> str:
    return f"{settings.redis_prefix}active-group"


class GroupRole:
    """This worker's group, and whether it is the active one."""

    def __init__(self, settings: Settings, redis: Any = None) -> None:
        self.app_id = settings.app_id
        self.key = active_key(settings)
        self.default_active = settings.role == "active"
        self.active = self.default_active
        self.active_group: str | None = None  # what the key says (None: no key)
        self._demoted_at = float("-inf")
        self.listeners: list[Callable[[bool], None]] = []
        self._redis = (
            redis if redis is not None else redis_client(settings.redis_url, settings.redis_timeout_s)
        )

    @property
    def serving(self) -> bool:
        """Whether /health?active=1 answers ready: active, or demoted less than SERVE_GRACE_S ago."""
        return self.active or time.monotonic() - self._demoted_at < SERVE_GRACE_S

    def to_dict(self) -> dict[str, Any]:
        return {
            "app_id": self.app_id,
            "active": self.active,
            "active_group": self.active_group,
            "role_without_key": "active" if self.default_active else "shadow",
        }

    async def poll(self) -> None:
        """Read the key; tell the listeners if the role changed."""
        try:
            value = await self._redis.get(self.key)
        except Exception as exc:  # Redis down: keep the role we had
            log.debug("reading %s failed: %r", self.key, exc)
            return
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        self.active_group = value or None
        active = self.active_group == self.app_id if self.active_group is not None else self.default_active
        if active == self.active:
            return
        self.active = active
        if not active:
            self._demoted_at = time.monotonic()
        log.warning(
            "group %s is now %s (%s names %s)",
            self.app_id,
            "ACTIVE: writing the view, the stage gauge and nudges"
            if active
            else "a SHADOW: no view, no nudges",
            self.key,
            self.active_group or "no group",
        )
        for listener in self.listeners:
            try:
                listener(active)
            except Exception:  # one part failing to switch never stops the worker
                log.exception("switching %r to %s failed", listener, "active" if active else "shadow")

    async def close(self) -> None:
        await self._redis.aclose()
