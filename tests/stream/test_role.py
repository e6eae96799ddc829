"""Blue/green's role: the active key decides, JOURNEY_ROLE without it, and
a Redis that does not answer changes nothing."""

from __future__ import annotations

import asyncio
from typing import Any

from stream.redis.role import GroupRole, active_key
from stream.settings import Settings


class FakeRedis:
    def __init__(self) -> None:
        self.value: Any = None
        self.down = False

    async def get(self, key: str) -> Any:
        if self.down:
            raise ConnectionError("down")
        return self.value


def test_the_key_decides_and_the_role_without_it() -> None:
    fake = FakeRedis()
    seen: list[bool] = []
    blue = GroupRole(Settings(app_id="blue"), fake)
    green = GroupRole(Settings(app_id="green", role="shadow"), fake)
    blue.listeners.append(seen.append)
    assert blue.active and not green.active and active_key(Settings()) == "journey:active-group"
    for role in (blue, green):
        asyncio.run(role.poll())  # no key: the roles stay
    assert blue.active and not green.active and seen == []
    fake.value = "green"
    for role in (blue, green):
        asyncio.run(role.poll())
    assert not blue.active and green.active and seen == [False]
    assert blue.serving  # demoted just now: still answering /health?active=1 for a moment
    fake.down = True
    asyncio.run(blue.poll())  # Redis down: no change
    assert not blue.active and seen == [False]
    fake.down, fake.value = False, b"blue"
    asyncio.run(blue.poll())
    assert blue.active and seen == [False, True] and blue.to_dict()["active_group"] == "blue"
