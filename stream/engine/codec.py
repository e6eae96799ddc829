"""The stored format of a customer's table value, with a version.

A value is one orjson object: the customer state's compact fields
(``models.state.state_to_dict``), the source offset ``o`` of the last event
applied (the worker's exact replay guard), and the format version ``v``.
A new field with a default needs no new version, a changed meaning does. Values written before the
version existed (no ``v``) read as version 1: the fields are the same.
"""

from __future__ import annotations

from typing import Final

import orjson

from models.state import CustomerState, state_from_dict, state_to_dict
from stream.errors import StoredFormatError

FORMAT_VERSION: Final = 1


def encode_stored(offset: int, state: CustomerState) -> bytes:
    """A table value: the state, the source offset of the last event applied, the version."""
    d = state_to_dict(state)
    d["o"] = offset
    d["v"] = FORMAT_VERSION
    return orjson.dumps(d)


def decode_stored(raw: bytes) -> tuple[int, CustomerState]:
    """Inverse of :func:`encode_stored`; raises :class:`StoredFormatError` on a value it cannot read."""
    try:
        d = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise StoredFormatError(f"a stored customer value is not JSON: {exc}") from exc
    version = d.get("v", 1) if isinstance(d, dict) else None
    if version != FORMAT_VERSION:
        raise StoredFormatError(
            f"stored customer value has format version {version!r}; this worker reads {FORMAT_VERSION} "
            "(was the table written by a newer release?)"
        )
    try:
        return d["o"], state_from_dict(d)
    except (KeyError, TypeError) as exc:
        raise StoredFormatError(f"stored customer value lacks field {exc}") from exc
