"""The similar-users index: vector records, cosine neighbours, removals and a new model's width."""

from __future__ import annotations

import numpy as np
import pytest

from stream_app.core.similar import UserIndex, decode_vector, encode_vector
from stream_app.errors import InvalidRecord


def _rec(user: str, *values: float):  # type: ignore[no-untyped-def]
    return decode_vector(user.encode(), encode_vector(np.array(values, dtype=np.float32)), max_bytes=1000)


def test_neighbours_by_cosine_removal_and_width_change() -> None:
    index = UserIndex()
    index.apply([_rec("a", 1, 0), _rec("b", 2, 0.2), _rec("c", 0, 1), _rec("d", -1, 0)])
    assert [u for u, _ in index.similar("a", 2)] == ["b", "c"]
    assert index.similar("a", 10)[0][1] == pytest.approx(2 / np.hypot(2, 0.2), abs=1e-6)
    assert index.similar("nobody", 3) is None
    index.apply([decode_vector(b"b", None, max_bytes=1000), _rec("e", 1, 0.1)])
    assert [u for u, _ in index.similar("a", 1)] == ["e"] and len(index) == 4
    index.apply([_rec("a", 1, 0, 0)])  # another model's width: the index starts afresh
    assert len(index) == 1 and index.similar("a", 3) == []


@pytest.mark.parametrize("key, value", [(None, b"\x00" * 4), (b"u", b"abc"), (b"u", b""),
                                        (b"u", np.array([np.nan], dtype="<f4").tobytes())])
def test_bad_vector_records_are_refused(key: bytes | None, value: bytes) -> None:
    with pytest.raises(InvalidRecord):
        decode_vector(key, value, max_bytes=1000)
