"""Hot swap (STREAMREC_MODEL__WATCH_S): a new checkpoint file is served without a restart and without losing
a list or a user; a file that fails to load keeps the old model serving."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from models.checkpoint import load_checkpoint, save_checkpoint
from models.rnn import ModelConfig, build_model
from stream_app.lab.harness import TopicReader, WorkerProcess, http_get, parse_metrics, recommendations
from stream_app.settings import Settings
from tests.integration.helpers import click, send_all


def wait_for(check, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_a_new_checkpoint_is_swapped_in_and_every_user_carried(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(Path(settings.model.path).read_bytes())
    old = load_checkpoint(path)
    s = settings.model_copy(update={"model": settings.model.model_copy(update={"path": path, "watch_s": 0.3})})
    users = [f"u{j}" for j in range(8)]
    rounds = [[click(u, f"i{(3 * j + r) % 50}", 100.0 + 10 * r + j) for j, u in enumerate(users)] for r in range(3)]
    reader = TopicReader(s, s.topics.recommendations)
    with WorkerProcess(s, log_path=tmp_path / "worker.log") as worker:
        worker.wait_ready()
        send_all(s, rounds[0])
        got = recommendations(reader.read_until(8, 60, idle_s=0.5))
        nxt = tmp_path / "next.pt"  # written beside, then renamed over: the watcher never sees half a file
        save_checkpoint(nxt, build_model(ModelConfig(n_items=50, hidden=16), seed=11).eval(), old.item_ids,
                        old.item_counts, {"purpose": "the next model"})
        new_version = load_checkpoint(nxt).version
        os.replace(nxt, path)
        wait_for(lambda: json.loads(http_get(worker.base_url + "/readyz")[1])["model_version"] == new_version)
        send_all(s, rounds[1])
        got += recommendations(reader.read_until(8, 60, idle_s=0.5))
        bad = tmp_path / "bad.pt"
        bad.write_bytes(b"not a checkpoint")
        os.replace(bad, path)
        wait_for(lambda: parse_metrics(worker.metrics()).get('streamrec_model_swaps_total{outcome="failed"}') == 1.0)
        send_all(s, rounds[2])
        got += recommendations(reader.read_until(8, 60, idle_s=0.5))
        metrics = parse_metrics(worker.metrics())
    assert len(got) == 24 and len({(r.source.partition, r.source.offset) for r in got}) == 24  # no list lost
    assert [r.model_version for r in got[:8]] == [old.version] * 8
    assert [r.model_version for r in got[8:]] == [new_version] * 16  # the bad file changed nothing
    assert all(r.strategy == "model" for r in got[8:16])  # carried: a user's state goes on, not back to zero
    assert metrics['streamrec_model_swaps_total{outcome="swapped"}'] == 1.0
    assert metrics["streamrec_states_carried_total"] == 8.0
    assert metrics.get('streamrec_state_resets_total{reason="model_version"}', 0.0) == 0.0
    assert metrics[f'streamrec_model_info{{cell="gru",hidden="16",items="50",version="{new_version}"}}'] == 1.0
    assert not any(k.startswith("streamrec_model_info") and old.version in k for k in metrics)
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert log.count("keeps serving") == 1 and "swapped in for" in log  # one clear line for the bad file
