"""The stored format of a customer's table value, with a version.

Version 2 (written since the compact state, CHANGELOG): one MessagePack array ``[2, offset, state]``,
the format version, the source offset of the last event applied (the
worker's exact replay guard) and the customer state as the array of its
fields (``models.state.CustomerState``, a msgspec Struct), the recent event
ids as 8-byte digests. Decoding is typed: a value of the wrong shape is a
:class:`StoredFormatError`, never a half-read state.

Version 1 (before it): one JSON object of short field names with the ids
verbatim, the offset as ``o`` and ``v: 1`` (or no ``v``). It still loads: a
JSON object begins with ``{`` (0x7b), which no version-2 value does (an
array begins with 0x90 to 0x9f or 0xdc), and its ids become digests as it is
read. The next write of that customer stores version 2.

A new state field with a default needs no new version (it goes last); a
changed meaning does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import msgspec
import orjson

from models.state import (
    CustomerState,
    Drift,
    NudgeRef,
    Stall,
    decode_state,
    encode_state,
    id_digest,
    window_add,
)
from stream.errors import StoredFormatError

FORMAT_VERSION: Final = 2


class _Stored(msgspec.Struct, array_like=True, gc=False):
    version: int
    offset: int
    state: CustomerState


_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder(_Stored)


def encode_stored(offset: int, state: CustomerState) -> bytes:
    """A table value: the version, the source offset of the last event applied, the state."""
    return _ENCODER.encode(_Stored(FORMAT_VERSION, offset, state))


def decode_stored(raw: bytes) -> tuple[int, CustomerState]:
    """Inverse of :func:`encode_stored`, and reads version 1 too; raises
    :class:`StoredFormatError` on a value it cannot read."""
    if raw[:1] == b"{":
        return _decode_v1(raw)
    try:
        stored = _DECODER.decode(raw)
    except msgspec.DecodeError as exc:
        version = _version_of(raw)
        if version is not None and version != FORMAT_VERSION:
            raise _unknown_version(version) from exc
        raise StoredFormatError(f"a stored customer value is not readable: {exc}") from exc
    if stored.version != FORMAT_VERSION:
        raise _unknown_version(stored.version)
    return stored.offset, stored.state


def _unknown_version(version: object) -> StoredFormatError:
    return StoredFormatError(
        f"stored customer value has format version {version!r}; this worker reads "
        f"{FORMAT_VERSION} and 1 (was the table written by a newer release?)"
    )


def _version_of(raw: bytes) -> object:
    """The first element of a MessagePack array, if ``raw`` is one."""
    try:
        value = msgspec.msgpack.decode(raw)
    except msgspec.DecodeError:
        return None
    return value[0] if isinstance(value, list) and value else None


def _decode_v1(raw: bytes) -> tuple[int, CustomerState]:
    try:
        d = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise StoredFormatError(f"a stored customer value is not JSON: {exc}") from exc
    version = d.get("v", 1) if isinstance(d, dict) else None
    if version != 1:
        raise _unknown_version(version)
    try:
        return d["o"], state_from_v1(d)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StoredFormatError(f"a version-1 stored customer value is malformed: {exc!r}") from exc


def state_from_v1(d: Mapping[str, Any]) -> CustomerState:
    """A state from a version-1 object of short field names (extra keys ignored)."""
    window = b""
    for event_id in d["r"]:
        window = window_add(window, id_digest(event_id))
    x = d.get("dr")
    drift = None if x is None else Drift(x[0], x[1], x[2], x[3], tuple((n, c, a) for n, c, a in x[4]))
    state = CustomerState(
        customer_id=d["c"],
        stage=d["s"],
        stage_entered_at=d["se"],
        stages=d["st"],
        first_touch_channel=d["fc"],
        first_touch_at=d["fa"],
        last_event_at=d["le"],
        events=d["n"],
        type_counts=d["tc"],
        recent=window,
        stall=Stall(*d["sl"]) if "sl" in d else None,
        drift=drift,
        nudges=tuple(NudgeRef(*n) for n in d["nu"]) if "nu" in d else (),
    )
    # Struct constructors check no types: a round trip through the typed decoder does.
    try:
        return decode_state(encode_state(state))
    except (msgspec.DecodeError, msgspec.EncodeError) as exc:
        raise StoredFormatError(
            f"a version-1 stored customer value has a field of the wrong type: {exc}"
        ) from exc
