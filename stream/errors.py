"""Errors of the streaming side, each named for the guard that raises it."""

from __future__ import annotations

from models.errors import JourneyError


class StreamError(JourneyError):
    """The worker or a tool cannot go on (a broker problem, a bad topic...)."""


class TopicMismatch(StreamError):
    """An existing topic does not have the partition count the tracker needs."""


class StoredFormatError(StreamError):
    """A table value this version cannot read (an unknown format version, say)."""


class OffsetWentBackwards(StreamError):
    """A partition handed the worker an offset at or below one it already saw in
    the same fetch: the batch path's ordering guarantee is broken."""

    def __init__(self, topic: str, partition: int, previous: int, offset: int) -> None:
        self.topic, self.partition, self.previous, self.offset = topic, partition, previous, offset
        super().__init__(f"{topic}[{partition}]: offset {offset} came after {previous} in one fetch")


class RecordTooLarge(StreamError):
    """A record does not fit in one producer batch."""


class UnsupportedFaust(StreamError):
    """The installed faust-streaming is outside the versions ``stream.faust`` was built for."""


class DeliveryFailed(StreamError):
    """Messages handed to a producer were not written (the broker refused or stayed away)."""
