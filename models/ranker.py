"""A learned ranker over the recall stage's candidates (LightGBM lambdarank), and its offline figures.

The network orders items by one score. The ranker re-orders each click's candidates
(models/recall.py) with what that score alone lacks, per (click, candidate):

=================  ===========================================================================
``score``          the network's score; ``score_gap`` its distance to the row's best candidate;
                   ``network_rank`` the candidate's place in the network's order (0 = first, / C)
``log_pop``        log(1 + training clicks); ``log_recent`` the same over the latest tenth of them
``covis_last``     co-visitation weight last item -> candidate; ``covis_recent`` the same from the two
                   items before it (halved each step back)
``attr_last``      share of the candidate's attributes the last item has too; ``attr_history``
                   the same against the history's attributes, ``attr_match`` weighed by the history's
                   mix (0 without item attributes)
``affinity``       cosine between the candidate and the mean of the history's item vectors (output
                   embeddings): the user-vector affinity; ``cos_last`` against the last item alone
``in_*``           the source bits (network, covisitation, attributes)
``in_history``     the candidate is in the history; ``is_last`` it is the last item;
                   ``log_history`` log(1 + history length)
=================  ===========================================================================

Training (``fit_ranker``): queries are predictions of a part the network was not trained on (a
validation split, or each user's validation item); a query whose target is outside its candidates
teaches nothing and is dropped. A fifth of the queries is held out to choose the number of trees
(at most ``trees``; training stops when their NDCG@10 has not improved for 30 rounds): fewer
trees are cheaper to serve. The booster is plain data (LightGBM's model text), saved beside the
recall tables in one data-only file (``save_ranker`` / ``load_ranker``, torch ``weights_only``).

Offline figures (``RankingProbe``): on the same candidates, NDCG@10, MRR@20 and HR@20 of the ranker's
order and of the network's order; a target outside the candidates counts as a miss for both.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from models.beyond import attribute_mix, unit_rows
from models.recall import SOURCE_BITS, Candidates, Neighbours, RecallConfig, last_items, merge, used_shares

FORMAT_VERSION = 1
FEATURES = ("score", "score_gap", "network_rank", "log_pop", "log_recent", "covis_last", "covis_recent",
            "attr_last", "attr_history", "attr_match", "affinity", "cos_last", "in_network", "in_covisitation",
            "in_attributes", "in_history", "is_last", "log_history")
HISTORY = 50  # items of history the features read
RECENT_SHARE = 0.1


class RankerError(ValueError):
    """A ranker file is missing, corrupt or made for another checkpoint."""


@dataclass
class ItemStats:
    """What the features know of each item (index = the network's)."""

    log_pop: Tensor  # (N,)
    log_recent: Tensor  # (N,)
    unit: Tensor  # (N, H) unit output embeddings
    covis: Neighbours | None = None
    attrs: Neighbours | None = None
    attributes: tuple[np.ndarray, np.ndarray] | None = None  # (flat, offsets)

    @classmethod
    def build(cls, out_emb: Tensor, counts: np.ndarray, recent: np.ndarray, covis: Neighbours | None,
              attrs: Neighbours | None, attributes: tuple[np.ndarray, np.ndarray] | None) -> "ItemStats":
        return cls(torch.log1p(torch.as_tensor(counts, dtype=torch.float32)),
                   torch.log1p(torch.as_tensor(recent, dtype=torch.float32)), unit_rows(out_emb), covis, attrs,
                   attributes)


def recent_counts(sessions_items: np.ndarray, n_items: int, share: float = RECENT_SHARE) -> np.ndarray:
    """Clicks per item (N,) over the latest ``share`` of a time-ordered click sequence."""
    items = np.asarray(sessions_items, dtype=np.int64)
    tail = items[int(len(items) * (1.0 - share)):]
    return np.bincount(tail, minlength=n_items).astype(np.float64)


def _pad_history(history: Sequence[np.ndarray], width: int = HISTORY) -> Tensor:
    """(B, L) the last ``width`` items of each history, right-aligned, -1 before a short one."""
    out = np.full((len(history), width), -1, dtype=np.int64)
    for r, h in enumerate(history):
        h = np.asarray(h, dtype=np.int64)[-width:]
        if len(h):
            out[r, width - len(h):] = h
    return torch.from_numpy(out)


def _table_weight(table: Neighbours | None, source: Tensor, items: Tensor) -> Tensor:
    """(B, C) the table's weight source (B,) -> each candidate, 0 where absent."""
    if table is None:
        return torch.zeros(items.shape, dtype=torch.float32)
    idx, w = table.of(source, table.index.shape[1])  # (B, M)
    return ((items[:, :, None] == idx[:, None, :]).to(torch.float32) * w[:, None, :]).sum(dim=2)


def _attribute_shares(attributes: tuple[np.ndarray, np.ndarray] | None, history: Sequence[np.ndarray],
                      items: Tensor) -> tuple[Tensor, Tensor]:
    """(share of each candidate's attributes inside the history's, the same weighed by the history's mix)."""
    if attributes is None:
        z = torch.zeros(items.shape, dtype=torch.float32)
        return z, z
    flat, offsets = (np.asarray(a, dtype=np.int64) for a in attributes)
    n = len(offsets) - 1
    p, m, _ = attribute_mix(offsets, flat, history, np.where(items.numpy() >= 0, items.numpy(), n))
    return m.sum(dim=2), (m * p[:, None, :]).sum(dim=2)


def features(stats: ItemStats, cand: Candidates, history: Sequence[np.ndarray]) -> Tensor:
    """The FEATURES (B, C, F) of each row's candidates (module docstring); rows past a short row are junk
    the caller masks with ``cand.valid``."""
    items = cand.items  # (B, C)
    safe = items.clamp(min=0)
    n_rows, n_cand = items.shape
    s = cand.values  # (B, C)
    best = s.max(dim=1, keepdim=True).values  # (B, 1)
    finite = torch.isfinite(s)
    s0 = torch.where(finite, s, torch.zeros_like(s))
    gap = torch.where(finite, s - best, torch.zeros_like(s))
    rank = torch.argsort(torch.argsort(s, dim=1, descending=True, stable=True), dim=1).to(torch.float32) / n_cand
    hist = _pad_history(history)  # (B, L)
    last = hist[:, -1]
    cov_last = _table_weight(stats.covis, last, items)
    cov_recent = 0.5 * _table_weight(stats.covis, hist[:, -2], items) + 0.25 * _table_weight(stats.covis, hist[:, -3], items)
    attr_last, _ = _attribute_shares(stats.attributes, [np.asarray(h[-1:]) for h in history], items)
    attr_hist, attr_match = _attribute_shares(stats.attributes, [np.asarray(h[-HISTORY:]) for h in history], items)
    unit = stats.unit
    n_items = unit.shape[0]
    in_cat = (hist >= 0) & (hist < n_items)
    hv = unit[hist.clamp(min=0, max=n_items - 1)] * in_cat[:, :, None]  # (B, L, H)
    mean = torch.nn.functional.normalize(hv.sum(dim=1), dim=1)  # (B, H)
    cvec = unit[safe.clamp(max=n_items - 1)]  # (B, C, H)
    affinity = torch.bmm(cvec, mean[:, :, None]).squeeze(2)  # (B, C)
    last_vec = unit[last.clamp(min=0, max=n_items - 1)] * (last >= 0)[:, None]  # (B, H)
    cos_last = torch.bmm(cvec, last_vec[:, :, None]).squeeze(2)
    src = cand.sources
    in_history = (items[:, :, None] == hist[:, None, :]).any(dim=2)
    is_last = items == last[:, None]
    log_hist = torch.log1p(in_cat.sum(dim=1).to(torch.float32))[:, None].expand(n_rows, n_cand)
    pop_ok = safe < stats.log_pop.shape[0]
    pop_idx = safe.clamp(max=stats.log_pop.shape[0] - 1)
    cols = [s0, gap, rank, stats.log_pop[pop_idx] * pop_ok, stats.log_recent[pop_idx] * pop_ok, cov_last, cov_recent,
            attr_last, attr_hist, attr_match, affinity, cos_last,
            *(((src & SOURCE_BITS[name]) > 0).to(torch.float32) for name in ("network", "covisitation", "attributes")),
            in_history.to(torch.float32), is_last.to(torch.float32), log_hist]
    return torch.stack([c.to(torch.float32) for c in cols], dim=2)  # (B, C, F)


@dataclass(frozen=True)
class RankerParams:
    """LightGBM lambdarank settings (defaults looked at on validation splits only)."""

    trees: int = 300
    learning_rate: float = 0.05
    leaves: int = 31
    min_child_samples: int = 100
    max_queries: int = 20000
    held_out: float = 0.2  # share of the training queries that choose the number of trees (early stopping)
    patience: int = 30
    seed: int = 0


class Collector:
    """A probe (models/evaluate.py ``Probe``) that gathers training queries: features and labels of each
    prediction's candidates, about ``keep`` of the predictions (seeded), only those with the target inside."""

    def __init__(self, stats: ItemStats, recall: RecallConfig, keep: float = 1.0, seed: int = 0) -> None:
        self.stats, self.recall, self.keep = stats, recall, keep
        self.rng = np.random.default_rng(seed)
        self.x: list[np.ndarray] = []
        self.y: list[np.ndarray] = []
        self.groups: list[int] = []
        self.seen = 0
        self.inside = 0

    def __call__(self, scores: Tensor, history: list[np.ndarray], targets: Tensor) -> None:
        self.seen += len(targets)
        pick = np.flatnonzero(self.rng.random(len(targets)) < self.keep)
        if not len(pick):
            return
        sel = torch.from_numpy(pick)
        sc, tg = scores[sel], targets[sel]
        hist = [history[i] for i in pick]
        cand = merge(sc, last_items(hist), self.recall, self.stats.covis, self.stats.attrs)
        ok = cand.contains(tg)
        self.inside += int(ok.sum())
        if not ok.any():
            return
        rows = torch.nonzero(ok).squeeze(1)
        cand = cand.rows(rows)
        feats = features(self.stats, cand, [hist[i] for i in rows.tolist()])
        label = (cand.items == tg[rows][:, None]).to(torch.int32)
        for r in range(len(rows)):
            v = cand.valid[r]
            self.x.append(feats[r][v].numpy())
            self.y.append(label[r][v].numpy())
            self.groups.append(int(v.sum()))


def fit_ranker(collector: Collector, params: RankerParams = RankerParams(), log: Any = print) -> Any:
    """Train the lambdarank booster on the collected queries; returns the lightgbm Booster."""
    import lightgbm as lgb

    if not collector.groups:
        raise ValueError("no training query had its target among the candidates: nothing to learn from")
    x, y = np.concatenate(collector.x), np.concatenate(collector.y)
    if log is not None:
        log(f"ranker: {len(collector.groups)} queries ({collector.inside} of {collector.seen} predictions had the "
            f"target among their candidates), {len(x)} rows, {len(FEATURES)} features")
    groups = np.asarray(collector.groups)
    held = np.random.default_rng(params.seed).random(len(groups)) < params.held_out  # queries that pick the trees
    if held.all() or not held.any():
        held[:] = False
    rows = np.repeat(held, groups)
    train = lgb.Dataset(x[~rows], y[~rows], group=groups[~held], feature_name=list(FEATURES), free_raw_data=True)
    valid = [lgb.Dataset(x[rows], y[rows], group=groups[held], reference=train)] if held.any() else []
    booster = lgb.train({"objective": "lambdarank", "metric": "ndcg", "eval_at": [10], "learning_rate": params.learning_rate,
                         "num_leaves": params.leaves, "min_child_samples": params.min_child_samples,
                         "lambdarank_truncation_level": 20, "seed": params.seed, "deterministic": True,
                         "num_threads": torch.get_num_threads(), "verbosity": -1},
                        train, num_boost_round=params.trees, valid_sets=valid,
                        callbacks=[lgb.early_stopping(params.patience, verbose=False)] if valid else [])
    if log is not None and valid:
        log(f"ranker: {booster.best_iteration} trees kept (NDCG@10 of the {int(held.sum())} held-out queries stopped "
            f"improving for {params.patience} rounds)")
    return booster


@dataclass
class Ranker:
    """A trained ranker: the booster, the recall it ranks and the item statistics its features read."""

    booster: Any
    recall: RecallConfig
    stats: ItemStats
    model_version: str
    meta: dict[str, Any]
    version: str = ""  # the first 12 hex of the booster text's sha256

    def order(self, cand: Candidates, history: Sequence[np.ndarray]) -> Tensor:
        """The ranker's score of each candidate (B, C), -inf past a short row."""
        feats = features(self.stats, cand, history)  # (B, C, F)
        flat = feats.reshape(-1, feats.shape[2]).numpy()
        pred = torch.from_numpy(np.asarray(self.booster.predict(flat, num_threads=torch.get_num_threads()),
                                           dtype=np.float32)).reshape(cand.items.shape)
        return pred.masked_fill(~cand.valid, -math.inf)


def save_ranker(path: str | os.PathLike[str], booster: Any, recall: RecallConfig, stats: ItemStats,
                model_version: str, meta: dict[str, Any]) -> None:
    """One data-only file (written atomically): the booster's model text, the tables and statistics."""
    import json

    payload = {
        "format_version": FORMAT_VERSION,
        "model_version": model_version,
        "features": list(FEATURES),
        "booster": booster.model_to_string(),
        "recall": asdict(recall),
        "log_pop": stats.log_pop, "log_recent": stats.log_recent,
        "covisitation": stats.covis.to_data() if stats.covis is not None else None,
        "attribute_neighbours": stats.attrs.to_data() if stats.attrs is not None else None,
        "meta": json.loads(json.dumps(meta, default=str)),
    }
    from models.checkpoint import write_data

    write_data(path, payload)


def load_ranker(path: str | os.PathLike[str], ckpt: Any) -> Ranker:
    """Load a ranker for a loaded checkpoint; every failure is one RankerError line."""
    import lightgbm as lgb

    from models.checkpoint import read_data

    p = Path(path)
    data = read_data(p, RankerError, "ranker")
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
        raise RankerError(f"{p} is not a streamrec ranker of format {FORMAT_VERSION}")
    if data["features"] != list(FEATURES):
        raise RankerError(f"ranker {p} was trained on other features ({len(data['features'])}); retrain it")
    if data["model_version"] != ckpt.version:
        raise RankerError(f"ranker {p} was trained for model {data['model_version']}, not {ckpt.version}")
    booster = lgb.Booster(model_str=data["booster"])
    covis = Neighbours.from_data(data["covisitation"]) if data["covisitation"] is not None else None
    attrs = Neighbours.from_data(data["attribute_neighbours"]) if data["attribute_neighbours"] is not None else None
    stats = ItemStats(data["log_pop"], data["log_recent"], unit_rows(ckpt.model.out_emb), covis, attrs,
                      ckpt.attribute_lists())
    import hashlib

    return Ranker(booster, RecallConfig(**data["recall"]), stats, data["model_version"], dict(data["meta"]),
                  hashlib.sha256(data["booster"].encode()).hexdigest()[:12])


class RankingProbe:
    """A probe: NDCG@10, MRR@20 and HR@20 of the ranker's order and the network's order on the same candidates."""

    CUTS = (10, 20)

    def __init__(self, ranker: Ranker) -> None:
        self.ranker = ranker
        self.pos: dict[str, list[np.ndarray]] = {"ranker": [], "network": []}

    def __call__(self, scores: Tensor, history: list[np.ndarray], targets: Tensor) -> None:
        r = self.ranker
        cand = merge(scores, last_items(history), r.recall, r.stats.covis, r.stats.attrs)
        hit = (cand.items == targets[:, None]) & cand.valid  # (B, C)
        found = hit.any(dim=1)
        col = hit.to(torch.int64).argmax(dim=1)  # (B,)
        for name, value in (("ranker", r.order(cand, history)), ("network", cand.values)):
            t = value.gather(1, col[:, None])  # (B, 1)
            pos = (value > t).sum(dim=1) + 1  # ties resolved in the target's favour for both orders alike
            self.pos[name].append(torch.where(found, pos, torch.full_like(pos, 10**9)).numpy())

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, parts in self.pos.items():
            p = np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)
            n = max(len(p), 1)
            out[name] = {"ndcg@10": float(np.where(p <= 10, 1.0 / np.log2(p + 1.0), 0.0).sum() / n),
                         "mrr@20": float(np.where(p <= 20, 1.0 / p, 0.0).sum() / n),
                         "hr@20": float((p <= 20).sum() / n)}
        first = self.pos["ranker"]
        out["candidates_recall"] = float((np.concatenate(first) < 10**9).mean()) if first else 0.0
        r = self.ranker
        out["recall"] = {"size": r.recall.size, **used_shares(r.recall, r.stats.covis, r.stats.attrs)}
        out["predictions"] = int(sum(len(x) for x in first))
        return out


__all__ = ["Collector", "FEATURES", "ItemStats", "Ranker", "RankerError", "RankerParams", "RankingProbe",
           "features", "fit_ranker", "load_ranker", "recent_counts", "save_ranker"]
