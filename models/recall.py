"""Candidate recall: the network's own best items plus cheap complementary sources, merged per row.

A storefront ranks a few hundred candidates, not the catalogue. The candidates of one click come from:

- ``network``: the network's top items under the click's scores (exact top-k here; the worker can take
  them from its ANN index);
- ``covisitation``: items clicked near the session's last item in the training sessions. For every
  click a, the click d positions later in the same session adds 1/d to (a -> b) and 0.5/d to (b -> a),
  for d up to ``WINDOW``; each item keeps its ``width`` heaviest neighbours;
- ``attributes``: items that share attributes with the last item, weighed by the shared attributes'
  inverse document frequency, the most clicked first among equals.

Each complementary source is an item -> item table, dense (N, M) with -1 past a short row, so a batch
of last items gathers its neighbours in one index operation. :func:`merge` fills a budget of ``size``
candidates per row in priority order: the complementary sources' quotas first (their share of the
budget each), then the network's items by score; duplicates and items whose score is -inf (excluded,
blocked) never count. Every candidate keeps a bit per source it is in (``SOURCE_BITS``), which the
ranker reads as features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from models.data import Sessions

WINDOW = 3
WIDTH = 100  # neighbours kept per item and table
SOURCES = ("network", "covisitation", "attributes")
SOURCE_BITS = {name: 1 << i for i, name in enumerate(SOURCES)}
RECALL_SIZES = (100, 200, 500)


@dataclass(frozen=True)
class Neighbours:
    """An item -> item table: ``index`` (N, M) long (-1 past a short row) and ``weight`` (N, M) float32."""

    index: Tensor
    weight: Tensor

    @property
    def n_items(self) -> int:
        return int(self.index.shape[0])

    def of(self, items: Tensor, m: int) -> tuple[Tensor, Tensor]:
        """The first ``m`` neighbours of each item (B,): (index (B, m), weight (B, m)); items past the table
        (added after training) and negative ones have none."""
        m = min(m, int(self.index.shape[1]))
        inside = (items >= 0) & (items < self.n_items)
        safe = torch.where(inside, items, torch.zeros_like(items))
        idx = self.index[safe, :m].masked_fill(~inside[:, None], -1)  # (B, m)
        return idx, self.weight[safe, :m].masked_fill(~inside[:, None], 0.0)

    def to_data(self) -> dict[str, Tensor]:
        return {"index": self.index.to(torch.int32), "weight": self.weight.to(torch.float16)}

    @classmethod
    def from_data(cls, data: dict[str, Tensor]) -> "Neighbours":
        return cls(data["index"].to(torch.long), data["weight"].to(torch.float32))


def top_rows(a: np.ndarray, b: np.ndarray, w: np.ndarray, n_items: int, width: int = WIDTH,
             tiebreak: np.ndarray | None = None) -> Neighbours:
    """Weights of pairs (a -> b) summed, then each a's ``width`` heaviest b (ties: larger ``tiebreak`` (N,),
    then the lower index); pairs a == b are dropped."""
    a, b, w = (np.asarray(x) for x in (a, b, w))
    own = a != b
    keys, inverse = np.unique(a[own].astype(np.int64) * n_items + b[own], return_inverse=True)
    sums = np.bincount(inverse, weights=w[own], minlength=len(keys))
    ra, rb = keys // n_items, keys % n_items
    second = tiebreak[rb] if tiebreak is not None else np.zeros(len(rb))
    order = np.lexsort((rb, -second, -sums, ra))
    ra, rb, sums = ra[order], rb[order], sums[order]
    rank = np.arange(len(ra)) - np.searchsorted(ra, np.arange(n_items))[ra]
    keep = rank < width
    index = np.full((n_items, width), -1, dtype=np.int64)
    weight = np.zeros((n_items, width), dtype=np.float32)
    index[ra[keep], rank[keep]] = rb[keep]
    weight[ra[keep], rank[keep]] = sums[keep]
    return Neighbours(torch.from_numpy(index), torch.from_numpy(weight))


def covisitation(sessions: Sessions, n_items: int, width: int = WIDTH, window: int = WINDOW) -> Neighbours:
    """The co-visitation table of training sessions (module docstring); ties go to the more clicked item."""
    items = np.asarray(sessions.items, dtype=np.int64)
    owner = np.repeat(np.arange(sessions.n_sessions), sessions.lengths)
    parts_a, parts_b, parts_w = [], [], []
    for d in range(1, window + 1):
        same = owner[d:] == owner[:-d]
        first, later = items[:-d][same], items[d:][same]
        parts_a += [first, later]
        parts_b += [later, first]
        parts_w += [np.full(len(first), 1.0 / d), np.full(len(first), 0.5 / d)]
    if not parts_a:
        return top_rows(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), n_items, width)
    counts = np.bincount(items, minlength=n_items).astype(np.float64)
    return top_rows(np.concatenate(parts_a), np.concatenate(parts_b), np.concatenate(parts_w), n_items, width, counts)


def attribute_neighbours(attributes: tuple[np.ndarray, np.ndarray], counts: np.ndarray,
                         width: int = WIDTH) -> Neighbours:
    """Items sharing attributes with each item: sum of the shared attributes' idf, the more clicked first.

    ``attributes`` is (flat attribute ids, offsets) over the items; only each attribute's ``width`` most
    clicked items are paired, which bounds the work by (memberships x width)."""
    flat, offsets = (np.asarray(x, dtype=np.int64) for x in attributes)
    counts = np.asarray(counts, dtype=np.float64)
    n_items = len(offsets) - 1
    owner = np.repeat(np.arange(n_items), np.diff(offsets))
    if len(flat) == 0:
        return top_rows(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), n_items, width)
    n_groups = int(flat.max()) + 1
    df = np.bincount(flat, minlength=n_groups)
    idf = np.log((n_items + 1.0) / (df + 1.0))  # (G,)
    order = np.lexsort((owner, -counts[owner], flat))  # by attribute, most clicked first
    g_sorted, i_sorted = flat[order], owner[order]
    g_start = np.searchsorted(g_sorted, np.arange(n_groups))
    rank = np.arange(len(g_sorted)) - g_start[g_sorted]
    top = rank < width
    g_top, i_top = g_sorted[top], i_sorted[top]  # each attribute's best items, grouped by attribute
    t_start = np.searchsorted(g_top, np.arange(n_groups + 1))
    lens = t_start[flat + 1] - t_start[flat]  # (memberships,) partners of each (item, attribute)
    a = np.repeat(owner, lens)
    firsts = np.repeat(np.cumsum(lens) - lens, lens)
    b = i_top[np.repeat(t_start[flat], lens) + np.arange(int(lens.sum())) - firsts]
    w = np.repeat(idf[flat], lens)
    return top_rows(a, b, w, n_items, width, counts)


@dataclass(frozen=True)
class Candidates:
    """Per row the merged candidates: ``items`` (B, C) long (-1 past a short row), their network ``values``
    (B, C) (-inf past a short row), ``valid`` (B, C) bool and ``sources`` (B, C) int: OR of ``SOURCE_BITS``
    of the sources the item came from."""

    items: Tensor
    values: Tensor
    valid: Tensor
    sources: Tensor

    def contains(self, targets: Tensor) -> Tensor:
        """(B,) bool: the row's target is one of its candidates."""
        return ((self.items == targets[:, None]) & self.valid).any(dim=1)

    def rows(self, rows: Tensor) -> "Candidates":
        return Candidates(self.items[rows], self.values[rows], self.valid[rows], self.sources[rows])


