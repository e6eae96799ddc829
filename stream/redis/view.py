"""The Redis serving view: each customer's stage and headline fields in a
hash, so a web shop reads a visitor's stage in a millisecond without calling
a worker.

Key layout (``JOURNEY_VIEW_PREFIX``, default ``journey:view:``)::

    <prefix><customer_id>   a hash, TTL JOURNEY_VIEW_TTL_S (renewed on each change)
        stage                 the current stage
        stage_entered_at      event time (epoch ms) the stage was entered
        last_event_at         the latest event time seen (epoch ms)
        first_touch_channel   the channel of the first touchpoint
        events                distinct events applied
        stalled_stage         the stage of an open stall, or empty
        drift_score           the drift score (3 decimals), or empty before any
        at_risk               1 while below the risk bar, else 0
        offset                the touchpoints offset of the last record applied
        updated_at            the worker's clock when it was written (epoch ms)

How it is written:

* The agent only puts a customer's new state (or its erasure) into a pending
  map, coalesced per customer: nothing in the batch path waits for Redis.
* A writer task sends what is pending in one pipeline per flush, started
  after each batch when none is running (and by a timer, for retries).
* Each write is one Lua call that replaces the hash only if the stored
  ``offset`` is not newer, so two workers during a rebalance, or a retry
  that comes late, never put an older state over a newer one. An erasure
  deletes the hash (unless a newer journey has already been written).
* Per partition, a mark says up to which touchpoints offset the view is
  complete: the hash ``<prefix>`` itself (customer ids are never empty),
  field = partition number, value = that offset. A worker sets it after a
  flush leaves nothing of the partition waiting.
* A partition's new owner (after a rebalance, a crash, a restart) reads the
  mark and rewrites from its store the customers whose last applied offset
  is past it; no mark (a new deployment, or a Redis that lost its data)
  rewrites them all. The marks are checked again after every outage and
  every ``MARK_CHECK_S``, so a Redis that came back empty is refilled.
* While Redis is down the pending map keeps each customer's latest state, and
  the writer tries again every ``JOURNEY_VIEW_RETRY_S``: the view catches up
  when Redis is back, without a restart. Past ``JOURNEY_VIEW_MAX_PENDING``
  customers the pending map is dropped and the owned partitions are
  rewritten from the store past their marks once Redis answers.
* Entries of a revoked partition leave the pending map: its new owner writes
  them.

Left open: an erasure whose view delete waits for Redis is lost if the
worker dies before Redis is back (the new owner has no state to rewrite and
no record of the delete); the hash then stays until its TTL.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

from redis.exceptions import NoScriptError, RedisError

from models.state import CustomerState
from stream.engine.lifecycle import PartitionListener
from stream.redis.client import redis_client

log = logging.getLogger(__name__)

# The hash's fields, in the order the writer passes their values.
FIELDS = (
    "stage",
    "stage_entered_at",
    "last_event_at",
    "first_touch_channel",
    "events",
    "stalled_stage",
    "drift_score",
    "at_risk",
    "offset",
    "updated_at",
    "map_version",
)

# Many customers per call: KEYS their hashes; ARGV[1] the TTL in ms; ARGV[1 + i]
# KEYS[i]'s record: the offset, then the values of FIELDS, joined by SEP (just
# the offset: delete).
# Each hash is replaced only if its stored offset is not newer. One call per
# few hundred customers: packing a command per customer cost more than the rest.
# Blue/green: how long a newly active worker waits before rewriting the view
# (the other group's workers stop writing within a second of the switch).
REWRITE_AFTER_S = 2.5
SEP = "\x1f"  # never in a value: stage and channel names are [a-z0-9_], the rest digits
_SCRIPT = """
local names = {NAMES}
local ttl = ARGV[1]
local written = 0
for i, key in ipairs(KEYS) do
  local vals = {}
  for v in string.gmatch(ARGV[i + 1] .. '\\31', '([^\\31]*)\\31') do vals[#vals + 1] = v end
  local offset = tonumber(vals[1])
  local cur = redis.call('HGET', key, 'offset')
  if not (cur and tonumber(cur) > offset) then
    redis.call('DEL', key)
    if #vals > 1 then
      local args = {}
      for j, name in ipairs(names) do
        args[2 * j - 1] = name
        args[2 * j] = vals[j + 1]
      end
      redis.call('HSET', key, unpack(args))
      redis.call('PEXPIRE', key, ttl)
    end
    written = written + 1
  end
end
return written
""".replace("NAMES", ", ".join(f"'{f}'" for f in FIELDS))

# Raise a partition's mark, never lower it. KEYS[1] the marks; ARGV partition, offset.
_MARK = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and tonumber(cur) >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

# Customers per pipeline round trip (a flush sends as many as are pending),
# and per script call (Redis runs one call at a time: keep each short).
CHUNK = 2000
PER_CALL = 250
# How often the marks are read again while Redis answers (a Redis that
# restarted empty between two writes is noticed by then).
MARK_CHECK_S = 30.0


def view_values(state: CustomerState, offset: int, now_ms: int) -> list[str]:
    """The hash a customer's state is served as: the values of FIELDS."""
    drift = state.drift
    return [
        state.stage,
        str(state.stage_entered_at),
        str(state.last_event_at),
        state.first_touch_channel,
        str(state.events),
        state.stall.stage if state.stall is not None else "",
        f"{drift.score:.3f}" if drift is not None else "",
        "1" if drift is not None and drift.at_risk else "0",
        str(offset),
        str(now_ms),
        state.map_version,
    ]


@dataclass(frozen=True, slots=True)
class Pending:
    partition: int
    offset: int
    state: CustomerState | None  # None: erased


class ServingView(PartitionListener):
    """Mirrors the customers of the owned partitions into Redis (a lifecycle listener)."""

    def __init__(
        self,
        url: str,
        prefix: str,
        ttl_s: int,
        timeout_s: float,
        *,
        max_pending: int,
        retry_s: float,
        clock: Callable[[], int],
        scan: Callable[[int], Iterable[tuple[int, CustomerState]]],
        on_written: Callable[[int], None] = lambda n: None,
        on_state: Callable[[bool], None] = lambda up: None,
    ) -> None:
        self._redis: Any = redis_client(url, timeout_s)
        self._script = self._redis.register_script(_SCRIPT)
        self._mark_script = self._redis.register_script(_MARK)
        self.prefix = prefix
        self._ttl_ms = str(ttl_s * 1000)
        self._max_pending = max_pending
        self._retry_s = retry_s
        self._clock = clock
        self._scan = scan
        self._on_written = on_written
        self._on_state = on_state
        self.pending: dict[str, Pending] = {}
        self.owned: set[int] = set()
        self.resync: dict[int, int] = {}  # partition -> rewrite customers past this offset (-1: all)
        self._unchecked: set[int] = set()  # ready partitions whose mark was not read yet
        self._through: dict[int, int] = {}  # partition -> highest offset put or rewritten
        self._marked: dict[int, int] = {}  # partition -> the mark as this worker last knew it
        self._checked_at = float("-inf")
        self.up = True
        self._retry_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self.paused = False  # a shadow group's worker writes no view (stream.redis.role)

    def set_active(self, active: bool) -> None:
        """Blue/green: a worker of the active group writes the view; one that
        becomes active rewrites its partitions from the store REWRITE_AFTER_S
        later, once the other group's workers (which read the switch within a
        second) have stopped writing, so its values are the last word. The
        other group's values stay until then: nobody goes missing."""
        if self.paused == (not active):
            return
        self.paused = not active
        self.pending.clear()
        if active:
            asyncio.get_running_loop().call_later(REWRITE_AFTER_S, self._rewrite_all)

    def _rewrite_all(self) -> None:
        if self.paused:
            return
        for p in self.owned:
            self._rewrite_past(p, -1)
        self.kick()

    def key(self, customer_id: str) -> str:
        return f"{self.prefix}{customer_id}"

    def __len__(self) -> int:
        return len(self.pending)

    def put(self, partition: int, customer_id: str, offset: int, state: CustomerState | None) -> None:
        """A customer's latest state (None: erased), to be written soon. An
        alias of a merged id (``models.identity``) is served as erased: the
        customer it was merged into answers for it."""
        if partition not in self.owned or self.paused:
            return
        self.pending[customer_id] = Pending(partition, offset, state)
        if offset > self._through.get(partition, -1):
            self._through[partition] = offset
        if len(self.pending) > self._max_pending:
            log.warning(
                "serving view: more than %d customers wait for Redis; dropping them and rewriting "
                "partitions %s from the store when Redis is back",
                self._max_pending,
                sorted(self.owned),
            )
            self.pending.clear()
            for p in self.owned:
                self._rewrite_past(p, self._marked.get(p, -1))

    def _rewrite_past(self, partition: int, offset: int) -> None:
        """Rewrite the partition's customers applied past ``offset`` (-1: all) from the store."""
        self.resync[partition] = min(self.resync.get(partition, offset), offset)

    def _due(self) -> bool:
        return bool(self._unchecked) or time.monotonic() - self._checked_at > MARK_CHECK_S

    def kick(self) -> None:
        """Start a flush unless one runs, or Redis is down and its retry is not due."""
        if self._task is not None and not self._task.done():
            return
        if not (self.pending or self.resync or (self.owned and self._due())):
            return
        if not self.up and time.monotonic() < self._retry_at:
            return
        self._task = asyncio.ensure_future(self.flush())

    async def flush(self) -> None:
        """Read the marks if due, write everything pending, rewrite what the
        marks say is missing, then raise the marks."""
        if self.paused:
            return
        try:
            if self.owned and self._due():
                await self._check_marks()
            while self.pending:
                batch = dict(islice(self.pending.items(), CHUNK))
                await self._write([(cid, p.offset, p.state) for cid, p in batch.items()])
                for cid, p in batch.items():
                    if self.pending.get(cid) is p:  # not replaced meanwhile
                        del self.pending[cid]
            for partition in sorted(self.resync):
                await self._rewrite(partition)
            await self._raise_marks()
        except (RedisError, OSError) as exc:
            self._down(exc)
            return
        self._set_up()

    async def _check_marks(self) -> None:
        parts = sorted(self.owned)
        marks = await self._redis.hmget(self.prefix, [str(p) for p in parts])
        for p, raw in zip(parts, marks, strict=True):
            mark = int(raw) if raw is not None else None
            if p in self._unchecked:  # newly owned: rewrite what the last owner did not write
                m = mark if mark is not None else -1
                self._rewrite_past(p, m)
                self._marked[p] = m
            elif mark is None or mark < self._marked.get(p, -1):
                log.warning(
                    "serving view: partition %d's mark is %s, this worker wrote %s: Redis lost data; "
                    "rewriting the partition",
                    p,
                    mark,
                    self._marked.get(p),
                )
                self._rewrite_past(p, -1 if mark is None else mark)
                self._marked[p] = -1 if mark is None else mark
        self._unchecked -= set(parts)
        self._checked_at = time.monotonic()

    async def _rewrite(self, partition: int) -> None:
        after = self.resync[partition]
        items: Iterator[tuple[int, CustomerState]] = iter(self._scan(partition))
        written, highest = 0, after
        while partition in self.resync:
            chunk = [(o, s) for o, s in islice(items, CHUNK)]
            if not chunk:
                del self.resync[partition]
                if highest > self._through.get(partition, -1):
                    self._through[partition] = highest
                log.info(
                    "serving view: partition %d rewritten from the store past offset %d (%d customers)",
                    partition,
                    after,
                    written,
                )
                return
            newer = [(s.customer_id, o, s) for o, s in chunk if o > after]
            if newer:
                await self._write(newer)
            written += len(newer)
            highest = max([highest, *(o for o, _ in chunk)])

    async def _raise_marks(self) -> None:
        waiting = {p.partition for p in self.pending.values()}
        for p in sorted(self.owned - waiting - set(self.resync) - self._unchecked):
            through = self._through.get(p)
            if through is not None and through > self._marked.get(p, -1):
                await self._mark_script(keys=[self.prefix], args=[str(p), str(through)])
                self._marked[p] = through

    async def _write(self, items: Sequence[tuple[str, int, CustomerState | None]]) -> None:
        """Guarded writes, PER_CALL customers per script call, the calls in
        one pipeline. EVALSHA goes straight onto the pipeline (redis-py's
        Script adds a SCRIPT EXISTS round trip); a Redis without the script
        (restarted, failed over, ``SCRIPT FLUSH``) gets it loaded and the
        whole chunk sent again: redis-py empties a pipeline once it ran, so
        running it again would send nothing."""
        now = self._clock()
        sha, prefix, join = self._script.sha, self.prefix, SEP.join
        calls: list[tuple[Any, ...]] = []
        for start in range(0, len(items), PER_CALL):
            keys: list[str] = []
            records: list[str] = []
            for cid, offset, state in items[start : start + PER_CALL]:
                keys.append(prefix + cid)
                o = str(offset)
                # an alias of a merged id (models.identity) is served as absent: its customer answers for it
                if state is None or state.merged_into is not None:
                    records.append(o)
                else:
                    records.append(join([o, *view_values(state, offset, now)]))
            calls.append((sha, len(keys), *keys, self._ttl_ms, *records))

        async def send() -> None:
            pipe = self._redis.pipeline(transaction=False)
            for call in calls:
                pipe.evalsha(*call)
            await pipe.execute()

        try:
            await send()
        except NoScriptError:
            await self._redis.script_load(_SCRIPT)
            await send()
        self._on_written(len(items))

    async def erase(self, items: Sequence[tuple[str, int]]) -> None:
        """Delete these customers' hashes now, each unless a newer state (a
        later offset) is there: for the erasure ledger, which retries until
        this returns. Raises ``RedisError`` or ``OSError`` while Redis is down."""
        if items:
            await self._write([(cid, offset, None) for cid, offset in items])

    async def read(self, customer_id: str) -> dict[str, str]:
        """One customer's hash (empty if none): what a shop would read."""
        return dict(await self._redis.hgetall(self.key(customer_id)))

    def _down(self, exc: BaseException) -> None:
        self._retry_at = time.monotonic() + self._retry_s
        self._checked_at = float("-inf")  # read the marks again when it is back
        if self.up:
            log.warning(
                "serving view: Redis is down (%r); %d customers wait, retried every %g s",
                exc,
                len(self.pending),
                self._retry_s,
            )
            self.up = False
            self._on_state(False)

    def _set_up(self) -> None:
        if not self.up:
            log.info("serving view: Redis is back, the view has caught up")
            self.up = True
            self._on_state(True)

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            await asyncio.wait({self._task}, timeout=5)
        await self._redis.aclose()

    # PartitionListener
    def on_partition_recovered(self, partition: int) -> None:
        self.owned.add(partition)
        self._unchecked.add(partition)

    def on_partition_revoked(self, partition: int) -> None:
        self.owned.discard(partition)
        self._unchecked.discard(partition)
        for d in (self.resync, self._through, self._marked):
            d.pop(partition, None)
        for cid in [c for c, p in self.pending.items() if p.partition == partition]:
            del self.pending[cid]
