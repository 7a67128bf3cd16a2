"""Live user profiles: ``users`` records in, each user's profile in the network's terms out. Pure.

A record on the compacted ``users`` topic is keyed by user id; its value is a
JSON object ``{"attributes": [ids...]}`` (other fields are ignored) or null, a
tombstone: the profile is gone. The rules are the catalogue's
(``decode_keyed_attributes``); docs/input.md#profiles. A session-aware network
trained with profiles (``streamrec longterm``) adds the pooled profile to every
query, so a profile the worker has applied counts from the user's next click;
attributes the network was not trained with are ignored (counted), and for a
network without profile fusion profiles are read and kept but change nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from stream_app.core.catalogue import decode_keyed_attributes

MAX_PROFILE_ATTRIBUTES = 64  # per user, the rest ignored: a profile is a handful of facts, not a history


@dataclass(frozen=True, slots=True)
class ProfileRecord:
    """One validated profile record; ``removed`` for a tombstone."""

    user_id: str
    attributes: tuple[str, ...] = ()
    removed: bool = False


def decode_profile(key: bytes | None, value: bytes | None, *, max_bytes: int) -> ProfileRecord:
    """Validate one ``users`` record; raises InvalidRecord (never anything else) when it is unusable."""
    user_id, names, body = decode_keyed_attributes(key, value, max_bytes=max_bytes, id_field="user_id")
    return ProfileRecord(user_id, (), True) if body is None else ProfileRecord(user_id, names, False)


class Profiles:
    """Users' profiles as padded attribute indices of the network (index 0 = padding, 1.. the vocabulary)."""

    def __init__(self, vocabulary: Sequence[str]) -> None:
        self.index = {a: j + 1 for j, a in enumerate(vocabulary)}
        self.codes: dict[str, np.ndarray] = {}  # user -> (L_u,) int64 indices of known attributes
        self.unknown = 0  # attributes seen that the network was not trained with

    def apply(self, records: Sequence[ProfileRecord]) -> None:
        """Later records win; a tombstone forgets the user."""
        for r in records:
            if r.removed:
                self.codes.pop(r.user_id, None)
                continue
            known = [self.index[a] for a in r.attributes[:MAX_PROFILE_ATTRIBUTES] if a in self.index]
            self.unknown += min(len(r.attributes), MAX_PROFILE_ATTRIBUTES) - len(known)
            self.codes[r.user_id] = np.asarray(known, dtype=np.int64)

    def matrix(self, users: Sequence[str]) -> np.ndarray | None:
        """(B, L) padded indices of the users' profiles; None when none of them has a known attribute."""
        rows = [self.codes.get(u) for u in users]
        width = max((len(r) for r in rows if r is not None), default=0)
        if width == 0:
            return None
        out = np.zeros((len(users), width), dtype=np.int64)
        for i, r in enumerate(rows):
            if r is not None:
                out[i, : len(r)] = r
        return out


__all__ = ["MAX_PROFILE_ATTRIBUTES", "ProfileRecord", "Profiles", "decode_profile"]
