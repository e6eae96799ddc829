"""Repeated log lines, once per interval with a count.

A broker outage makes aiokafka log "Unable connect to node" and "Failed
fetch messages" every few milliseconds: about 290,000 lines in 95 seconds
(measured on the local stack). :class:`RepeatFilter` lets the first line of
a kind through, holds back the same kind (the same logger, level and
message template) for ``interval_s``, and then lets the next one through
with how many it held back. Lines below WARNING pass untouched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

# Kinds remembered at most: a flood of distinct templates cannot grow memory.
MAX_KINDS = 1000


class RepeatFilter(logging.Filter):
    """Lets a repeated warning or error through once per ``interval_s``, with a count."""

    def __init__(self, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._clock = clock
        self._kinds: dict[tuple[str, int, str], tuple[float, int]] = {}  # kind -> (last let through, held)

    def filter(self, record: logging.LogRecord) -> bool:
        # Decided once per record: every handler the filter sits on gets the same answer.
        decided = record.__dict__.get("_repeat_pass")
        if decided is not None:
            return bool(decided)
        ok = self._decide(record)
        record.__dict__["_repeat_pass"] = ok
        return ok

    def _decide(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        kind = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        seen = self._kinds.get(kind)
        if seen is not None and now - seen[0] < self.interval_s:
            self._kinds[kind] = (seen[0], seen[1] + 1)
            return False
        if seen is None and len(self._kinds) >= MAX_KINDS:
            self._kinds.clear()
        self._kinds[kind] = (now, 0)
        if seen is not None and seen[1]:
            # Appended to the template, with the figures as arguments: the
            # message itself is formatted by the handler as usual.
            args = record.args
            if not args:
                record.msg = f"{str(record.msg).replace('%', '%%')} [%d more like this in the last %.0f s]"
                record.args = (seen[1], now - seen[0])
            elif isinstance(args, tuple):
                record.msg = f"{record.msg} [%d more like this in the last %.0f s]"
                record.args = (*args, seen[1], now - seen[0])
        return True


def install(interval_s: float = 10.0) -> RepeatFilter:
    """Put one filter on every handler of the root logger."""
    f = RepeatFilter(interval_s)
    for handler in logging.getLogger().handlers:
        handler.addFilter(f)
    return f
