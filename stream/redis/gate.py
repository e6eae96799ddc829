"""Frequency caps, cooldowns and de-duplication of nudges, atomic in Redis.

One Lua script decides each nudge once, for every worker at once:

* a nudge id already decided gets the same decision back (a replay, a
  restart, a second worker after a rebalance);
* a cooldown key per customer and kind, a rolling window of sends per
  customer (a sorted set) and, if the map sets ``daily_cap``, the sends
  since the local midnight of the customer's zone (the caller passes it)
  cap what goes out: ``capped``;
* otherwise the cooldown and the window record it, and the decision is
  ``sent`` or, for a held-out customer, ``held_out``.

A decision is stored as ``pending:<decision>`` until the worker has produced
the record, then ``done:<decision>``. A pending one found again (the worker
died between the two) is produced again with the same nudge id; consumers
drop repeats by id. Keys (with the configured prefix; ``{customer}`` is a
Redis Cluster hash tag, so one customer's keys share a slot)::

    <prefix>{<customer>}:nudge:<nudge_id>   the decision       (TTL: status_ttl)
    <prefix>{<customer>}:cool:<kind>        cooldown marker    (TTL: the kind's cooldown)
    <prefix>{<customer>}:sent               sorted set of sends (TTL: the cap window)
    <prefix>{<customer>}:keys               the set of the keys above (TTL: the longest of theirs)

Erasure deletes the keys the ``:keys`` set names, and the cooldown and
send-window keys by their exact names (for keys written before the set
existed), in one script call: no ``SCAN``, so an id with glob characters
(``*``, ``?``, ``[``, ``\\``) names only itself, and the cost does not grow
with the keyspace.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from redis.exceptions import RedisError

from stream.errors import StreamError
from stream.redis.client import redis_client

Decision = Literal["sent", "held_out", "capped"]

_SCRIPT = """
local st = redis.call('GET', KEYS[1])
if st then return st end
redis.call('SADD', KEYS[4], KEYS[1], KEYS[2], KEYS[3])
redis.call('PEXPIRE', KEYS[4], math.max(tonumber(ARGV[2]), tonumber(ARGV[4]), tonumber(ARGV[6])))
local now = tonumber(ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('SET', KEYS[1], 'done:capped', 'PX', ARGV[6])
  return 'done:capped'
end
local window = tonumber(ARGV[4])
local day = tonumber(ARGV[8])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. math.min(now - window, day))
if redis.call('ZCOUNT', KEYS[3], '(' .. (now - window), '+inf') >= tonumber(ARGV[3]) then
  redis.call('SET', KEYS[1], 'done:capped', 'PX', ARGV[6])
  return 'done:capped'
end
if tonumber(ARGV[9]) > 0 and redis.call('ZCOUNT', KEYS[3], day, '+inf') >= tonumber(ARGV[9]) then
  redis.call('SET', KEYS[1], 'done:capped', 'PX', ARGV[6])
  return 'done:capped'
end
redis.call('SET', KEYS[2], ARGV[7], 'PX', ARGV[2])
redis.call('ZADD', KEYS[3], now, ARGV[7])
redis.call('PEXPIRE', KEYS[3], math.max(window, now - day + 86400000))
local d = 'pending:sent'
if ARGV[5] == '1' then d = 'pending:held_out' end
redis.call('SET', KEYS[1], d, 'PX', ARGV[6])
return d
"""


# Erase one customer: every key its index names, the given exact names, the index.
_FORGET = """
local ks = redis.call('SMEMBERS', KEYS[1])
for i = 2, #KEYS do ks[#ks + 1] = KEYS[i] end
local n = 0
for i = 1, #ks, 500 do
  n = n + redis.call('DEL', unpack(ks, i, math.min(i + 499, #ks)))
end
return n + redis.call('DEL', KEYS[1])
"""


class GateDown(StreamError):
    """Redis did not answer: the nudge waits and is tried again."""


@dataclass(frozen=True, slots=True)
class Claim:
    decision: Decision
    pending: bool  # True: produce the record, then call done()


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    customer: str
    kind: str
    nudge_id: str
    now_ms: int
    cooldown_s: int
    cap_count: int
    cap_window_s: int
    held_out: bool
    day_start_ms: int = 0  # the local midnight of today in the customer's zone
    daily_cap: int = 0  # 0: none


class NudgeGate:
    """The Redis side of the nudge policy (``redis.asyncio``: never blocks the loop)."""

    def __init__(
        self, url: str, prefix: str, timeout_s: float, status_ttl_s: int, kinds: tuple[str, ...] = ()
    ) -> None:
        self._redis: Any = redis_client(url, timeout_s)
        self._script = self._redis.register_script(_SCRIPT)
        self._forget = self._redis.register_script(_FORGET)
        self._prefix = prefix
        self._ttl_ms = status_ttl_s * 1000
        self._kinds = kinds  # the map's nudge kinds: cooldown keys erasure names exactly

    def _base(self, customer: str) -> str:
        return f"{self._prefix}{{{customer}}}"

    def _keys(self, customer: str, kind: str, nudge_id: str) -> list[str]:
        base = self._base(customer)
        return [f"{base}:nudge:{nudge_id}", f"{base}:cool:{kind}", f"{base}:sent", f"{base}:keys"]

    async def claim_many(self, requests: list[ClaimRequest]) -> list[Claim]:
        """Decide many nudges in one round trip (a pipeline; each script call
        is atomic on its own)."""
        if not requests:
            return []
        try:
            pipe = self._redis.pipeline(transaction=False)
            for r in requests:
                args: list[int | str] = [
                    r.now_ms,
                    r.cooldown_s * 1000,
                    r.cap_count,
                    r.cap_window_s * 1000,
                    int(r.held_out),
                    self._ttl_ms,
                    r.nudge_id,
                    r.day_start_ms or r.now_ms,
                    r.daily_cap,
                ]
                await self._script(keys=self._keys(r.customer, r.kind, r.nudge_id), args=args, client=pipe)
            raw = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise GateDown(f"redis: {exc!r}") from exc
        out = []
        for value in raw:
            state, _, decision = str(value).partition(":")
            out.append(Claim(decision, state == "pending"))  # type: ignore[arg-type]
        return out

    async def done_many(self, items: list[tuple[str, str, str, Decision]]) -> None:
        """Record (customer, kind, nudge id, decision) as produced, many in one round trip."""
        if not items:
            return
        try:
            pipe = self._redis.pipeline(transaction=False)
            for customer, kind, nudge_id, decision in items:
                pipe.set(self._keys(customer, kind, nudge_id)[0], f"done:{decision}", xx=True, keepttl=True)
            await pipe.execute()
        except (RedisError, OSError) as exc:
            raise GateDown(f"redis: {exc!r}") from exc

    async def forget_customers(self, customers: list[str]) -> None:
        """Remove every key of these customers (erasure): one script call each,
        all in one round trip."""
        if not customers:
            return
        try:
            pipe = self._redis.pipeline(transaction=False)
            for customer in customers:
                base = self._base(customer)
                exact = [f"{base}:sent", *(f"{base}:cool:{k}" for k in self._kinds)]
                await self._forget(keys=[f"{base}:keys", *exact], client=pipe)
            await pipe.execute()
        except (RedisError, OSError) as exc:
            raise GateDown(f"redis: {exc!r}") from exc

    async def close(self) -> None:
        await self._redis.aclose()
