"""Raw click logs (CSV, JSON lines, Parquet) -> cleaned, time-split GRU4Rec TSVs.

Steps, in order: read (column names configurable) -> sessionize by an
inactivity gap per user (unless a session column is given) -> optionally drop
consecutive repeats -> filter rare items and short sessions, repeated until
nothing changes (removing an item can shorten a session below the minimum and
vice versa) -> time split into train_full/test and train_tr/train_valid.
Every data problem raises ``DataError`` with a one-line message.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from models.data import ClickLog, DataError, session_offsets, split_by_time, write_tsv


@dataclass
class Columns:
    """Names of the raw log's columns; ``session`` is optional (None: sessionize by gap)."""

    user: str = "user"
    item: str = "item"
    time: str = "time"
    session: str | None = None


def _parse_time(values: list[Any], where: str) -> np.ndarray:
    """Numbers (Unix seconds or any ordinal) or ISO-8601 strings -> float seconds (C,)."""
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        pass
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            try:
                out[i] = datetime.fromisoformat(str(v).replace("Z", "+00:00")).timestamp()
            except ValueError:
                raise DataError(f"{where}: cannot parse time value {v!r} (row {i + 1}); use numbers or ISO-8601") from None
    return out


def read_raw(path: str | os.PathLike[str], cols: Columns, fmt: str | None = None, delimiter: str | None = None) -> dict[str, np.ndarray]:
    """Read the needed columns of a raw log; format from ``fmt`` or the file extension.

    Returns arrays "user" (or "session"), "item" as strings and "time" as float.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"input not found: {p}")
    kind = (fmt or p.suffix.lstrip(".")).lower()
    need = [cols.item, cols.time] + ([cols.session] if cols.session else [cols.user])
    rows: dict[str, list[Any]] = {c: [] for c in need}
    if kind in ("csv", "tsv", "txt"):
        delim = delimiter or ("\t" if kind == "tsv" else ",")
        with open(p, newline="") as f:
            reader = csv.DictReader(f, delimiter=delim)
            if reader.fieldnames is None:
                raise DataError(f"{p}: empty file")
            missing = [c for c in need if c not in reader.fieldnames]
            if missing:
                raise DataError(f"{p}: missing column(s) {missing}; found {reader.fieldnames}")
            for r in reader:
                for c in need:
                    rows[c].append(r[c])
    elif kind in ("jsonl", "json", "ndjson"):
        with open(p) as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{p}:{lineno}: not JSON ({e.msg})") from None
                missing = [c for c in need if c not in obj]
                if missing:
                    raise DataError(f"{p}:{lineno}: missing field(s) {missing}")
                for c in need:
                    rows[c].append(obj[c])
    elif kind == "parquet":
        try:
            import pyarrow.parquet as pq  # optional dependency
        except ImportError:
            raise DataError("reading Parquet needs pyarrow, which is not installed (pip install pyarrow)") from None
        table = pq.read_table(p)
        missing = [c for c in need if c not in table.column_names]
        if missing:
            raise DataError(f"{p}: missing column(s) {missing}; found {table.column_names}")
        for c in need:
            rows[c] = table.column(c).to_pylist()
    else:
        raise DataError(f"{p}: unknown format {kind!r}; use csv, tsv, jsonl or parquet (--format)")
    if not rows[cols.item]:
        raise DataError(f"{p}: no rows")
    key = cols.session if cols.session else cols.user
    return {
        "key": np.asarray([str(v) for v in rows[key]]),
        "item": np.asarray([str(v) for v in rows[cols.item]]),
        "time": _parse_time(rows[cols.time], str(p)),
    }


def gap_cuts(key: np.ndarray, time: np.ndarray, gap: float | None) -> tuple[np.ndarray, np.ndarray]:
    """The order by (key, time) (stable) and, in that order, where a session starts (C,) bool: where
    the key changes or, with ``gap``, the time since the key's previous click exceeds it."""
    order = np.lexsort((time, key))  # by key, then time (stable)
    k, t = key[order], time[order]
    new = np.ones(len(k), dtype=bool)
    new[1:] = k[1:] != k[:-1]
    if gap is not None:
        new[1:] |= np.diff(t) > gap
    return order, new


