"""The faust-streaming releases :mod:`stream.faust` was written against.

Its consumer methods are copies of 0.15's: a new minor release must be read
before it is allowed (``pyproject.toml`` pins the same range).
"""

from __future__ import annotations

from typing import Final

import faust

from stream.errors import UnsupportedFaust

SUPPORTED_FAUST: Final = ((0, 15, 2), (0, 16, 0))


def faust_version() -> tuple[int, int, int]:
    parts = [*faust.__version__.split("+")[0].split("."), "0", "0"][:3]
    major, minor, patch = (int("".join(ch for ch in p if ch.isdigit()) or 0) for p in parts)
    return major, minor, patch


def check_faust_version() -> None:
    low, high = SUPPORTED_FAUST
    if not (low <= faust_version() < high):
        raise UnsupportedFaust(
            f"faust-streaming {faust.__version__} is installed; stream/faust supports "
            f">={'.'.join(map(str, low))},<{'.'.join(map(str, high))}"
        )
