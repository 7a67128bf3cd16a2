"""Exactly-once on Apache Kafka: one committed list per click across SIGKILLs, states equal a clean replay.

The fault suite in this mode is in tests/chaos/test_faults.py; here the worker's own
pieces: what a read_committed reader sees, the local state dropped after an unclean
stop and kept after a clean one, and the refusal on the embedded broker.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter

import pytest

from stream_app.lab.harness import TopicReader, WorkerProcess, recommendations
from stream_app.settings import Settings
from stream_app.worker.transactions import CLEAN_STOP_MARKER
from tests.integration.helpers import assert_same_states, final_states, reference_states, scenario, send_all


def _eos(settings: Settings) -> Settings:
    return settings.model_copy(update={"worker": settings.worker.model_copy(
        update={"processing_guarantee": "exactly_once"})})


def _phase(settings: Settings, messages: list, expect_total: int, kill: bool) -> tuple[list, str]:
    log = settings.worker.data_dir.parent / f"worker-{expect_total}.log"
    worker = WorkerProcess(settings, log_path=log).start()
    try:
        worker.wait_ready()
        positions = send_all(settings, messages)
        reader = TopicReader(settings, settings.topics.recommendations)  # read_committed under exactly-once
        recs = recommendations(reader.read_until(expect_total, 90, idle_s=1.5))
        reader.close()
        assert {(r.source.partition, r.source.offset) for r in recs} >= set(positions)
    finally:
        worker.kill() if kill else worker.stop()
    time.sleep(0.5)  # the log drain thread
    return positions, log.read_text(errors="replace")


def test_exactly_one_committed_list_per_click_across_kills(settings: Settings) -> None:
    if settings.kafka.embedded:
        pytest.skip("exactly-once needs Apache Kafka (refused on the embedded broker: test_lifecycle.py)")
    s = _eos(settings)
    clicks = scenario(n_users=30, clicks_per_user=12, seed=5)
    a, b, c = clicks[:120], clicks[120:240], clicks[240:]
    positions, _ = _phase(s, a, 120, kill=True)                 # SIGKILL: open transactions are aborted
    tabledir = next(s.worker.data_dir.rglob("tables"), None)
    assert tabledir is not None and not (tabledir.parent / CLEAN_STOP_MARKER).exists()
    more, log_b = _phase(s, b, 240, kill=False)                # restart: local state dropped, rebuilt
    positions += more
    assert "last stop was not clean" in log_b, log_b[-2000:]
    assert (tabledir.parent / CLEAN_STOP_MARKER).exists(), "a clean stop is marked"
    more, log_c = _phase(s, c, 360, kill=False)                # clean restart: RocksDB kept
    positions += more
    assert "last stop was not clean" not in log_c, log_c[-2000:]
    reader = TopicReader(s, s.topics.recommendations)
    recs = recommendations(reader.read_until(360, 30, idle_s=1.0))
    reader.close()
    per_click = Counter((r.source.partition, r.source.offset) for r in recs)
    assert set(per_click) == set(positions)
    assert max(per_click.values()) == 1, f"{sum(n - 1 for n in per_click.values())} duplicated lists"
    assert not any(r.replayed for r in recs)
    assert_same_states(final_states(s), reference_states(s, clicks, positions))


def test_exactly_once_rebuilds_from_the_changelog_alone(settings: Settings) -> None:
    if settings.kafka.embedded:
        pytest.skip("exactly-once needs Apache Kafka")
    s = _eos(settings)
    clicks = scenario(n_users=20, clicks_per_user=10, seed=6)
    positions, _ = _phase(s, clicks[:100], 100, kill=False)
    shutil.rmtree(s.worker.data_dir)  # the changelog ends in commit markers: recovery must still end
    more, _ = _phase(s, clicks[100:], 200, kill=False)
    assert_same_states(final_states(s), reference_states(s, clicks, positions + more))