def sessionize(key: np.ndarray, item: np.ndarray, time: np.ndarray, gap: float | None) -> ClickLog:
    """Sort by (key, time) and cut a new session wherever the key changes or the gap exceeds ``gap`` seconds.

    With ``gap=None`` the key itself is the session (a given session column).
    Session ids are consecutive integers in order of session start.
    """
    if len(item) == 0:
        raise DataError("no clicks to sessionize")
    order, new = gap_cuts(key, time, gap)
    it, t = item[order], time[order]
    sid = np.cumsum(new) - 1  # (C,)
    # renumber sessions by start time so ids follow time
    starts = np.flatnonzero(new)
    rank = np.empty(len(starts), dtype=np.int64)
    rank[np.argsort(t[starts], kind="stable")] = np.arange(len(starts))
    sid = rank[sid]
    order2 = np.lexsort((t, sid))
    return ClickLog(sid[order2].astype(str), it[order2], t[order2])


def drop_repeats(log: ClickLog) -> ClickLog:
    """Remove a click that repeats the previous click's item in the same session."""
    rep = np.zeros(len(log), dtype=bool)
    rep[1:] = (log.item[1:] == log.item[:-1]) & (log.session[1:] == log.session[:-1])
    return log.take(~rep)


def filter_fixed_point(log: ClickLog, min_item_support: int = 5, min_session_length: int = 2) -> ClickLog:
    """Drop items with < min_item_support clicks and sessions with < min_session_length, until stable."""
    while True:
        n = len(log)
        _, inv, cnt = np.unique(log.item, return_inverse=True, return_counts=True)
        log = log.take(cnt[inv] >= min_item_support)
        off = session_offsets(log.session)
        lens = np.repeat(np.diff(off), np.diff(off))
        log = log.take(lens >= min_session_length)
        if len(log) == n:
            break
    if len(log) == 0:
        raise DataError(
            f"nothing left after filtering (min item support {min_item_support}, min session length {min_session_length})"
        )
    return log


def prepare(
    input_path: str,
    out_dir: str,
    cols: Columns,
    fmt: str | None = None,
    gap: float = 1800.0,
    repeats: bool = True,
    min_item_support: int = 5,
    min_session_length: int = 2,
    test_fraction: float = 0.1,
    valid_fraction: float = 0.1,
    delimiter: str | None = None,
) -> dict[str, Any]:
    """Full pipeline; writes train_full/test/train_tr/train_valid.tsv into out_dir and returns counts.

    ``repeats=False`` drops consecutive repeated clicks.  The test part is the
    latest ``test_fraction`` of sessions by end time; validation is cut the
    same way from the remaining training part (for tuning without the test).
    """
    raw = read_raw(input_path, cols, fmt, delimiter)
    log = sessionize(raw["key"], raw["item"], raw["time"], None if cols.session else gap)
    if not repeats:
        log = drop_repeats(log)
    log = filter_fixed_point(log, min_item_support, min_session_length)
    train, test = split_by_time(log, test_fraction)
    tr, va = split_by_time(train, valid_fraction)
    out = Path(out_dir)
    stats: dict[str, Any] = {}
    for name, part in (("train_full", train), ("test", test), ("train_tr", tr), ("train_valid", va)):
        write_tsv(part, out / f"{name}.tsv")
        stats[name] = {"clicks": len(part), "sessions": part.n_sessions, "items": int(len(np.unique(part.item)))}
    return stats


__all__ = ["Columns", "drop_repeats", "filter_fixed_point", "prepare", "read_raw", "sessionize"]
