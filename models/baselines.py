"""Non-neural floors shown beside the network: popularity and a first-order Markov chain.

Both expose the same ``zero_state`` / ``step`` interface as ``SessionRNN`` so
one evaluation loop ranks them all identically.  Scores are made strictly
ordered with a popularity tie-break, so standard and conservative ties agree
for them and the floor is not flattered or punished by tie handling.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from models.data import Sessions


def popularity_tiebreak(counts: np.ndarray) -> np.ndarray:
    """Distinct values in [0, 1) ordered by click count (ties: lower index ranks higher), (N,)."""
    n = len(counts)
    order = np.argsort(-counts, kind="stable")  # most popular first
    tb = np.empty(n, dtype=np.float64)
    tb[order] = (n - np.arange(n)) / (n + 1.0)
    return tb


class PopularityScorer:
    """Recommends the most clicked training items regardless of the session."""

    def __init__(self, counts: np.ndarray) -> None:
        self.n_items = int(len(counts))
        self._scores = torch.as_tensor(popularity_tiebreak(np.asarray(counts)), dtype=torch.float32)  # (N,)

    def zero_state(self, batch: int) -> Tensor:
        """No state is needed; (B, 1) zeros keep the interface."""
        return torch.zeros(batch, 1)

    def step(self, state: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:
        """Same popularity scores for every row: (B, N)."""
        return state, self._scores.unsqueeze(0).expand(items.shape[0], -1)  # (B, 1), (B, N)


class MarkovScorer:
    """First-order Markov chain: score(j | i) = #(i -> j) in training + popularity tie-break (< 1)."""

    def __init__(self, sessions: Sessions, n_items: int, counts: np.ndarray | None = None) -> None:
        self.n_items = n_items
        items, off = sessions.items, sessions.offsets
        same = np.ones(len(items), dtype=bool)
        same[off[:-1]] = False  # a click whose predecessor lies in another session
        dst = items[same]
        src = items[np.flatnonzero(same) - 1]
        code, cnt = np.unique(src * n_items + dst, return_counts=True)
        self._rows = (code // n_items).astype(np.int64)
        self._cols = (code % n_items).astype(np.int64)
        self._vals = cnt.astype(np.float32)
        self._indptr = np.searchsorted(self._rows, np.arange(n_items + 1))  # CSR row pointers (N+1,)
        if counts is None:
            counts = np.bincount(items, minlength=n_items)
        self._tb = torch.as_tensor(popularity_tiebreak(np.asarray(counts)), dtype=torch.float32)  # (N,)

    def zero_state(self, batch: int) -> Tensor:
        """State = index of the last item, -1 before the first click: (B, 1)."""
        return torch.full((batch, 1), -1.0)

    def step(self, state: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:
        """Scores (B, N) of the successors of each row's current item."""
        prev = items.cpu().numpy().astype(np.int64)  # (B,)
        B = len(prev)
        starts, ends = self._indptr[prev], self._indptr[prev + 1]
        lens = ends - starts
        rows = np.repeat(np.arange(B), lens)
        pos = np.repeat(starts - np.cumsum(lens) + lens, lens) + np.arange(int(lens.sum()))
        scores = self._tb.unsqueeze(0).repeat(B, 1)  # (B, N)
        scores[torch.from_numpy(rows), torch.from_numpy(self._cols[pos])] += torch.from_numpy(self._vals[pos])
        return items.to(torch.float32).unsqueeze(1), scores  # (B, 1), (B, N)


__all__ = ["MarkovScorer", "PopularityScorer", "popularity_tiebreak"]
