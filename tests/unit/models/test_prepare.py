"""Raw log preparation: sessionizing, repeats, fixed-point filter, split, formats and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.data import ClickLog, DataError, read_tsv
from models.prepare import Columns, drop_repeats, filter_fixed_point, prepare, read_raw, sessionize


def test_sessionize_by_gap_and_user() -> None:
    key = np.array(["u1", "u1", "u2", "u1", "u1"])
    item = np.array(["a", "b", "c", "d", "e"])
    time = np.array([0.0, 10.0, 5.0, 5000.0, 5010.0])
    log = sessionize(key, item, time, gap=1800)
    assert log.n_sessions == 3
    groups = [log.item[log.session == s].tolist() for s in dict.fromkeys(log.session.tolist())]
    assert groups == [["a", "b"], ["c"], ["d", "e"]]  # ordered by session start time


def test_drop_repeats() -> None:
    log = ClickLog(np.array(["1", "1", "1", "2"]), np.array(["a", "a", "b", "b"]), np.arange(4.0))
    assert drop_repeats(log).item.tolist() == ["a", "b", "b"]


def test_filter_reaches_fixed_point() -> None:
    # item x has support 2 only thanks to session 3; dropping rare y shortens session 3 to one click,
    # which removes it, which drops x below support, which shortens session 1 ...
    rows = [("1", "x"), ("1", "a"), ("2", "a"), ("2", "b"), ("3", "x"), ("3", "y"), ("4", "a"), ("4", "b")]
    log = ClickLog(np.array([r[0] for r in rows]), np.array([r[1] for r in rows]), np.arange(len(rows), dtype=float))
    out = filter_fixed_point(log, min_item_support=2, min_session_length=2)
    assert set(out.item.tolist()) == {"a", "b"}
    assert set(out.session.tolist()) == {"2", "4"}
    # a fixed point: filtering again changes nothing
    assert len(filter_fixed_point(out, 2, 2)) == len(out)
    with pytest.raises(DataError, match="nothing left"):
        filter_fixed_point(log, min_item_support=100)


def _raw_rows(n_users: int = 30) -> list[dict[str, object]]:
    rows = []
    for u in range(n_users):
        for j in range(4):
            rows.append({"uid": f"u{u}", "sku": f"s{(u + j) % 5}", "ts": 1000.0 * u + 60 * j})
    return rows


def test_prepare_csv_end_to_end(tmp_path: Path) -> None:
    raw = tmp_path / "raw.csv"
    raw.write_text("uid,sku,ts\n" + "".join(f"{r['uid']},{r['sku']},{r['ts']}\n" for r in _raw_rows()))
    stats = prepare(str(raw), str(tmp_path / "out"), Columns("uid", "sku", "ts"), min_item_support=2, test_fraction=0.2)
    for name in ("train_full", "test", "train_tr", "train_valid"):
        log = read_tsv(tmp_path / "out" / f"{name}.tsv")
        assert len(log) == stats[name]["clicks"] > 0
    train = read_tsv(tmp_path / "out" / "train_full.tsv")
    test = read_tsv(tmp_path / "out" / "test.tsv")
    assert train.time.max() <= test.time.max()
    assert set(test.item.tolist()) <= set(train.item.tolist())


def test_prepare_jsonl_iso_times_and_session_column(tmp_path: Path) -> None:
    raw = tmp_path / "raw.jsonl"
    lines = [json.dumps({"user": r["uid"], "item": r["sku"], "time": f"2024-01-01T00:{int(r['ts']) // 1000 % 60:02d}:{j % 60:02d}Z",
                         "sess": r["uid"]}) for j, r in enumerate(_raw_rows())]
    raw.write_text("\n".join(lines) + "\n")
    data = read_raw(raw, Columns(session="sess"))
    assert len(data["item"]) == 120 and data["time"].dtype == np.float64
    prepare(str(raw), str(tmp_path / "o"), Columns(session="sess"), min_item_support=1, test_fraction=0.2)
    assert (tmp_path / "o" / "test.tsv").is_file()


def test_raw_errors(tmp_path: Path) -> None:
    p = tmp_path / "r.csv"
    p.write_text("user,item\nu,i\n")
    with pytest.raises(DataError, match="missing column"):
        read_raw(p, Columns())
    p.write_text("")
    with pytest.raises(DataError, match="empty"):
        read_raw(p, Columns())
    p.write_text("user,item,time\n")
    with pytest.raises(DataError, match="no rows"):
        read_raw(p, Columns())
    p.write_text("user,item,time\nu,i,yesterday\n")
    with pytest.raises(DataError, match="parse time"):
        read_raw(p, Columns())
    with pytest.raises(DataError, match="unknown format"):
        read_raw(p, Columns(), fmt="xlsx")
    with pytest.raises(DataError, match="not found"):
        read_raw(tmp_path / "none.csv", Columns())


def test_parquet_needs_pyarrow_or_reads(tmp_path: Path) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        (tmp_path / "x.parquet").write_bytes(b"PAR1")
        with pytest.raises(DataError, match="pyarrow"):
            read_raw(tmp_path / "x.parquet", Columns())
        return
    pq.write_table(pa.table({"user": ["a", "a"], "item": ["x", "y"], "time": [1.0, 2.0]}), tmp_path / "x.parquet")
    assert read_raw(tmp_path / "x.parquet", Columns())["item"].tolist() == ["x", "y"]
