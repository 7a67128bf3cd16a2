"""Beyond-accuracy figures of recommended lists: coverage, exposure Gini, popularity, long tail, novelty,
intra-list diversity and miscalibration, accumulated batch by batch over an evaluation.

Definitions (each over the top-``k`` lists of every prediction):

- ``coverage@k``: share of the catalogue that appears in at least one list;
- ``gini@k``: Gini index of the items' exposure (how often each item is listed), 0 = equal, 1 = one item;
- ``popularity@k``: average recommended popularity, the mean training click count of a listed item
  (ARP, Abdollahpouri et al. 2019), and ``popularity_norm@k`` the same over the largest count;
- ``tail_share@k``: share of listed items in the long tail (outside the 20 % most clicked items);
- ``novelty@k``: mean self-information -log2 of a listed item's share of training clicks (+1 smoothed);
- ``ild@k``: intra-list diversity, the mean 1 - cosine of the output item embeddings over a list's pairs;
- ``miscalibration@k``: Steck's KL(p || q~) between the user's attribute mix (its history) and the list's,
  with q~ = 0.99 q + 0.01 p (only with item attributes).

The pure helpers (head and tail, an item's attribute mix) are shared with the worker's re-rankers
(``stream_app/core/rerank.py``), so the figures measure what the re-rankers optimise.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

CALIBRATION_ALPHA = 0.01  # Steck's q~ = (1 - alpha) q + alpha p keeps the KL finite
HEAD_SHARE = 0.2  # share of the items (by training clicks) that is the head
LIST_KS = (5, 10, 20)  # cut-offs of the lists' own accuracy figures


def unit_rows(emb: torch.Tensor) -> torch.Tensor:
    """(N, H) rows scaled to unit length (float32, detached): cosines are then plain products."""
    return torch.nn.functional.normalize(emb.detach().to(torch.float32), dim=1)


def unit_of(model: Any, n_items: int) -> torch.Tensor | None:
    """The unit output item embeddings of a network with ``out_emb`` over ``n_items``, else None (baselines)."""
    emb = getattr(model, "out_emb", None)
    return unit_rows(emb) if isinstance(emb, torch.Tensor) and emb.shape[0] == n_items else None


def head_tail(counts: np.ndarray, head_share: float = HEAD_SHARE) -> torch.Tensor:
    """(N,) bool, True for the tail: every item outside the ``head_share`` most clicked (ties by index)."""
    n = len(counts)
    head = np.argsort(-counts, kind="stable")[: int(math.ceil(head_share * n))]
    tail = np.ones(n, dtype=bool)
    tail[head] = False
    tail[counts <= 0] = True
    return torch.from_numpy(tail)


def expand(indptr: np.ndarray, groups: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each item's attribute ids, flat: (owner position (M,), attribute id (M,), weight 1/|attributes| (M,))."""
    items = np.asarray(items, dtype=np.int64)
    inside = items < len(indptr) - 1
    safe = np.where(inside, items, 0)
    starts = indptr[safe]
    lens = np.where(inside, indptr[safe + 1] - starts, 0)
    owner = np.repeat(np.arange(len(items)), lens)
    firsts = np.repeat(np.cumsum(lens) - lens, lens)
    ids = groups[np.repeat(starts, lens) + np.arange(int(lens.sum())) - firsts]
    return owner, ids, np.repeat(1.0 / np.maximum(lens, 1), lens)