@dataclass(frozen=True)
class RecallConfig:
    """The candidate budget and each complementary source's share of it (0 = off)."""

    size: int = 200
    covisitation: float = 0.25
    attributes: float = 0.1

    def __post_init__(self) -> None:
        if self.size < 1 or not 0 <= self.covisitation <= 1 or not 0 <= self.attributes <= 1 \
                or self.covisitation + self.attributes > 1:
            raise ValueError(f"recall needs size >= 1 and source shares in [0, 1] summing to at most 1, got {self}")

    def quotas(self) -> tuple[int, int]:
        return int(round(self.size * self.covisitation)), int(round(self.size * self.attributes))

    def sized(self, size: int) -> "RecallConfig":
        return RecallConfig(size, self.covisitation, self.attributes)

    @classmethod
    def parse(cls, spec: str, size: int = 200) -> "RecallConfig | None":
        """``covisitation=0.25,attributes=0.1`` (the CLI's --recall) as a config; ``off`` as None."""
        if spec.strip() == "off":
            return None
        values: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, sep, value = part.partition("=")
            if not sep or name.strip() not in ("covisitation", "attributes"):
                raise ValueError(f"--recall takes covisitation=SHARE,attributes=SHARE or off, got {part!r}")
            values[name.strip()] = float(value)
        return cls(size, **values)


def merge(scores: Tensor, last: Tensor, config: RecallConfig, covis: Neighbours | None = None,
          attrs: Neighbours | None = None) -> Candidates:
    """Each row's ``config.size`` candidates (module docstring) under full scores (B, N), -inf where an item
    must not be shown; ``last`` (B,) the session's last item (-1: none)."""
    size = min(config.size, scores.shape[1])
    top = torch.topk(scores, size, dim=1)
    blocks = []
    for name, items in neighbour_blocks(last, config, covis, attrs):
        safe = items.clamp(min=0, max=scores.shape[1] - 1)
        blocks.append((name, items, scores.gather(1, safe).masked_fill(items < 0, -torch.inf)))
    return merge_scored(blocks + [("network", top.indices, top.values)], size)


