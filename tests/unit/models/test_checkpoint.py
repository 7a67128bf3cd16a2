"""Checkpoint round trip, stable version, and one clear error class for bad files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from models.rnn import ModelConfig, build_model


def saved(tmp_path: Path, **kw: object) -> tuple[Path, torch.nn.Module]:
    model = build_model(ModelConfig(n_items=6, hidden=5, **kw), seed=1).eval()  # type: ignore[arg-type]
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, [str(100 + i) for i in range(6)], [5, 9, 1, 9, 0, 3], {"train_path": "x.tsv", "n": 1})
    return path, model


@pytest.mark.parametrize("kw", [dict(), dict(cell="lstm", layers=2), dict(constrained=True, cell="rnn")])
def test_round_trip_identical_scores_and_version(tmp_path: Path, kw: dict[str, object]) -> None:
    path, model = saved(tmp_path, **kw)
    a, b = load_checkpoint(path), load_checkpoint(path)
    assert isinstance(a, Checkpoint)
    assert a.version == b.version and len(a.version) == 12
    assert a.item_ids == [str(100 + i) for i in range(6)]
    assert a.item_index["103"] == 3
    assert a.meta["train_path"] == "x.tsv"
    assert not a.model.training
    assert next(a.model.parameters()).device.type == "cpu"
    items = torch.tensor([[0, 1], [2, 3], [4, 5]])
    with torch.no_grad():
        torch.testing.assert_close(a.model.forward_sequence(items)[1], model.forward_sequence(items)[1], atol=0, rtol=0)
    with torch.inference_mode():
        s, sc = a.model.step(a.model.zero_state(2), torch.tensor([1, 2]))
        assert sc.shape == (2, 6)


def test_popular_uses_counts_with_stable_ties(tmp_path: Path) -> None:
    ckpt = load_checkpoint(saved(tmp_path)[0])
    assert ckpt.popular(3) == [1, 3, 0]
    assert ckpt.popular(0) == []
    assert len(ckpt.popular(100)) == 6


def test_version_changes_with_weights(tmp_path: Path) -> None:
    path, model = saved(tmp_path)
    v1 = load_checkpoint(path).version
    with torch.no_grad():
        model.out_emb[0, 0] += 1.0
    save_checkpoint(tmp_path / "m2.pt", model, [str(100 + i) for i in range(6)], [1] * 6, {})
    assert load_checkpoint(tmp_path / "m2.pt").version != v1


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_corrupt_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(bad)
    assert "\n" not in str(e.value)
    assert issubclass(CheckpointError, ValueError)


def test_truncated_file(tmp_path: Path) -> None:
    path, _ = saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_incompatible_payloads(tmp_path: Path) -> None:
    p = tmp_path / "x.pt"
    torch.save([1, 2, 3], p)
    with pytest.raises(CheckpointError, match="not a streamrec checkpoint"):
        load_checkpoint(p)
    path, _ = saved(tmp_path)
    data = torch.load(path, weights_only=True)
    torch.save({**data, "format_version": 99}, p)
    with pytest.raises(CheckpointError, match="format_version"):
        load_checkpoint(p)
    torch.save({**data, "config": {**data["config"], "hidden": 7}}, p)
    with pytest.raises(CheckpointError, match="incompatible"):
        load_checkpoint(p)
    torch.save({**data, "item_ids": data["item_ids"][:3]}, p)
    with pytest.raises(CheckpointError, match="inconsistent"):
        load_checkpoint(p)
    torch.save({k: v for k, v in data.items() if k != "meta"}, p)
    with pytest.raises(CheckpointError, match="lacks"):
        load_checkpoint(p)


def test_pickled_module_is_rejected(tmp_path: Path) -> None:
    p = tmp_path / "module.pt"
    torch.save({"model": build_model(ModelConfig(n_items=3, hidden=2))}, p)
    with pytest.raises(CheckpointError):
        load_checkpoint(p)