def attribute_mix(indptr: np.ndarray, groups: np.ndarray, history: Sequence[np.ndarray], items: np.ndarray
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row, the user's attribute distribution over its own support and the candidates' shares of it.

    Returns p (B, G) (G = the largest support of a row, zero padded), m (B, C, G): candidate c's weight on the
    row's g-th attribute, and has (B, C) bool: the candidate has attributes at all. Only the history's
    attributes matter to KL(p || q), so nothing wider is built."""
    n_rows, n_cand = items.shape
    lens = np.asarray([len(h) for h in history], dtype=np.int64)
    flat_hist = np.concatenate([np.asarray(h, dtype=np.int64) for h in history]) if lens.sum() else np.zeros(0, np.int64)
    owner, ids, weight = expand(indptr, groups, flat_hist)
    row = np.repeat(np.arange(n_rows), lens)[owner]
    width = int(groups.max()) + 1 if len(groups) else 1
    keys, inverse = np.unique(row * width + ids, return_inverse=True)
    mass = np.bincount(inverse, weights=weight, minlength=len(keys))
    key_row = keys // width
    first = np.searchsorted(key_row, np.arange(n_rows))
    col = np.arange(len(keys)) - first[key_row]
    g = int(col.max()) + 1 if len(col) else 1
    p = np.zeros((n_rows, g), dtype=np.float64)
    p[key_row, col] = mass
    p /= np.maximum(p.sum(axis=1, keepdims=True), 1e-12)
    c_owner, c_ids, c_weight = expand(indptr, groups, items.reshape(-1))
    c_row = c_owner // n_cand
    pos = np.searchsorted(keys, c_row * width + c_ids)
    pos_safe = np.minimum(pos, max(len(keys) - 1, 0))
    hit = (pos < len(keys)) & (keys[pos_safe] == c_row * width + c_ids) if len(keys) else np.zeros(len(c_ids), bool)
    m = np.zeros((n_rows * n_cand, g), dtype=np.float64)
    np.add.at(m, (c_owner[hit], col[pos_safe[hit]]), c_weight[hit])
    has = np.zeros(n_rows * n_cand, dtype=bool)
    has[c_owner] = True
    return (torch.from_numpy(p.astype(np.float32)), torch.from_numpy(m.reshape(n_rows, n_cand, g).astype(np.float32)),
            torch.from_numpy(has.reshape(n_rows, n_cand)))


def miscalibration(indptr: np.ndarray, groups: np.ndarray, history: Sequence[np.ndarray],
                   lists: np.ndarray) -> np.ndarray:
    """Per row, KL(p || q~) of the history's attribute mix p against the list's q (B,); NaN where the history
    has no attributes."""
    p, m, has = attribute_mix(indptr, groups, history, lists)  # (B, G), (B, K, G), (B, K)
    q = m.sum(dim=1) / has.sum(dim=1, keepdim=True).clamp(min=1).to(torch.float32)  # (B, G)
    q_t = (1.0 - CALIBRATION_ALPHA) * q + CALIBRATION_ALPHA * p  # (B, G)
    terms = torch.where(p > 0, p * (p.clamp(min=1e-12).log() - q_t.clamp(min=1e-12).log()), torch.zeros_like(p))
    kl = terms.sum(dim=1).double().numpy()  # (B,)
    kl[(p.sum(dim=1) == 0).numpy()] = np.nan
    return kl


def gini(exposure: np.ndarray) -> float:
    """Gini index of non-negative exposure counts (N,): 0 when equal, towards 1 when one item takes all."""
    x = np.sort(np.asarray(exposure, dtype=np.float64))
    n, total = len(x), float(x.sum())
    if n == 0 or total == 0:
        return 0.0
    return float(((2 * np.arange(1, n + 1) - n - 1) * x).sum() / (n * total))


class ListFigures:
    """Accumulates the beyond-accuracy figures of top-k lists over batches (see the module docstring)."""

    def __init__(self, counts: np.ndarray, unit: torch.Tensor | None = None,
                 attributes: tuple[np.ndarray, np.ndarray] | None = None, k: int = 20) -> None:
        self.counts = np.asarray(counts, dtype=np.float64)
        self.n = len(self.counts)
        self.k = k
        self.tail = head_tail(self.counts).numpy()
        share = (self.counts + 1.0) / (self.counts.sum() + self.n)
        self.info = -np.log2(share)  # (N,) self-information
        self.unit = unit
        self.csr = attributes
        self.exposure = np.zeros(self.n, dtype=np.int64)
        self.listed = 0
        self.sums = {"popularity": 0.0, "tail": 0.0, "novelty": 0.0}
        self.ild_sum, self.ild_n = 0.0, 0
        self.kl_sum, self.kl_n = 0.0, 0
        self.positions: list[np.ndarray] = []  # where each target landed in its list (k + 1: not in it)

    def add(self, lists: torch.Tensor | np.ndarray, history: Sequence[np.ndarray] = (),
            targets: torch.Tensor | np.ndarray | None = None) -> None:
        """``lists`` (B, k) item indices, best first (-1 pads a short list); ``history`` per row for calibration;
        ``targets`` (B,), when given, for the lists' own hit rate, MRR and NDCG (a list position has no ties)."""
        arr = np.asarray(lists, dtype=np.int64)[:, : self.k]  # (B, k)
        ok = arr >= 0
        if targets is not None:
            hit = arr == np.asarray(targets, dtype=np.int64)[:, None]  # (B, k)
            self.positions.append(np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, arr.shape[1] + 1))
        items = arr[ok]
        np.add.at(self.exposure, items, 1)
        self.listed += len(items)
        self.sums["popularity"] += float(self.counts[items].sum())
        self.sums["tail"] += float(self.tail[items].sum())
        self.sums["novelty"] += float(self.info[items].sum())
        if self.unit is not None and arr.shape[1] > 1:
            full = ok.all(axis=1)
            if full.any():
                v = self.unit[torch.from_numpy(arr[full])]  # (b, k, H)
                sim = torch.bmm(v, v.transpose(1, 2))  # (b, k, k)
                kk = arr.shape[1]
                off_diag = (sim.sum(dim=(1, 2)) - sim.diagonal(dim1=1, dim2=2).sum(dim=1)) / (kk * (kk - 1))  # (b,)
                self.ild_sum += float((1.0 - off_diag).sum())
                self.ild_n += int(full.sum())
        if self.csr is not None and len(history):
            groups, indptr = (np.asarray(a, dtype=np.int64) for a in self.csr)  # (flat, offsets)
            kl = miscalibration(indptr, groups, history, np.where(ok, arr, self.n))
            good = ~np.isnan(kl)
            self.kl_sum += float(kl[good].sum())
            self.kl_n += int(good.sum())

    def result(self) -> dict[str, Any]:
        k, per = self.k, max(self.listed, 1)
        out: dict[str, Any] = {
            f"coverage@{k}": float((self.exposure > 0).sum()) / max(self.n, 1),
            f"gini@{k}": gini(self.exposure),
            f"popularity@{k}": self.sums["popularity"] / per,
            f"popularity_norm@{k}": self.sums["popularity"] / per / max(float(self.counts.max(initial=0.0)), 1.0),
            f"tail_share@{k}": self.sums["tail"] / per,
            f"novelty@{k}": self.sums["novelty"] / per,
            f"ild@{k}": self.ild_sum / self.ild_n if self.ild_n else None,
            f"miscalibration@{k}": self.kl_sum / self.kl_n if self.kl_n else None,
        }
        if self.positions:
            r = np.concatenate(self.positions).astype(np.float64)
            for cut in (c for c in LIST_KS if c <= k):
                hit = r <= cut
                out[f"hr@{cut}"] = float(hit.mean())
                out[f"mrr@{cut}"] = float(np.where(hit, 1.0 / r, 0.0).mean())
                out[f"ndcg@{cut}"] = float(np.where(hit, 1.0 / np.log2(r + 1.0), 0.0).mean())
        return out


__all__ = ["CALIBRATION_ALPHA", "HEAD_SHARE", "ListFigures", "attribute_mix", "expand", "gini", "head_tail",
           "miscalibration", "unit_of", "unit_rows"]
