"""The project's one root exception and the core's own errors.

Every error the tracker raises on purpose derives from :class:`JourneyError`,
so callers (the CLI above all) can tell ours from a bug.
"""

from __future__ import annotations


class JourneyError(Exception):
    """Root of every error this project raises on purpose."""


class MapError(JourneyError):
    """A journey map file that cannot be used, with where and why.

    ``str(err)`` reads ``FILE:LINE: problem`` so editors and CI logs link
    straight to the bad line.
    """

    def __init__(self, source: str, line: int | None, problem: str) -> None:
        self.source = source
        self.line = line
        self.problem = problem
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {problem}")