def neighbour_blocks(last: Tensor, config: RecallConfig, covis: Neighbours | None,
                     attrs: Neighbours | None) -> list[tuple[str, Tensor]]:
    """The complementary sources' items (B, quota) for the last items (B,), in priority order."""
    q_cov, q_att = config.quotas()
    return [(name, table.of(last, quota)[0]) for name, table, quota in
            (("covisitation", covis, q_cov), ("attributes", attrs, q_att)) if table is not None and quota > 0]


def merge_scored(blocks: Sequence[tuple[str, Tensor, Tensor]], size: int) -> Candidates:
    """The first ``size`` distinct items of each row over ``blocks`` (name, items (B, m), values (B, m)) in
    priority order; an entry with item -1 or a value of -inf never counts. Every kept item gets the bits of
    all blocks it is in."""
    cat = torch.cat([b[1] for b in blocks], dim=1)  # (B, W)
    val = torch.cat([b[2] for b in blocks], dim=1)  # (B, W)
    n_rows, width = cat.shape
    ok = (cat >= 0) & torch.isfinite(val)
    keyed = torch.where(ok, cat, cat.max().clamp(min=0) + 1 + torch.arange(width).expand(n_rows, width))  # never collide
    srt, perm = torch.sort(keyed, dim=1, stable=True)
    dup = torch.zeros_like(ok)
    dup.scatter_(1, perm[:, 1:], srt[:, 1:] == srt[:, :-1])  # a later copy of an item already taken
    ok &= ~dup
    ok &= torch.cumsum(ok.to(torch.int32), dim=1) <= size
    order = torch.sort((~ok).to(torch.int32) * width + torch.arange(width), dim=1).indices[:, :size]  # kept first
    valid = ok.gather(1, order)
    items = cat.gather(1, order).masked_fill(~valid, -1)  # (B, size)
    values = val.gather(1, order).masked_fill(~valid, -torch.inf)
    sources = torch.zeros_like(items)
    for name, block, bval in blocks:
        good = (block >= 0) & torch.isfinite(bval)
        inside = ((items[:, :, None] == block[:, None, :]) & good[:, None, :]).any(dim=2) & valid  # (B, size)
        sources |= torch.where(inside, SOURCE_BITS[name], 0)
    return Candidates(items, values, valid, sources)


def last_items(history: Sequence[np.ndarray]) -> Tensor:
    """(B,) each history's last item, -1 for an empty one (the sources' query item)."""
    return torch.tensor([int(h[-1]) if len(h) else -1 for h in history], dtype=torch.long)


def used_shares(config: RecallConfig, covis: Neighbours | None, attrs: Neighbours | None) -> dict[str, float]:
    """The shares of the budget the sources really take: 0 for a source without a table."""
    return {"covisitation": config.covisitation if covis is not None else 0.0,
            "attributes": config.attributes if attrs is not None else 0.0}


class RecallProbe:
    """Accumulates, over an evaluation, the share of targets inside the merged candidates at each size and
    inside the network's exact top of the same size (full ranking)."""

    def __init__(self, config: RecallConfig, covis: Neighbours | None, attrs: Neighbours | None,
                 sizes: Sequence[int] = RECALL_SIZES) -> None:
        self.config, self.covis, self.attrs, self.sizes = config, covis, attrs, tuple(sizes)
        self.hits = {s: 0 for s in self.sizes}
        self.exact = {s: 0 for s in self.sizes}
        self.n = 0

    def add(self, scores: Tensor, history: Sequence[np.ndarray], targets: Tensor) -> None:
        last = last_items(history)
        t = scores.gather(1, targets[:, None])  # (B, 1)
        above = (scores > t).sum(dim=1) + 1  # standard rank; a -inf target is never counted as found
        found = torch.isfinite(t[:, 0])
        for s in self.sizes:
            cand = merge(scores, last, self.config.sized(s), self.covis, self.attrs)
            self.hits[s] += int(cand.contains(targets).sum())
            self.exact[s] += int(((above <= s) & found).sum())
        self.n += int(len(targets))

    def result(self) -> dict[str, float | int | dict[str, float]]:
        n = max(self.n, 1)
        return {f"recall@{s}": self.hits[s] / n for s in self.sizes} | {
            "network_exact": {f"recall@{s}": self.exact[s] / n for s in self.sizes},
            "shares": used_shares(self.config, self.covis, self.attrs),
            "predictions": self.n,
        }


__all__ = ["Candidates", "Neighbours", "RECALL_SIZES", "RecallConfig", "RecallProbe", "SOURCES", "SOURCE_BITS",
           "WIDTH", "WINDOW", "attribute_neighbours", "covisitation", "last_items", "merge", "merge_scored",
           "neighbour_blocks",
           "top_rows", "used_shares"]
