"""Shared fixtures: a small real network and checkpoint (no mocks of the model)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.checkpoint import save_checkpoint
from models.rnn import ModelConfig, build_model

N_ITEMS = 50


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight GRU over items "i0".."i49" with item i0 the most popular."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_items=N_ITEMS, hidden=16), seed=0).eval()
    path = tmp_path_factory.mktemp("ckpt") / "small.pt"
    counts = list(range(N_ITEMS, 0, -1))
    save_checkpoint(path, model, [f"i{j}" for j in range(N_ITEMS)], counts, {"purpose": "tests"})
    return path
