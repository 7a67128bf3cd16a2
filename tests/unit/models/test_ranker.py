"""The learned ranker: its features, learning a signal the network's score lacks, its file, the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from models.ranker import (FEATURES, Collector, ItemStats, Ranker, RankerError, RankerParams, RankingProbe, features,
                           fit_ranker, load_ranker, save_ranker)
from models.recall import Neighbours, RecallConfig, merge
from stream_app.offline_cli import main as offline_main

N = 60


def world(seed: int = 0) -> tuple[ItemStats, Neighbours]:
    """Items whose next click is the last item's first co-visitation neighbour; the network's scores are noise."""
    g = torch.Generator().manual_seed(seed)
    nxt = torch.randperm(N, generator=g)
    index = torch.stack([nxt, torch.roll(nxt, 1), torch.roll(nxt, 2)], dim=1)  # (N, 3)
    covis = Neighbours(index, torch.tensor([3.0, 1.0, 1.0]).expand(N, 3).contiguous())
    stats = ItemStats.build(torch.randn(N, 8, generator=g), np.arange(N, dtype=np.float64), np.ones(N), covis, None, None)
    return stats, covis


def batch(seed: int, b: int = 64) -> tuple[torch.Tensor, list[np.ndarray], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    stats, covis = world()
    last = torch.randint(0, N, (b,), generator=g)
    history = [np.array([int(x)]) for x in last]
    return torch.randn(b, N, generator=g), history, covis.index[last, 0]


def test_features_read_the_tables_and_the_history() -> None:
    stats, _ = world()
    scores, history, targets = batch(1, b=4)
    history[0] = np.array([5, int(history[0][0])])
    cand = merge(scores, torch.tensor([int(h[-1]) for h in history]), RecallConfig(10, 0.3, 0.0), stats.covis)
    f = features(stats, cand, history)
    assert f.shape == (4, 10, len(FEATURES))
    col = {name: f[..., i] for i, name in enumerate(FEATURES)}
    for r in range(4):
        t = (cand.items[r] == targets[r]).nonzero()
        assert len(t) == 1 and col["covis_last"][r, t[0, 0]] == 3.0  # the target is the first neighbour
        assert col["in_covisitation"][r, t[0, 0]] == 1.0
    assert torch.equal(col["is_last"][0] > 0, cand.items[0] == int(history[0][-1]))
    assert torch.equal(col["in_history"][0] > 0, (cand.items[0] == 5) | (cand.items[0] == int(history[0][-1])))
    assert torch.allclose(col["log_pop"], torch.log1p(cand.items.clamp(min=0).float()))
    assert (col["network_rank"] >= 0).all() and (col["network_rank"] < 1).all()


def test_the_ranker_learns_what_the_score_lacks(tmp_path: Path) -> None:
    stats, _ = world()
    recall = RecallConfig(12, 0.25, 0.0)
    collector = Collector(stats, recall)
    for s in range(10):
        collector(*batch(100 + s))
    booster = fit_ranker(collector, RankerParams(trees=20, min_child_samples=5), log=None)
    ckpt = SimpleNamespace(version="v1", model=SimpleNamespace(out_emb=torch.randn(N, 8)), attribute_lists=lambda: None)
    save_ranker(tmp_path / "r.pt", booster, recall, stats, "v1", {"note": "test"})
    ranker = load_ranker(tmp_path / "r.pt", ckpt)
    probe = RankingProbe(ranker)
    probe(*batch(7))
    res = probe.result()
    assert res["candidates_recall"] == 1.0 and res["predictions"] == 64
    assert res["ranker"]["ndcg@10"] > 0.95 > res["network"]["ndcg@10"]  # the score is noise, co-visitation is not
    with pytest.raises(RankerError, match="trained for model v1"):
        load_ranker(tmp_path / "r.pt", SimpleNamespace(version="v2"))
    (tmp_path / "bad.pt").write_text("x")
    with pytest.raises(RankerError, match="cannot read"):
        load_ranker(tmp_path / "bad.pt", ckpt)
    assert isinstance(ranker, Ranker) and ranker.meta == {"note": "test"}


def test_nothing_to_learn_is_an_error() -> None:
    stats, _ = world()
    with pytest.raises(ValueError, match="nothing to learn"):
        fit_ranker(Collector(stats, RecallConfig(5, 0.0, 0.0)))


def test_cli_ranker_on_user_sequences(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.unit.models.test_sequences import group_world

    seq, att = group_world(tmp_path, cold=False)
    ck = tmp_path / "m.pt"
    base = ["--sequences", str(seq), "--item-attributes", str(att)]
    assert offline_main(["train", *base, "--out", str(ck), "--epochs", "2", "--hidden", "16", "--quiet"]) == 0
    assert offline_main(["ranker", str(ck), "--sequences", str(seq), "--out", str(tmp_path / "r.pt")]) == 2
    assert "--validate" in capsys.readouterr().err  # trained on the validation items: nothing fair to learn from
    assert offline_main(["train", *base, "--out", str(ck), "--epochs", "2", "--hidden", "16", "--quiet", "--validate"]) == 0
    capsys.readouterr()
    assert offline_main(["ranker", str(ck), "--sequences", str(seq), "--out", str(tmp_path / "r.pt"), "--trees", "10",
                         "--candidates", "20", "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["queries"] > 0 and set(meta["importance"]) == set(FEATURES) and 1 <= meta["trees"] <= 10
    assert offline_main(["evaluate", str(ck), "--sequences", str(seq), "--ranker", str(tmp_path / "r.pt"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["ranking"]) >= {"ranker", "network", "candidates_recall"} and res["ranking"]["recall"]["size"] == 20
    assert {"recall@100", "recall@200", "recall@500", "network_exact"} <= set(res["recall"])
    assert res["recall"]["shares"] == {"covisitation": 0.25, "attributes": 0.1}
    assert offline_main(["evaluate", str(ck), "--sequences", str(seq), "--recall", "off", "--json"]) == 0
    assert "recall" not in json.loads(capsys.readouterr().out)


def test_cli_ranker_on_click_logs(tmp_path: Path, cyclic_tsv: Path, cyclic_test_tsv: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    ck = tmp_path / "m.pt"
    assert offline_main(["train", str(cyclic_tsv), "--out", str(ck), "--epochs", "2", "--hidden", "16", "--batch-size", "8",
                         "--negatives", "4", "--quiet"]) == 0
    assert offline_main(["ranker", str(ck), "--out", str(tmp_path / "r.pt")]) == 2
    assert "--valid" in capsys.readouterr().err
    assert offline_main(["ranker", str(ck), "--valid", str(cyclic_test_tsv), "--out", str(tmp_path / "r.pt"),
                         "--trees", "5", "--candidates", "8"]) == 0
    assert "features by gain" in capsys.readouterr().out
    assert offline_main(["evaluate", str(ck), str(cyclic_test_tsv), "--ranker", str(tmp_path / "r.pt")]) == 0
    out = capsys.readouterr().out
    assert "ranker order" in out and "network order" in out and "candidates (network + covisitation 0.25)" in out
    gone = tmp_path / "gone.tsv"
    assert offline_main(["evaluate", str(ck), str(cyclic_test_tsv), "--train", str(gone), "--json"]) == 0
    assert "candidate recall skipped" in json.loads(capsys.readouterr().out)["recall"]["error"]
