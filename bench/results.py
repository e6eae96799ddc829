"""Each bench run appends what it printed to ``bench/RESULTS.md``, dated, with the commit.

The README keeps today's figures; this file keeps the history, so figures
are compared across runs without editing the README after each one.
``--no-record`` (or ``JOURNEY_BENCH_RECORD=0``) leaves the file alone.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

RESULTS = Path(__file__).resolve().with_name("RESULTS.md")


class _Tee(io.TextIOBase):
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.lines = io.StringIO()

    def write(self, text: str) -> int:
        self.lines.write(text)
        return self.out.write(text)

    def flush(self) -> None:
        self.out.flush()


def _commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=RESULTS.parent,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], capture_output=True, text=True, cwd=RESULTS.parent
        )
        return head + ("+changes" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@contextlib.contextmanager
def recorded(bench: str) -> Iterator[None]:
    """Run a bench's main, printing as usual; on success append its output to RESULTS.md."""
    record = "--no-record" not in sys.argv and os.environ.get("JOURNEY_BENCH_RECORD", "1") != "0"
    if "--no-record" in sys.argv:
        sys.argv.remove("--no-record")
    tee = _Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        yield
    if not record:
        return
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    args = " ".join(sys.argv[1:])
    body = "\n".join(f"    {line}" for line in tee.lines.getvalue().rstrip().splitlines())
    with RESULTS.open("a", encoding="utf-8") as f:
        f.write(f"\n### {when}: `{bench}.py{' ' + args if args else ''}` at {_commit()}\n\n{body}\n")
