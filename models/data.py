"""Click logs in, session-parallel mini-batches out.

Two halves:
* ``ClickLog`` + ``read_tsv`` / ``write_tsv``: the GRU4Rec layout
  (``SessionId<TAB>ItemId<TAB>Time``, sorted by session then time) that every
  other command consumes.  Raw logs are turned into it by ``models.prepare``.
* ``Sessions`` + ``session_parallel_epoch``: integer-coded sessions and the
  GRU4Rec mini-batch scheme (B sessions side by side, a slot takes the next
  session when its own ends and its hidden state is reset), precomputed per
  epoch with numpy so the training loop does no Python bookkeeping per step.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class DataError(ValueError):
    """Input data is missing, malformed, unsorted or empty (one class for all data problems)."""


@dataclass
class ClickLog:
    """Clicks as parallel arrays, sorted by session then time. Ids are strings."""

    session: np.ndarray  # (C,) str
    item: np.ndarray  # (C,) str
    time: np.ndarray  # (C,) float64

    def __len__(self) -> int:
        return int(self.item.shape[0])

    @property
    def n_sessions(self) -> int:
        """Number of sessions (runs of equal session id)."""
        return int(len(session_offsets(self.session)) - 1)

    def take(self, mask: np.ndarray) -> "ClickLog":
        """Rows where mask is true (order kept)."""
        return ClickLog(self.session[mask], self.item[mask], self.time[mask])


def session_offsets(session: np.ndarray) -> np.ndarray:
    """Start offsets of runs of equal session ids plus the end: (n_sessions + 1,) int64."""
    n = len(session)
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    change = np.flatnonzero(session[1:] != session[:-1]) + 1
    return np.concatenate([[0], change, [n]]).astype(np.int64)


def check_sorted(log: ClickLog, where: str) -> None:
    """Raise DataError unless each session is one contiguous run with non-decreasing time."""
    off = session_offsets(log.session)
    starts = log.session[off[:-1]]
    if len(np.unique(starts)) != len(starts):
        raise DataError(f"{where}: not sorted by session (a SessionId appears in more than one run)")
    if len(log) > 1:
        same = log.session[1:] == log.session[:-1]
        if np.any(same & (np.diff(log.time) < 0)):
            raise DataError(f"{where}: not sorted by time within a session")


def read_tsv(path: str | os.PathLike[str]) -> ClickLog:
    """Read a GRU4Rec TSV with header SessionId, ItemId, Time (any column order)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file not found: {p}")
    with open(p, newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header is None:
            raise DataError(f"{p}: empty file")
        cols = {name.strip(): i for i, name in enumerate(header)}
        missing = [c for c in ("SessionId", "ItemId", "Time") if c not in cols]
        if missing:
            raise DataError(f"{p}: missing column(s) {missing}; header is {header}")
        si, ii, ti = cols["SessionId"], cols["ItemId"], cols["Time"]
        sess: list[str] = []
        item: list[str] = []
        time: list[str] = []
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                sess.append(row[si])
                item.append(row[ii])
                time.append(row[ti])
            except IndexError:
                raise DataError(f"{p}:{lineno}: expected {len(header)} tab-separated fields, got {len(row)}") from None
    if not sess:
        raise DataError(f"{p}: no clicks (header only)")
    try:
        t = np.asarray(time, dtype=np.float64)
    except ValueError as e:
        raise DataError(f"{p}: Time column is not numeric ({e})") from None
    log = ClickLog(np.asarray(sess), np.asarray(item), t)
    check_sorted(log, str(p))
    return log


def write_tsv(log: ClickLog, path: str | os.PathLike[str]) -> None:
    """Write a GRU4Rec TSV (times written with repr-precision, integers without a fraction)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    integral = bool(np.all(np.mod(log.time, 1) == 0))
    with open(p, "w", newline="") as f:
        f.write("SessionId\tItemId\tTime\n")
        for s, i, t in zip(log.session.tolist(), log.item.tolist(), log.time.tolist()):
            f.write(f"{s}\t{i}\t{int(t) if integral else repr(t)}\n")


# --------------------------------------------------------------------- integer coding
@dataclass
class Sessions:
    """Integer-coded sessions: items (C,) in [0, N) and offsets (n_sessions+1,)."""

    items: np.ndarray  # (C,) int64
    offsets: np.ndarray  # (n_sessions + 1,) int64

    @property
    def n_sessions(self) -> int:
        return int(len(self.offsets) - 1)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)  # (n_sessions,)


@dataclass
class UserLanes:
    """What training the user-level model needs beside ``Sessions`` whose runs are whole users
    (each user's sessions concatenated, oldest first): which clicks start a session (C,) bool and each
    user's padded profile attribute indices (n_users, L) int64 (0 = padding; L may be 0)."""

    starts: np.ndarray  # (C,) bool
    profiles: np.ndarray  # (n_users, L) int64
    profile_attributes: int  # distinct profile attribute ids (indices 1..P)


def build_vocab(log: ClickLog) -> tuple[list[str], np.ndarray]:
    """Item ids in order of first appearance and their click counts (N,)."""
    ids, first, counts = np.unique(log.item, return_index=True, return_counts=True)
    order = np.argsort(first, kind="stable")
    return [str(x) for x in ids[order]], counts[order].astype(np.int64)


def encode(log: ClickLog, item_index: dict[str, int]) -> tuple[Sessions, int]:
    """Map items to indices; clicks on unknown items are dropped (the published protocol).

    Returns the coded sessions (sessions left with < 1 click vanish) and the
    number of dropped clicks.
    """
    idx = np.fromiter((item_index.get(s, -1) for s in log.item.tolist()), dtype=np.int64, count=len(log))
    keep = idx >= 0
    sess = log.session[keep]
    return Sessions(idx[keep], session_offsets(sess)), int((~keep).sum())


def session_parallel_epoch(
    sessions: Sessions, batch_size: int, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All mini-batches of one epoch: inputs (S, B), targets (S, B), keep (S, B) float32 (see
    ``session_parallel_positions``)."""
    pos, keep = session_parallel_positions(sessions, batch_size, rng)
    return sessions.items[pos], sessions.items[pos + 1], keep


def session_parallel_positions(
    sessions: Sessions, batch_size: int, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """All mini-batches of one epoch as click positions: inputs at ``pos`` (S, B), targets at
    ``pos + 1``, keep (S, B) float32.  Positions let a caller look up per-click facts (the
    user-level model needs which clicks start a session, models/users.py).

    ``keep[s, b] == 0`` means slot b starts a new session at step s, so its
    state must be zeroed before the step.  Sessions of length < 2 carry no
    training pair and are skipped.  As in GRU4Rec the epoch ends when a slot
    cannot be refilled (the last few clicks of an epoch are left out);
    ``rng`` shuffles the session order (None keeps file order).
    """
    lengths = sessions.lengths
    usable = np.flatnonzero(lengths >= 2)
    if rng is not None:
        usable = rng.permutation(usable)
    if len(usable) < batch_size:
        raise DataError(f"only {len(usable)} sessions with >= 2 clicks for batch size {batch_size}")
    off = sessions.offsets
    pos = off[usable[:batch_size]].copy()  # (B,) next input position per slot
    end = off[usable[:batch_size] + 1].copy()  # (B,)
    nxt = batch_size
    n_pairs = int((lengths[usable] - 1).sum())
    ins = np.empty((n_pairs // batch_size + 2, batch_size), dtype=np.int64)
    keep = np.ones(ins.shape, dtype=np.float32)
    step = 0
    fresh = np.zeros(batch_size, dtype=bool)
    fresh[:] = True
    while True:
        run = int((end - pos).min()) - 1  # steps every slot can take before one session ends
        # vectorised block of `run` steps
        r = np.arange(run)[:, None]  # (run, 1)
        ins[step:step + run] = pos[None, :] + r
        keep[step, fresh] = 0.0
        fresh[:] = False
        step += run
        pos += run
        done = np.flatnonzero(end - pos <= 1)
        if nxt + len(done) > len(usable):
            break
        new = usable[nxt:nxt + len(done)]
        nxt += len(done)
        pos[done] = off[new]
        end[done] = off[new + 1]
        fresh[done] = True
    return ins[:step], keep[:step]


def split_by_time(log: ClickLog, fraction: float) -> tuple[ClickLog, ClickLog]:
    """Split sessions by their last click time: the latest ``fraction`` of sessions form the second part.

    The second part keeps only items present in the first and sessions with
    >= 2 clicks left (GRU4Rec's protocol), so it can serve as validation/test.
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"split fraction must be in (0, 1), got {fraction}")
    off = session_offsets(log.session)
    if len(off) < 3:
        raise DataError("need at least two sessions to split")
    end_time = log.time[off[1:] - 1]  # (n_sessions,)
    order = np.argsort(end_time, kind="stable")
    n_second = max(1, int(round(fraction * len(order))))
    second_sessions = np.zeros(len(order), dtype=bool)
    second_sessions[order[-n_second:]] = True
    click_second = np.repeat(second_sessions, np.diff(off))  # (C,)
    first, second = log.take(~click_second), log.take(click_second)
    known = np.isin(second.item, np.unique(first.item))
    second = second.take(known)
    so = session_offsets(second.session)
    lens = np.repeat(np.diff(so), np.diff(so))
    second = second.take(lens >= 2)
    if len(first) == 0 or len(second) == 0:
        raise DataError("time split left an empty part; use a different fraction")
    return first, second


__all__ = [
    "ClickLog",
    "DataError",
    "Sessions",
    "UserLanes",
    "build_vocab",
    "check_sorted",
    "encode",
    "read_tsv",
    "session_offsets",
    "session_parallel_epoch",
    "session_parallel_positions",
    "split_by_time",
    "write_tsv",
]
