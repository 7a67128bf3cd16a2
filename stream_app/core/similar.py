"""User vectors from every partition, and the users most like one. Pure: no Faust, no I/O.

A session-aware network's long-term user state (models/users.py) is the user's
behaviour vector. A worker publishes a user's vector to the compacted
``user-vectors`` topic (key user id, value the vector as little-endian float32
bytes; null removes the user) each time it changes, at a session gap; every
worker reads that topic whole, so ``similar`` answers from the users of all
partitions, not only the worker's own. Exact cosine over all users: about
4 x U bytes a user in memory (400 MB per worker at a million users, U = 100).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stream_app.core.catalogue import decode_key
from stream_app.errors import InvalidRecord

MAX_VECTOR_FLOATS = 4096


@dataclass(frozen=True, slots=True)
class VectorRecord:
    """One user's vector; None for a tombstone."""

    user_id: str
    vector: np.ndarray | None


def encode_vector(vector: np.ndarray) -> bytes:
    """The topic's value: little-endian float32."""
    return np.asarray(vector, dtype="<f4").tobytes()


def decode_vector(key: bytes | None, value: bytes | None, *, max_bytes: int) -> VectorRecord:
    """Validate one ``user-vectors`` record; raises InvalidRecord when it is unusable."""
    user_id = decode_key(key, "user")
    if value is None:
        return VectorRecord(user_id, None)
    if len(value) > min(max_bytes, 4 * MAX_VECTOR_FLOATS) or len(value) % 4 or not value:
        raise InvalidRecord("bad_value", f"a vector is 1 to {MAX_VECTOR_FLOATS} float32 values, got {len(value)} bytes")
    vector = np.frombuffer(bytes(value), dtype="<f4").astype(np.float32)
    if not np.isfinite(vector).all():
        raise InvalidRecord("bad_value", "the vector has a non-finite value")
    return VectorRecord(user_id, vector)


class UserIndex:
    """Unit-length user vectors in one growing matrix; removed users' rows are reused."""

    def __init__(self) -> None:
        self._reset(0)

    def _reset(self, width: int) -> None:
        self.rows: dict[str, int] = {}
        self.ids: list[str | None] = []
        self.matrix = np.zeros((0, width), dtype=np.float32)  # (capacity, U)
        self.free: list[int] = []

    def __len__(self) -> int:
        return len(self.rows)

    def apply(self, records: list[VectorRecord]) -> None:
        """Later records win; a vector of another width than the index's (a new model) starts it afresh."""
        for r in records:
            if r.vector is None:
                row = self.rows.pop(r.user_id, None)
                if row is not None:
                    self.matrix[row] = 0.0
                    self.ids[row] = None
                    self.free.append(row)
                continue
            if self.matrix.shape[1] != len(r.vector):
                self._reset(len(r.vector))
            row = self.rows.get(r.user_id)
            if row is None:
                row = self.free.pop() if self.free else self._grow()
                self.rows[r.user_id] = row
                self.ids[row] = r.user_id
            norm = float(np.linalg.norm(r.vector))
            self.matrix[row] = r.vector / norm if norm > 0 else 0.0

    def _grow(self) -> int:
        n = len(self.ids)
        if n == self.matrix.shape[0]:
            bigger = np.zeros((max(16, 2 * n), self.matrix.shape[1]), dtype=np.float32)
            bigger[:n] = self.matrix
            self.matrix = bigger
        self.ids.append(None)
        return n

    def vector(self, user_id: str) -> np.ndarray | None:
        row = self.rows.get(user_id)
        return None if row is None else self.matrix[row].copy()

    def similar(self, user_id: str, k: int) -> list[tuple[str, float]] | None:
        """The ``k`` users with the highest cosine to ``user_id`` (None when the user has no vector)."""
        row = self.rows.get(user_id)
        if row is None:
            return None
        n = len(self.ids)
        sims = self.matrix[:n] @ self.matrix[row]  # (n,)
        sims[row] = -np.inf
        for free in self.free:
            sims[free] = -np.inf
        k = min(k, len(self.rows) - 1)
        if k <= 0:
            return []
        top = np.argpartition(-sims, k - 1)[:k]
        top = top[np.argsort(-sims[top], kind="stable")]
        return [(str(self.ids[j]), float(sims[j])) for j in top]


__all__ = ["MAX_VECTOR_FLOATS", "UserIndex", "VectorRecord", "decode_vector", "encode_vector"]
