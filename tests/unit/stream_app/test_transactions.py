"""Exactly-once's local-state rule: after an unclean stop the RocksDB tables are dropped, after a clean one kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream_app.settings import Settings
from stream_app.worker.transactions import CLEAN_STOP_MARKER, mark_clean_stop, prepare_state_dir


def _tables(root: Path) -> Path:
    tabledir = root / "streamrec-data" / "v1" / "tables"
    (tabledir / "user_state-0.db").mkdir(parents=True)
    (tabledir / "user_state-0.db" / "CURRENT").write_text("x")
    return tabledir


def test_tables_are_dropped_after_an_unclean_stop(tmp_path: Path) -> None:
    tabledir = _tables(tmp_path)
    assert prepare_state_dir(tabledir) is True
    assert not tabledir.exists()


def test_tables_are_kept_after_a_clean_stop_and_the_mark_is_used_once(tmp_path: Path) -> None:
    tabledir = _tables(tmp_path)
    mark_clean_stop(tabledir)
    assert (tabledir.parent / CLEAN_STOP_MARKER).exists()
    assert prepare_state_dir(tabledir) is False
    assert (tabledir / "user_state-0.db" / "CURRENT").exists()
    assert not (tabledir.parent / CLEAN_STOP_MARKER).exists(), "a kill after this start must drop them again"
    assert prepare_state_dir(tabledir) is True


def test_a_fresh_data_dir_has_nothing_to_drop(tmp_path: Path) -> None:
    assert prepare_state_dir(tmp_path / "streamrec-data" / "v1" / "tables") is False


@pytest.mark.parametrize("guarantee,interval", [("at_least_once", 2.8), ("exactly_once", 0.1)])
def test_commit_interval_follows_the_guarantee(guarantee: str, interval: float,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_WORKER__PROCESSING_GUARANTEE", guarantee)
    w = Settings().worker
    assert w.exactly_once is (guarantee == "exactly_once")
    assert w.commit_every_s == interval
    monkeypatch.setenv("STREAMREC_WORKER__COMMIT_INTERVAL_S", "0.5")
    assert Settings().worker.commit_every_s == 0.5
