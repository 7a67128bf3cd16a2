"""Training learns a deterministic sequence, is reproducible, and honours the options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint
from models.data import Sessions, build_vocab, encode, read_tsv
from models.evaluate import evaluate_checkpoint, evaluate_scorer
from models.train import PRESETS, RowAdagrad, TrainConfig, auto_preset, fit, load_preset, resolve_config, train_file

TINY = dict(hidden=16, batch_size=8, negatives=6, epochs=8, lr=0.1)


def coded(path: Path) -> tuple[Sessions, np.ndarray]:
    log = read_tsv(path)
    ids, counts = build_vocab(log)
    sessions, _ = encode(log, {s: i for i, s in enumerate(ids)})
    return sessions, counts


@pytest.mark.parametrize("loss", ["cross-entropy", "bpr-max", "top1-max"])
def test_learns_successor_rule(cyclic_tsv: Path, loss: str) -> None:
    sessions, counts = coded(cyclic_tsv)
    cfg = TrainConfig(**{**TINY, "loss": loss, "epochs": 15 if loss != "cross-entropy" else 8})  # type: ignore[arg-type]
    model, meta = fit(sessions, counts, cfg, progress=False, log=None)
    losses = meta["loss_per_epoch"]
    assert losses[-1] < losses[0]
    res = evaluate_scorer(model, sessions, len(counts), ks=(1, 5))
    assert res["recall@5"] > 0.9, res


@pytest.mark.parametrize("kw", [dict(cell="lstm"), dict(cell="rnn", layers=2), dict(constrained=True), dict(embedding=8, momentum=0.2)])
def test_variants_train(cyclic_tsv: Path, kw: dict[str, object]) -> None:
    sessions, counts = coded(cyclic_tsv)
    model, meta = fit(sessions, counts, TrainConfig(**{**TINY, "epochs": 2, **kw}), progress=False, log=None)  # type: ignore[arg-type]
    assert np.isfinite(meta["loss_per_epoch"]).all() and not model.training


def test_seed_reproducible(cyclic_tsv: Path) -> None:
    sessions, counts = coded(cyclic_tsv)
    cfg = TrainConfig(**{**TINY, "epochs": 2, "dropout_hidden": 0.2})  # type: ignore[arg-type]
    a, ma = fit(sessions, counts, cfg, progress=False, log=None)
    b, mb = fit(sessions, counts, cfg, progress=False, log=None)
    assert ma["loss_per_epoch"] == mb["loss_per_epoch"]
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    c, _ = fit(sessions, counts, cfg.updated({"seed": 7}), progress=False, log=None)
    assert not torch.equal(a.out_emb, c.out_emb)


def test_only_used_rows_change(cyclic_tsv: Path) -> None:
    table = torch.zeros(10, 3)
    opt = RowAdagrad([], [table], momentum=0.0, eps=1e-6)
    opt.step_rows(table, torch.tensor([2, 5]), torch.ones(2, 3), lr=0.1)
    changed = (table != 0).any(dim=1).nonzero().ravel().tolist()
    assert changed == [2, 5]
    assert torch.allclose(table[2], torch.full((3,), -0.1), atol=1e-5)


def test_train_file_checkpoint_and_early_stopping(tmp_path: Path, cyclic_tsv: Path, cyclic_test_tsv: Path) -> None:
    out = tmp_path / "m.pt"
    _, meta = train_file(str(cyclic_tsv), str(out), valid_path=str(cyclic_test_tsv), progress=False, log=None,
                         overrides={**TINY, "epochs": 6, "patience": 1})
    ckpt = load_checkpoint(out)
    assert ckpt.meta["version"] == ckpt.version == meta["version"]
    assert ckpt.meta["train_path"].endswith("train.tsv") and ckpt.meta["preset"] == "small"
    assert len(ckpt.meta["loss_per_epoch"]) == len(ckpt.meta["epochs"]) >= 1
    assert "valid_recall@20" in ckpt.meta["epochs"][0]
    assert ckpt.popular(1) != []
    res = evaluate_checkpoint(str(out), str(cyclic_test_tsv), baselines=True)
    assert res["recall@5"] > 0.5
    assert res["baselines"]["markov"]["recall@1"] > 0.9  # the rule is first-order
    assert res["baselines"]["popularity"]["recall@20"] == 1.0  # only 12 items


def test_presets(tmp_path: Path) -> None:
    assert auto_preset(100) == "small" and auto_preset(50_000) == "large"
    assert load_preset("large") == PRESETS["large"]
    (tmp_path / "mine.json").write_text('{"config": {"hidden": 7}}')
    assert load_preset("mine", tmp_path) == {"hidden": 7}
    assert load_preset(str(tmp_path / "mine.json")) == {"hidden": 7}
    cfg, name = resolve_config(50, "auto", {"lr": 0.3})
    assert name == "small" and cfg.lr == 0.3
    with pytest.raises(ValueError):
        load_preset("nope", tmp_path)
    with pytest.raises(ValueError):
        TrainConfig().updated({"hiden": 3})
