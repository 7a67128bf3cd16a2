"""Re-ranking candidates into the served list: MMR, calibration and long-tail xQuAD as one greedy objective.

Each re-ranker is one strength in [0, 1) (0 = off, the default); whatever is on
is folded into one marginal value per candidate and position, so the list is
built greedily, position by position, for every row of the micro-batch at once
(k steps, each a few (B, C) tensor operations: no Python loop over candidates):

    value(c) = (1 - sum of strengths) * rel(c)                   relevance, min-max scaled to [0, 1] per row
             - mmr * max_{j in list} cos(e_c, e_j)                  MMR (Carbonell and Goldstein, 1998)
             - calibration * KL(p_user || q~_{list + c})            calibration (Steck, RecSys 2018)
             + long_tail * sum_d P(d|user) [c in d] (1 - |list in d| / |list|)   smooth xQuAD over
                                                                    head and tail (Abdollahpouri et al., 2019)

- MMR's similarity is the cosine of the network's output item embeddings.
- Calibration: an item's attribute distribution is uniform over its attribute
  ids; the user's is the mean over the history handed in (the worker's recent
  clicks, the evaluation's history); q~ = (1 - 0.01) q + 0.01 p as in Steck.
  Items without attributes add nothing to q.
- Long tail: the head is the 20 % most clicked items of the training data (the
  first vertical line of Abdollahpouri et al.'s Figure 1), every other item and
  every item added later is tail; P(tail | user) is the tail share of the
  history, smoothed towards one half, and never below one half: a user whose
  history is mostly head is served balanced lists, one who lives in the tail gets
  more of it, so the term never pulls a list towards the head (the purely
  personalised P of Abdollahpouri et al. did that on every set measured, whose
  networks already list more tail than their users click: docs/quality.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from models.beyond import CALIBRATION_ALPHA, attribute_mix, head_tail, unit_rows
from stream_app.core.candidates import padded


@dataclass(frozen=True)
class Strengths:
    """The re-ranking strengths (STREAMREC_MODEL__RERANK_*): 0 = off; their sum stays below 1."""

    mmr: float = 0.0
    calibration: float = 0.0
    long_tail: float = 0.0

    def __post_init__(self) -> None:
        parts = (self.mmr, self.calibration, self.long_tail)
        if any(not 0.0 <= s < 1.0 for s in parts) or sum(parts) >= 1.0:
            raise ValueError(f"re-ranking strengths must each be in [0, 1) and sum below 1, got {parts}")

    @property
    def on(self) -> bool:
        return self.mmr > 0 or self.calibration > 0 or self.long_tail > 0

    def names(self) -> tuple[str, ...]:
        """The re-rankers that are on, by name."""
        return tuple(n for n, s in (("mmr", self.mmr), ("calibration", self.calibration),
                                    ("long_tail", self.long_tail)) if s > 0)


@dataclass(frozen=True)
class ItemFacts:
    """What the re-rankers and the beyond-accuracy figures know of each item (index = the model's)."""

    unit: torch.Tensor  # (N, H) output embeddings scaled to unit length
    tail: torch.Tensor  # (N,) bool: outside the head
    indptr: np.ndarray | None = None  # (N + 1,) CSR of each item's attribute ids, or None without attributes
    groups: np.ndarray | None = None  # (L,)
    n_base: int = 0  # the trained items (the rest came through the catalogue)

    @classmethod
    def build(cls, out_emb: torch.Tensor, counts: np.ndarray | Sequence[float],
              attributes: tuple[np.ndarray, np.ndarray] | None = None) -> "ItemFacts":
        """``attributes`` as (flat attribute ids, offsets), the layout of the network's attribute pools."""
        indptr, groups = _csr(attributes) if attributes is not None else (None, None)
        return cls(unit_rows(out_emb), head_tail(np.asarray(counts, dtype=np.float64)), indptr, groups,
                   int(out_emb.shape[0]))

    @property
    def n_items(self) -> int:
        return int(self.unit.shape[0])

    def extended(self, new_out: torch.Tensor) -> "ItemFacts":
        """The trained items' facts plus items added after training (the live catalogue's): tail, no attributes."""
        base, n_new = self.n_base, int(new_out.shape[0])
        unit = unit_rows(new_out)  # (M, H)
        indptr = None
        if self.indptr is not None:
            indptr = np.concatenate([self.indptr[: base + 1], np.full(n_new, self.indptr[base])])
        return ItemFacts(torch.cat([self.unit[:base], unit]),
                         torch.cat([self.tail[:base], torch.ones(n_new, dtype=torch.bool)]), indptr, self.groups, base)


def _csr(attributes: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    flat, offsets = (np.asarray(a, dtype=np.int64) for a in attributes)
    return offsets, flat


TAIL_FLOOR = 0.5  # P(tail | user) never below: the long-tail term never favours the head


def tail_preference(facts: ItemFacts, history: Sequence[np.ndarray]) -> torch.Tensor:
    """P(tail | user) (B,): the history's tail share, smoothed by one head and one tail pseudo-click, at least
    ``TAIL_FLOOR``."""
    tail = facts.tail
    share = torch.tensor([(float(tail[torch.as_tensor(h, dtype=torch.long)].sum()) + 1.0) / (len(h) + 2.0)
                          if len(h) else 0.5 for h in history], dtype=torch.float32)
    return share.clamp(min=TAIL_FLOOR)


def rerank(values: torch.Tensor, items: torch.Tensor, k: int, strengths: Strengths, facts: ItemFacts,
           history: Sequence[np.ndarray] = ()) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The best ``k`` of each row's candidates under the greedy objective of the module docstring.

    ``values`` (B, C) are the candidates' scores, -inf where a row has fewer candidates; ``items`` (B, C) their
    item indices; ``history`` per row the item indices the user's taste is read from (calibration and long
    tail). Returns (scores (B, k'), items (B, k'), valid (B, k')) in list order, k' = min(k, C), with each
    picked item's original score; valid is False past the end of a row's candidates."""
    n_rows, n_cand = values.shape
    k = min(k, n_cand)
    valid = torch.isfinite(values)  # (B, C)
    lo = values.masked_fill(~valid, math.inf).min(dim=1, keepdim=True).values  # (B, 1)
    hi = values.masked_fill(~valid, -math.inf).max(dim=1, keepdim=True).values  # (B, 1)
    rel = ((values - lo) / (hi - lo).clamp(min=1e-12)).masked_fill(~valid, 0.0)  # (B, C)
    s = strengths
    base = (1.0 - s.mmr - s.calibration - s.long_tail) * rel  # (B, C)
    rows = torch.arange(n_rows)
    safe_items = items.clamp(min=0)
    if s.mmr:
        vec = facts.unit[safe_items]  # (B, C, H)
        sims = torch.bmm(vec, vec.transpose(1, 2))  # (B, C, C) every candidate pair, once
        max_sim = torch.zeros(n_rows, n_cand)  # (B, C) the first pick is not penalised
    if s.long_tail:
        tail_c = facts.tail[safe_items].to(torch.float32)  # (B, C)
        p_tail = tail_preference(facts, history) if len(history) else torch.full((n_rows,), 0.5)  # (B,)
        n_tail = torch.zeros(n_rows)  # (B,) tail items in the list so far
    calibrate = bool(s.calibration) and facts.indptr is not None and len(history) > 0
    if calibrate:
        p, m, has = attribute_mix(facts.indptr, facts.groups, history, safe_items.numpy())  # (B, G), (B, C, G), (B, C)
        log_p = torch.where(p > 0, p.log(), torch.zeros_like(p))  # (B, G)
        q_sum = torch.zeros_like(p)  # (B, G)
        q_n = torch.zeros(n_rows)  # (B,) list items with attributes
        has_f = has.to(torch.float32)  # (B, C)
    taken = ~valid  # (B, C)
    picked: list[torch.Tensor] = []
    ok_all: list[torch.Tensor] = []
    for pos in range(k):
        obj = base.clone()  # (B, C)
        if s.mmr:
            obj -= s.mmr * max_sim
        if s.long_tail:
            share = n_tail / pos if pos else torch.zeros(n_rows)  # (B,) tail share of the list so far
            cover_tail = 1.0 - share if pos else torch.ones(n_rows)
            cover_head = share if pos else torch.ones(n_rows)
            obj += s.long_tail * ((p_tail * cover_tail)[:, None] * tail_c
                                  + ((1.0 - p_tail) * cover_head)[:, None] * (1.0 - tail_c))
        if calibrate:
            q = (q_sum[:, None, :] + m) / (q_n[:, None] + has_f).clamp(min=1.0)[:, :, None]  # (B, C, G)
            q_t = (1.0 - CALIBRATION_ALPHA) * q + CALIBRATION_ALPHA * p[:, None, :]  # (B, C, G)
            kl = (p[:, None, :] * (log_p[:, None, :] - q_t.clamp(min=1e-12).log())).sum(dim=2)  # (B, C)
            obj -= s.calibration * kl
        obj = obj.masked_fill(taken, -math.inf)
        j = obj.argmax(dim=1)  # (B,)
        ok = ~taken[rows, j]  # (B,) rows that still had a candidate
        taken[rows[ok], j[ok]] = True
        picked.append(j)
        ok_all.append(ok)
        okf = ok.to(torch.float32)
        if s.mmr:
            sim = sims[rows, j]  # (B, C)
            max_sim = torch.where(ok[:, None], torch.maximum(max_sim, sim), max_sim)
        if s.long_tail:
            n_tail += tail_c[rows, j] * okf
        if calibrate:
            q_sum += m[rows, j] * okf[:, None]
            q_n += has_f[rows, j] * okf
    if not picked:
        empty = torch.zeros(n_rows, 0)
        return empty, empty.long(), empty.bool()
    order = torch.stack(picked, dim=1)  # (B, k)
    valid_out = torch.stack(ok_all, dim=1)  # (B, k)
    return values.gather(1, order), items.gather(1, order), valid_out


def rerank_lists(values: Sequence[Sequence[float]], indices: Sequence[Sequence[int]], k: int, strengths: Strengths,
                 facts: ItemFacts, history: Sequence[np.ndarray]) -> tuple[list[list[float]], list[list[int]]]:
    """:func:`rerank` for ragged Python lists (the worker's candidate lists), padded and cut back."""
    if max((len(v) for v in values), default=0) == 0:
        return [list(v) for v in values], [list(i) for i in indices]
    val, idx = padded(values, indices)
    out_v, out_i, ok = rerank(val, idx, k, strengths, facts, history)
    counts = ok.sum(dim=1).tolist()
    return ([row[:n] for row, n in zip(out_v.tolist(), counts)], [row[:n] for row, n in zip(out_i.tolist(), counts)])


def shaper(facts: ItemFacts, strengths: Strengths, k: int, candidates: int
           ) -> Callable[[torch.Tensor, list[np.ndarray]], torch.Tensor]:
    """The offline pipeline (``streamrec evaluate --rerank``): each row's top ``candidates`` by score,
    re-ranked to ``k``; -1 past the end of a short list (models/evaluate.py's ``Shaper``)."""

    def run(scores: torch.Tensor, history: list[np.ndarray]) -> torch.Tensor:
        top = torch.topk(scores, min(candidates, scores.shape[1]), dim=1)  # (b, C)
        _, items, ok = rerank(top.values, top.indices, k, strengths, facts, history)
        return items.masked_fill(~ok, -1)  # (b, k)

    return run


def parse_strengths(spec: str) -> Strengths:
    """``mmr=0.2,long_tail=0.1`` (the CLI's --rerank) as Strengths; ValueError naming what is wrong."""
    fields = {"mmr", "calibration", "long_tail"}
    values: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, value = part.partition("=")
        if not sep or name.strip() not in fields:
            raise ValueError(f"--rerank takes name=strength pairs with names {sorted(fields)}, got {part!r}")
        values[name.strip()] = float(value)
    return Strengths(**values)


__all__ = ["ItemFacts", "Strengths", "parse_strengths", "rerank", "rerank_lists", "shaper"]
