"""UserState and its versioned bytes codec: what the RocksDB table and its changelog hold per user."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

MAGIC = b"SR"
FORMAT_VERSION = 2
# magic, format, model-version length, hidden floats, recent count, list count,
# last click ts, last partition, last offset, last seen (wall clock); format 2 adds the user floats
_HEADER_V1 = struct.Struct("<2sBBHBBdiqd")
_HEADER = struct.Struct("<2sBBHBBdiqdH")
MAX_MODEL_VERSION_BYTES = 64


class StateDecodeError(ValueError):
    """The bytes are not a UserState this code can read; the caller resets the user."""


@dataclass(frozen=True, slots=True)
class UserState:
    """One user's recurrent state and bookkeeping.

    ``hidden`` is None when the current session has no known click yet (the user
    then gets the popularity list). ``user`` is the long-term part (the user-level
    GRU's state for the running session, models/users.py; None for a user with no
    finished session, or a session-only network). ``last_partition``/``last_offset`` locate the
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
    user: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name in ("hidden", "user"):
            v = getattr(self, name)
            if v is not None and (v.dtype != np.float32 or v.ndim != 1):
                raise ValueError(f"{name} must be a 1-D float32 array")


def encode(state: UserState) -> bytes:
    """Bytes with a versioned header; about 150 bytes plus 4 per float and per index (format 2)."""
    version = state.model_version.encode("utf-8")
    if len(version) > MAX_MODEL_VERSION_BYTES:
        raise ValueError("model version too long")
    hidden = state.hidden if state.hidden is not None else np.zeros(0, dtype=np.float32)
    n_hidden = int(hidden.shape[0])
    has_hidden = state.hidden is not None
    user = state.user if state.user is not None else np.zeros(0, dtype=np.float32)
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
        int(user.shape[0]),
    )
    return b"".join(
        (
            header,
            version,
            hidden.astype("<f4", copy=False).tobytes(),
            np.asarray(state.recent, dtype="<i4").tobytes(),
            np.asarray(state.served, dtype="<i4").tobytes(),
            user.astype("<f4", copy=False).tobytes(),
        )
    )


def decode(blob: bytes) -> UserState:
    """Inverse of encode (format 2, and format 1, which has no user part); raises StateDecodeError for
    anything else (unknown format, truncation, garbage)."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise StateDecodeError(f"state is {type(blob).__name__}, not bytes")
    blob = bytes(blob)
    if len(blob) < _HEADER_V1.size:
        raise StateDecodeError(f"state is {len(blob)} bytes, shorter than its header")
    fmt = blob[2]
    if fmt not in (1, FORMAT_VERSION):
        raise StateDecodeError(f"state format {fmt} is not {FORMAT_VERSION} (or 1)")
    header = _HEADER if fmt == FORMAT_VERSION else _HEADER_V1
    if len(blob) < header.size:
        raise StateDecodeError(f"state is {len(blob)} bytes, shorter than its header")
    magic, _, n_version, n_hidden, n_recent, n_served, last_ts, part, offset, seen, *rest = header.unpack_from(blob)
    if magic != MAGIC:
        raise StateDecodeError("state does not start with the streamrec magic")
    n_user = rest[0] if rest else 0
    has_hidden = n_hidden != 0xFFFF
    n_floats = n_hidden if has_hidden else 0
    expected = header.size + n_version + 4 * (n_floats + n_recent + n_served + n_user)
    if len(blob) != expected:
        raise StateDecodeError(f"state is {len(blob)} bytes, expected {expected}")
    pos = header.size
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
    pos += 4 * n_served
    user = np.frombuffer(blob, dtype="<f4", count=n_user, offset=pos).astype(np.float32) if n_user else None
    return UserState(
        model_version=version,
        hidden=hidden if has_hidden else None,
        last_ts=last_ts,
        last_partition=part,
        last_offset=offset,
        last_seen=seen,
        recent=recent,
        served=served,
        user=user,
    )
