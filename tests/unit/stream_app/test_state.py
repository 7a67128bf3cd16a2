"""State codec: round trip, size budget, and garbage that must be refused (never crash)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from stream_app.core.state import StateDecodeError, UserState, decode, encode


def make(hidden: np.ndarray | None = None) -> UserState:
    return UserState("abc123def456", hidden, 1.5e9, 3, 1234567, 1.6e9, (1, 2, 3), tuple(range(20)))


def test_round_trip_is_exact() -> None:
    h = np.random.default_rng(0).standard_normal(100).astype(np.float32)
    s = make(h)
    back = decode(encode(s))
    assert np.array_equal(back.hidden, h)
    assert (back.model_version, back.last_ts, back.last_partition, back.last_offset) == (
        s.model_version, s.last_ts, s.last_partition, s.last_offset)
    assert back.recent == s.recent and back.served == s.served


def test_no_hidden_round_trips_as_none() -> None:
    assert decode(encode(make(None))).hidden is None


def test_at_most_one_kilobyte_at_hidden_100() -> None:
    blob = encode(make(np.zeros(100, dtype=np.float32)))
    assert len(blob) <= 1024


@pytest.mark.parametrize("blob", [b"", b"xx", b"SR" + b"\x00" * 60, b"\x00" * 200])
def test_garbage_is_refused(blob: bytes) -> None:
    with pytest.raises(StateDecodeError):
        decode(blob)


def test_truncated_is_refused() -> None:
    blob = encode(make(np.ones(8, dtype=np.float32)))
    with pytest.raises(StateDecodeError):
        decode(blob[:-1])


def test_other_format_version_is_refused() -> None:
    blob = bytearray(encode(make(None)))
    blob[2] = 99
    with pytest.raises(StateDecodeError):
        decode(bytes(blob))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_raise_anything_else(blob: bytes) -> None:
    try:
        decode(blob)
    except StateDecodeError:
        pass


def test_user_part_round_trips() -> None:
    u = np.arange(7, dtype=np.float32)
    back = decode(encode(UserState("v", np.ones(3, dtype=np.float32), 1.0, 0, 5, user=u)))
    assert np.array_equal(back.user, u) and np.array_equal(back.hidden, np.ones(3, dtype=np.float32))
    assert decode(encode(make(None))).user is None


def test_format_1_blobs_still_decode_without_a_user_part() -> None:
    """A worker upgraded over a table of format-1 states keeps its users' sessions."""
    import struct

    h = np.ones(4, dtype=np.float32)
    v1 = struct.pack("<2sBBHBBdiqd", b"SR", 1, 1, 4, 1, 0, 2.0, 1, 9, 3.0) + b"v" + h.tobytes() + np.int32(7).tobytes()
    back = decode(v1)
    assert back.user is None and np.array_equal(back.hidden, h) and back.recent == (7,) and back.last_offset == 9
