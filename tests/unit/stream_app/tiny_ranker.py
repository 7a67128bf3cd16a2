"""A small learned ranker for a test network: its next click is the last item's first co-visitation neighbour."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.ranker import Collector, ItemStats, Ranker, RankerParams, fit_ranker, load_ranker, save_ranker
from models.recall import Neighbours, RecallConfig


def tiny_ranker(ckpt: Any, model: Any, counts: np.ndarray, path: Path, size: int = 12) -> tuple[Ranker, Neighbours]:
    """(the ranker loaded for ``ckpt`` (anything with ``version``, ``model``, ``attribute_lists()``), its table)."""
    n = int(model.out_emb.shape[0])
    g = torch.Generator().manual_seed(5)
    nxt = torch.randperm(n, generator=g)
    covis = Neighbours(torch.stack([nxt, torch.roll(nxt, 1)], dim=1), torch.tensor([2.0, 1.0]).expand(n, 2).contiguous())
    counts = np.asarray(counts, dtype=np.float64)
    stats = ItemStats.build(model.out_emb, counts, counts, covis, None, None)
    recall = RecallConfig(size, covisitation=0.2, attributes=0.0)
    collector = Collector(stats, recall)
    for _ in range(6):
        last = torch.randint(0, n, (32,), generator=g)
        collector(torch.randn(32, n, generator=g), [np.array([int(x)]) for x in last], covis.index[last, 0])
    save_ranker(path, fit_ranker(collector, RankerParams(trees=15, min_child_samples=5), log=None), recall, stats,
                ckpt.version, {})
    return load_ranker(path, ckpt), covis
