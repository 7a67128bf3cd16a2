"""Start-up refusals, a bounded SIGTERM, and idle users expiring for good (state TTL)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from stream_app.brokers.embedded import EmbeddedBroker
from stream_app.brokers.process import free_port
from stream_app.lab.harness import TopicReader, WorkerProcess, http_get, parse_metrics, recommendations
from stream_app.settings import Settings
from stream_app.worker.topics import ensure_topics
from tests.integration.helpers import (
    assert_same_states, click, delivery, final_states, reference_states, scenario, send_all,
)


def _with(settings: Settings, group: str, **changes: object) -> Settings:
    return settings.model_copy(update={group: getattr(settings, group).model_copy(update=changes)})


def _refused(settings: Settings, needle: str) -> list[str]:
    """Start a worker that must refuse: non-zero exit, one error line naming ``needle``, no click consumed."""
    send_all(settings, [click("early", "i1", 100.0)])
    worker = WorkerProcess(settings).start()
    assert worker.proc is not None
    assert worker.proc.wait(60) != 0
    time.sleep(0.2)  # the log drain thread
    errors = [line for line in worker.tail if "error" in line.lower()]
    assert len(errors) == 1 and needle in errors[0], list(worker.tail)
    assert not any("Traceback" in line for line in worker.tail), list(worker.tail)
    reader = TopicReader(settings, settings.topics.recommendations)
    assert reader.read_until(1, timeout_s=2) == [], "no click may be consumed by a worker that refuses to start"
    reader.close()
    return errors


def test_start_up_refuses_a_corrupt_checkpoint(settings: Settings, tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(Path(settings.model.path).read_bytes()[:300])  # truncated
    _refused(_with(settings, "model", path=bad), "cannot be used")


def test_start_up_refuses_an_incompatible_checkpoint(settings: Settings, tmp_path: Path) -> None:
    data = torch.load(settings.model.path, weights_only=True)
    data["format_version"] = 999
    bad = tmp_path / "future.pt"
    torch.save(data, bad)
    _refused(_with(settings, "model", path=bad), "format_version")
    data = torch.load(settings.model.path, weights_only=True)
    data["config"] = {**data["config"], "hidden": data["config"]["hidden"] * 2}  # weights of another shape
    torch.save(data, bad)
    _refused(_with(settings, "model", path=bad), "incompatible")


def test_start_up_refuses_an_unreachable_broker(settings: Settings) -> None:
    nowhere = _with(settings, "kafka", bootstrap_servers=f"127.0.0.1:{free_port()}", embedded=False)
    worker = WorkerProcess(nowhere).start()
    assert worker.proc is not None
    assert worker.proc.wait(60) != 0  # the admin client gives up after 15 s
    time.sleep(0.2)
    lines = [line for line in worker.tail if line.strip()]
    assert lines[-1].startswith("streamrec worker: error: cannot reach Kafka"), lines
    assert not any("Traceback" in line for line in lines), lines


def test_sigterm_mid_batch_exits_cleanly_and_loses_nothing(settings: Settings) -> None:
    clicks = scenario(n_users=40, clicks_per_user=15, seed=5)
    first, second = clicks[:500], clicks[500:]
    settings = _with(settings, "worker", shutdown_grace_s=15.0)
    worker = WorkerProcess(settings).start()
    try:
        worker.wait_ready()
        positions = send_all(settings, first)
        reader = TopicReader(settings, settings.topics.recommendations)
        early: list = []
        deadline = time.monotonic() + 60
        while not early and time.monotonic() < deadline:
            early = reader.poll()  # until the first lists: the worker is busy with the backlog now
    finally:
        code = worker.stop(timeout_s=60)
    assert code == 0, "a SIGTERM exit is clean, within the grace period (the watchdog exits with 3)"
    with WorkerProcess(settings) as again:
        again.wait_ready()
        positions += send_all(settings, second)
        recs = recommendations(early + reader.read_until(len(clicks) - len(early), 90, idle_s=1))
    reader.close()
    d = delivery(positions, recs)
    assert d.lost == [] and d.unexpected == 0
    assert_same_states(final_states(settings), reference_states(settings, clicks, positions))


def test_sigterm_with_the_broker_frozen_ends_within_the_grace_period(small_checkpoint: Path,
                                                                      tmp_path: Path) -> None:
    """A broker that stops answering can hang Faust's final commit: the grace period bounds it.

    Either the stop gives up on its own (exit 0) or the watchdog cuts it (exit 3,
    with its line); the watchdog itself is tested in tests/unit/stream_app/test_shutdown_watchdog.py.
    """
    with EmbeddedBroker() as broker:
        base = Settings().with_embedded_broker(broker.bootstrap_servers)
        s = base.model_copy(update={
            "model": base.model.model_copy(update={"path": small_checkpoint}),
            "worker": base.worker.model_copy(update={"app_id": "watchdog", "data_dir": tmp_path / "data",
                                                     "shutdown_grace_s": 3.0}),
        })
        ensure_topics(s)
        worker = WorkerProcess(s).start()
        try:
            worker.wait_ready()
            send_all(s, scenario(n_users=5, clicks_per_user=4))
            broker.freeze()
            assert worker.proc is not None
            worker.proc.terminate()
            code = worker.proc.wait(60)
        finally:
            broker.thaw()
            worker.kill()
        time.sleep(0.2)
    assert code in (0, 3), list(worker.tail)
    if code == 3:
        assert any("shutdown took longer than 3s" in line for line in worker.tail), list(worker.tail)


def test_idle_users_expire_and_stay_gone_after_a_rebuild(settings: Settings) -> None:
    ttl = _with(settings, "session", state_ttl_s=5.0)
    old = [click(f"old-{i}", f"i{i}", 100.0 + i) for i in range(6)]
    reader = TopicReader(settings, settings.topics.recommendations)
    with WorkerProcess(ttl) as worker:
        worker.wait_ready()
        send_all(ttl, old)
        assert len(reader.read_until(6, 60)) >= 6
        deadline = time.monotonic() + 60
        expired = 0.0
        while time.monotonic() < deadline and expired < 6:
            expired = parse_metrics(worker.metrics()).get('streamrec_state_resets_total{reason="ttl"}', 0.0)
            time.sleep(0.5)
        assert expired == 6
        assert http_get(worker.base_url + "/users/old-0/recommendations")[0] == 404
        send_all(ttl, [click("new-0", "i9", 200.0)])  # after the sweep: a fresh user that stays
        assert any(r.user_id == "new-0" for r in recommendations(reader.read_until(1, 60)))
    reader.close()
    assert set(final_states(settings)) == {"new-0"}, "the changelog holds tombstones for the expired users"
    shutil.rmtree(settings.worker.data_dir)  # full rebuild from the changelog, with the TTL off
    with WorkerProcess(settings) as rebuilt:
        rebuilt.wait_ready()
        assert http_get(rebuilt.base_url + "/users/old-0/recommendations")[0] == 404
        assert http_get(rebuilt.base_url + "/users/new-0/recommendations")[0] == 200


def test_start_up_refuses_a_data_dir_ahead_of_the_changelog(settings: Settings) -> None:
    """RocksDB state from topics that no longer exist (recreated, or an embedded broker restarted)."""
    with WorkerProcess(settings) as worker:
        worker.wait_ready()
        send_all(settings, scenario(n_users=8, clicks_per_user=3))
        reader = TopicReader(settings, settings.topics.recommendations)
        assert len(reader.read_until(24, 60)) >= 24
        reader.close()
    fresh = _with(_with(settings, "topics", clicks=settings.topics.clicks + "-new",
                        recommendations=settings.topics.recommendations + "-new"),
                  "worker", app_id=settings.worker.app_id + "-new")
    ensure_topics(fresh)
    worker = WorkerProcess(fresh).start()
    assert worker.proc is not None
    assert worker.proc.wait(90) == 2
    time.sleep(0.2)
    lines = [line for line in worker.tail if line.strip()]
    assert lines[-1].startswith("streamrec worker: error: the data dir"), lines[-3:]
    assert "delete the data dir" in lines[-1]


def test_workers_stop_when_the_harness_that_started_them_is_killed(settings: Settings) -> None:
    """A killed test run, chaos or bench run leaves no worker behind: it gets SIGTERM and exits."""
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) is not installed")
    script = ("import time; from stream_app.lab.harness import WorkerProcess; from stream_app.settings import Settings; "
              "w = WorkerProcess(Settings()).start(); print(w.proc.pid, flush=True); w.wait_ready(); "
              "print('ready', flush=True); time.sleep(300)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env.update(settings.to_env())
    starter = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        pid = int(starter.stdout.readline())
        assert starter.stdout.readline().strip() == "ready"
        starter.send_signal(signal.SIGKILL)
        starter.wait(10)
        deadline = time.monotonic() + settings.worker.shutdown_grace_s + 15
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(pid), "the worker outlived the harness that started it"
    finally:
        starter.kill()
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_start_up_refuses_exactly_once_on_the_embedded_broker(settings: Settings) -> None:
    if not settings.kafka.embedded:
        pytest.skip("Apache Kafka has transactions (tests/integration/test_exactly_once.py)")
    _refused(_with(settings, "worker", processing_guarantee="exactly_once"), "needs Apache Kafka")
