"""TSV reading, integer coding, the session-parallel scheme and the time split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.data import ClickLog, DataError, Sessions, build_vocab, encode, read_tsv, session_parallel_epoch, split_by_time, write_tsv

from .conftest import write_tsv as write_rows


def test_read_and_write_round_trip(tmp_path: Path) -> None:
    p = write_rows(tmp_path / "a.tsv", [(1, "x", 0.5), (1, "y", 1.5), (2, "x", 2)])
    log = read_tsv(p)
    assert len(log) == 3 and log.n_sessions == 2
    assert log.item.tolist() == ["x", "y", "x"]
    write_tsv(log, tmp_path / "b.tsv")
    again = read_tsv(tmp_path / "b.tsv")
    assert again.item.tolist() == log.item.tolist() and np.allclose(again.time, log.time)


def test_read_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_tsv(tmp_path / "missing.tsv")
    (tmp_path / "e.tsv").write_text("")
    with pytest.raises(DataError, match="empty"):
        read_tsv(tmp_path / "e.tsv")
    (tmp_path / "h.tsv").write_text("SessionId\tItemId\tTime\n")
    with pytest.raises(DataError, match="no clicks"):
        read_tsv(tmp_path / "h.tsv")
    (tmp_path / "c.tsv").write_text("SessionId\tItem\tTime\n1\t2\t3\n")
    with pytest.raises(DataError, match="missing column"):
        read_tsv(tmp_path / "c.tsv")
    p = write_rows(tmp_path / "u.tsv", [(1, "a", 0), (2, "b", 1), (1, "c", 2)])
    with pytest.raises(DataError, match="not sorted by session"):
        read_tsv(p)
    p = write_rows(tmp_path / "t.tsv", [(1, "a", 5), (1, "b", 1)])
    with pytest.raises(DataError, match="time"):
        read_tsv(p)


def test_vocab_and_encode_drop_unknown() -> None:
    log = ClickLog(np.array(["1", "1", "2", "2"]), np.array(["b", "a", "b", "z"]), np.arange(4.0))
    ids, counts = build_vocab(log)
    assert ids == ["b", "a", "z"] and counts.tolist() == [2, 1, 1]
    sessions, dropped = encode(log, {"a": 0, "b": 1})
    assert dropped == 1
    assert sessions.items.tolist() == [1, 0, 1] and sessions.offsets.tolist() == [0, 2, 3]


def test_session_parallel_epoch_pairs_and_resets() -> None:
    lens = [3, 2, 5, 1, 4, 2, 3]
    items = np.arange(sum(lens))  # item = position: pairs must be (p, p+1) within a session
    off = np.concatenate([[0], np.cumsum(lens)])
    ins, outs, keep = session_parallel_epoch(Sessions(items, off), 2)
    assert ins.shape == outs.shape == keep.shape and ins.shape[1] == 2
    starts = set(off[:-1].tolist())
    for s in range(len(ins)):
        for b in range(2):
            assert outs[s, b] == ins[s, b] + 1
            assert (keep[s, b] == 0) == (ins[s, b] in starts)
    # every pair appears at most once, sessions of length 1 never appear
    pairs = list(zip(ins.ravel().tolist(), outs.ravel().tolist()))
    assert len(pairs) == len(set(pairs))
    assert 10 not in ins  # the single-click session (position 10)


def test_session_parallel_epoch_shuffle_is_seeded() -> None:
    off = np.arange(0, 61, 3)
    sessions = Sessions(np.arange(60), off)
    a = session_parallel_epoch(sessions, 4, np.random.default_rng(1))
    b = session_parallel_epoch(sessions, 4, np.random.default_rng(1))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    with pytest.raises(DataError):
        session_parallel_epoch(Sessions(np.arange(4), np.array([0, 2, 4])), 3)


def test_split_by_time() -> None:
    rows = []
    for s in range(10):
        for j in range(3):
            rows.append((str(s), f"i{(s + j) % 4}" if s < 8 else ("new" if j == 0 else f"i{j}"), float(s * 10 + j)))
    log = ClickLog(*(np.array(c) for c in zip(*rows)))
    log.time = log.time.astype(float)
    first, second = split_by_time(log, 0.2)
    assert set(first.session.tolist()) == {str(s) for s in range(8)}
    assert "new" not in second.item.tolist()  # unknown items removed from the later part
    assert set(second.session.tolist()) == {"8", "9"} and len(second) == 4
    with pytest.raises(DataError):
        split_by_time(log, 1.5)
