"""A restarted worker continues every user's state exactly: from RocksDB, after SIGKILL, and from the changelog."""

from __future__ import annotations

import shutil

from stream_app.lab.harness import TopicReader, WorkerProcess, recommendations
from stream_app.settings import Settings
from tests.integration.helpers import assert_same_states, final_states, reference_states, scenario, send_all


def _phase(settings: Settings, messages: list, expect_total: int, kill: bool = False) -> list:
    worker = WorkerProcess(settings).start()
    try:
        worker.wait_ready()
        positions = send_all(settings, messages)
        reader = TopicReader(settings, settings.topics.recommendations)
        recs = recommendations(reader.read_until(expect_total, 90, idle_s=1))
        reader.close()
        assert {(r.source.partition, r.source.offset) for r in recs} >= set(positions)
    finally:
        worker.kill() if kill else worker.stop()
    return positions


def test_restart_sigkill_and_rebuild_keep_state(settings: Settings) -> None:
    clicks = scenario(n_users=30, clicks_per_user=12, seed=3)
    a, b, c = clicks[:120], clicks[120:240], clicks[240:]
    positions = _phase(settings, a, 120)                      # graceful stop: state in RocksDB
    positions += _phase(settings, b, 240, kill=True)          # SIGKILL: restart from RocksDB + changelog
    shutil.rmtree(settings.worker.data_dir)                   # data dir gone: full rebuild from the changelog
    positions += _phase(settings, c, 360)
    assert_same_states(final_states(settings), reference_states(settings, clicks, positions))


def test_start_up_fails_fast_on_missing_model(settings: Settings, tmp_path) -> None:
    bad = settings.model_copy(update={"model": settings.model.model_copy(update={"path": tmp_path / "nope.pt"})})
    worker = WorkerProcess(bad).start()
    assert worker.proc.wait(60) != 0
    assert any("not found" in line for line in worker.tail)


def test_start_up_fails_fast_on_wrong_partition_count(settings: Settings) -> None:
    bad = settings.model_copy(update={"topics": settings.topics.model_copy(update={"partitions": 3})})
    worker = WorkerProcess(bad).start()
    assert worker.proc.wait(60) != 0
    assert any("partitions" in line for line in worker.tail)
