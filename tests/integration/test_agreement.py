"""Streaming and offline agree: a user-sequence set replayed through the worker scores as the offline protocol."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.sequences import train_sequences
from stream_app.lab.agreement import run_agreement
from stream_app.settings import Settings


def test_replayed_sequences_score_as_offline(base_settings: Settings, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    lines = []
    for u in range(150):  # noisy walks over 30 items: far from a perfect score
        start, n = int(rng.integers(30)), int(rng.integers(3, 12))
        walk = [1 + (start + t + int(rng.integers(0, 3))) % 30 for t in range(n)]
        lines.append(" ".join(map(str, [u + 1] + walk)))
    seq = tmp_path / "S.txt"
    seq.write_text("\n".join(lines) + "\n")
    ckpt = tmp_path / "m.pt"
    train_sequences(str(seq), str(ckpt), None, overrides={"hidden": 16, "batch_size": 8, "negatives": 16,
                                                          "epochs": 3, "lr": 0.1}, progress=False, log=None)
    res = run_agreement(base_settings, str(ckpt), str(seq), tmp_path)
    assert res["users_with_every_list"] == res["users"] == 150
    assert 0.0 < res["offline"]["hr@5"] < 1.0, res
    # histories are under 50 items: the offline inputs are whole, the exclusions the same; only float order differs
    assert abs(res["stream"]["hr@20"] - res["offline"]["hr@20"]) <= 0.002, res
    assert abs(res["stream"]["ndcg@20"] - res["offline"]["ndcg@20"]) <= 0.002, res
