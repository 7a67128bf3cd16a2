"""One error root for streamrec, so callers can catch ours apart from everyone else's.

    StreamrecError
    ├── ConfigError          bad settings, caught at start-up (exit 2)
    ├── BrokerError          the embedded broker would not start / brokers unreachable
    ├── TopicError           a topic is missing or has the wrong partition count
    ├── ModelLoadError       the checkpoint is missing, corrupt or incompatible
    ├── StateDirError        the local state (RocksDB data dir) does not match the changelog
    ├── DatasetError         a data set cannot be found, fetched or read
    └── InvalidRecord        one input record is unusable (dead-lettered with .reason, never raised out of the worker)
        └── InvalidClick     ... a click

Third-party failures are wrapped with ``raise ... from exc``.
"""

from __future__ import annotations


class StreamrecError(Exception):
    """Root of every error streamrec raises on purpose."""


class ConfigError(StreamrecError):
    """A setting is unusable; found before any click is consumed."""


class BrokerError(StreamrecError):
    """No broker could be started or reached."""


class TopicError(StreamrecError):
    """A topic does not exist or does not have the shape the table needs."""


class ModelLoadError(StreamrecError):
    """The model checkpoint cannot serve."""


class StateDirError(StreamrecError):
    """The worker's data dir holds state the changelog topic does not have; found during table recovery."""


class DatasetError(StreamrecError):
    """A data set the demo or a benchmark needs is missing, cannot be fetched or cannot be read."""


class InvalidRecord(StreamrecError):
    """An input record (a click, a catalogue entry) that cannot be applied; ``reason`` is a short label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class InvalidClick(InvalidRecord):
    """A click that cannot be applied."""
