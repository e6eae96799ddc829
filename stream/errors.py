"""Errors of the streaming side."""

from models.errors import JourneyError


class StreamError(JourneyError):
    """The worker or a tool cannot go on (a broker problem, a bad topic...)."""


class TopicMismatch(StreamError):
    """An existing topic does not have the partition count the tracker needs."""
