"""The recall and ranking stages in the worker's micro-batch (STREAMREC_MODEL__RANKER).

For every row the network scored, the candidates are its top ``size`` items (exact or ANN, from the
ranker of stream_app/core/ranking.py) plus the complementary sources' items for the click's item
(co-visitation, shared attributes: the tables the ranker file carries), merged as offline
(models/recall.py ``merge_scored``: the sources' quotas first, then the network's best, no duplicates).
The extra items get their exact network score (one batched product with their output embeddings);
items the user must not see (recent clicks, unavailable, excluded) are dropped before the merge.
The learned ranker (models/ranker.py) then scores every candidate from the same features as offline,
and each row's candidates come out in its order, with its scores. Everything is (B, C) tensor work
and one LightGBM call per micro-batch; no Python loop over candidates.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Collection, Sequence

import numpy as np
import torch

from models.beyond import unit_rows
from models.ranker import Ranker
from models.recall import SOURCE_BITS, merge_scored, neighbour_blocks


def padded(values: Sequence[Sequence[float]], indices: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged lists as (values (B, W) with -inf past a short row, items (B, W) with -1)."""
    width = max((len(v) for v in values), default=0)
    val = torch.full((len(values), width), -math.inf)
    idx = torch.full((len(values), width), -1, dtype=torch.long)
    for r, (v, i) in enumerate(zip(values, indices)):
        if len(v):
            val[r, : len(v)] = torch.tensor(v, dtype=torch.float32)
            idx[r, : len(i)] = torch.tensor(i, dtype=torch.long)
    return val, idx


def excluded_mask(items: torch.Tensor, excluded: Sequence[Collection[int]]) -> torch.Tensor:
    """(B, M) True where a row's item is in that row's excluded set."""
    width = max((len(e) for e in excluded), default=0)
    if width == 0:
        return torch.zeros(items.shape, dtype=torch.bool)
    ex = torch.full((len(excluded), width), -2, dtype=torch.long)
    for r, e in enumerate(excluded):
        if e:
            ex[r, : len(e)] = torch.tensor(sorted(e), dtype=torch.long)
    return (items[:, :, None] == ex[:, None, :]).any(dim=2)


def with_new_items(ranker: Ranker, new_out: torch.Tensor) -> Ranker:
    """The ranker whose item vectors cover items added through the catalogue (their features: no clicks,
    no neighbours, their own output vector)."""
    n = int(ranker.stats.log_pop.shape[0])
    unit = torch.cat([ranker.stats.unit[:n], unit_rows(new_out)]) if new_out.shape[0] else ranker.stats.unit[:n]
    return replace(ranker, stats=replace(ranker.stats, unit=unit))


def recall_and_rank(ranker: Ranker, queries: torch.Tensor, out_emb: torch.Tensor, out_bias: torch.Tensor | None,
                    values: Sequence[Sequence[float]], indices: Sequence[Sequence[int]], last: Sequence[int],
                    excluded: Sequence[Collection[int]], off: torch.Tensor, history: Sequence[np.ndarray]
                    ) -> tuple[list[list[float]], list[list[int]], list[dict[int, int]], dict[str, float]]:
    """Each row's candidates in the ranker's order with its scores, each candidate's source bits
    (models.recall.SOURCE_BITS) per row, and the seconds of the ``recall`` and ``ranker`` stages
    (module docstring).

    ``queries`` (B, H) are the rows' network queries, ``values``/``indices`` the network's top per row,
    ``last`` the click's item per row (-1: none), ``off`` (N,) bool the trained items not to serve."""
    t0 = time.perf_counter()
    net_val, net_idx = padded(values, indices)
    last_t = torch.tensor(list(last), dtype=torch.long)
    n_trained = int(out_emb.shape[0])
    blocks = []
    for name, items in neighbour_blocks(last_t, ranker.recall, ranker.stats.covis, ranker.stats.attrs):
        safe = items.clamp(min=0, max=n_trained - 1)
        score = torch.bmm(out_emb[safe], queries[:, :, None]).squeeze(2)  # (B, M)
        if out_bias is not None:
            score = score + out_bias[safe]
        bad = (items < 0) | (items >= n_trained) | off[safe] | excluded_mask(items, excluded)
        blocks.append((name, items, score.masked_fill(bad, -math.inf)))
    cand = merge_scored(blocks + [("network", net_idx, net_val)], ranker.recall.size)
    t1 = time.perf_counter()
    order = ranker.order(cand, history)  # (B, C)
    best = torch.sort(order, dim=1, descending=True, stable=True)
    items = cand.items.gather(1, best.indices)
    counts = torch.isfinite(best.values).sum(dim=1).tolist()
    lists = [row[:n] for row, n in zip(items.tolist(), counts)]
    bits = cand.sources.gather(1, best.indices).tolist()
    return ([row[:n] for row, n in zip(best.values.tolist(), counts)], lists,
            [dict(zip(row, b)) for row, b in zip(lists, bits)],
            {"recall": t1 - t0, "ranker": time.perf_counter() - t1})


def source_names(bits: int) -> str:
    """``network+covisitation`` for the bits of models.recall.SOURCE_BITS."""
    return "+".join(name for name, bit in SOURCE_BITS.items() if bits & bit)


__all__ = ["excluded_mask", "padded", "recall_and_rank", "source_names", "with_new_items"]
