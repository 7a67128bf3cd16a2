"""UserState and its versioned bytes codec: what the RocksDB table and its changelog hold per user."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

MAGIC = b"SR"
FORMAT_VERSION = 1
# magic, format, model-version length, hidden floats, recent count, list count,
# last click ts, last partition, last offset, last seen (wall clock)
_HEADER = struct.Struct("<2sBBHBBdiqd")
MAX_MODEL_VERSION_BYTES = 64


class StateDecodeError(ValueError):
    """The bytes are not a UserState this code can read; the caller resets the user."""


@dataclass(frozen=True, slots=True)
class UserState:
    """One user's recurrent state and bookkeeping.

    ``hidden`` is None when the current session has no known click yet (the user
    then gets the popularity list). ``last_partition``/``last_offset`` locate the
    last applied click: the replay guard. ``recent`` are the model indices of the
    last clicked items (newest last), ``served`` the first items of the last list
    sent, kept to score it against the next click (online quality).
    """

    model_version: str
    hidden: np.ndarray | None
    last_ts: float
    last_partition: int
    last_offset: int
    last_seen: float = 0.0
    recent: tuple[int, ...] = ()
    served: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.hidden is not None and (self.hidden.dtype != np.float32 or self.hidden.ndim != 1):
            raise ValueError("hidden must be a 1-D float32 array")


def encode(state: UserState) -> bytes:
    """Bytes with a versioned header; about 150 bytes plus 4 per float and per index."""
    version = state.model_version.encode("utf-8")
    if len(version) > MAX_MODEL_VERSION_BYTES:
        raise ValueError("model version too long")
    hidden = state.hidden if state.hidden is not None else np.zeros(0, dtype=np.float32)
    n_hidden = int(hidden.shape[0])
    has_hidden = state.hidden is not None
    header = _HEADER.pack(
        MAGIC,
        FORMAT_VERSION,
        len(version),
        n_hidden if has_hidden else 0xFFFF,
        len(state.recent),
        len(state.served),
        state.last_ts,
        state.last_partition,
        state.last_offset,
        state.last_seen,
    )
    return b"".join(
        (
            header,
            version,
            hidden.astype("<f4", copy=False).tobytes(),
            np.asarray(state.recent, dtype="<i4").tobytes(),
            np.asarray(state.served, dtype="<i4").tobytes(),
        )
    )


def decode(blob: bytes) -> UserState:
    """Inverse of encode; raises StateDecodeError for anything else (old format, truncation, garbage)."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise StateDecodeError(f"state is {type(blob).__name__}, not bytes")
    blob = bytes(blob)
    if len(blob) < _HEADER.size:
        raise StateDecodeError(f"state is {len(blob)} bytes, shorter than its header")
    magic, fmt, n_version, n_hidden, n_recent, n_served, last_ts, part, offset, seen = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise StateDecodeError("state does not start with the streamrec magic")
    if fmt != FORMAT_VERSION:
        raise StateDecodeError(f"state format {fmt} is not {FORMAT_VERSION}")
    has_hidden = n_hidden != 0xFFFF
    n_floats = n_hidden if has_hidden else 0
    expected = _HEADER.size + n_version + 4 * (n_floats + n_recent + n_served)
    if len(blob) != expected:
        raise StateDecodeError(f"state is {len(blob)} bytes, expected {expected}")
    pos = _HEADER.size
    try:
        version = blob[pos : pos + n_version].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StateDecodeError("model version is not UTF-8") from exc
    pos += n_version
    hidden = np.frombuffer(blob, dtype="<f4", count=n_floats, offset=pos).astype(np.float32)
    pos += 4 * n_floats
    recent = tuple(int(i) for i in np.frombuffer(blob, dtype="<i4", count=n_recent, offset=pos))
    pos += 4 * n_recent
    served = tuple(int(i) for i in np.frombuffer(blob, dtype="<i4", count=n_served, offset=pos))
    return UserState(
        model_version=version,
        hidden=hidden if has_hidden else None,
        last_ts=last_ts,
        last_partition=part,
        last_offset=offset,
        last_seen=seen,
        recent=recent,
        served=served,
    )
