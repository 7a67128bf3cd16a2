"""Item side information: attribute ids per item, pooled into a vector beside the item's own embedding.

Why this shape: an item is represented as its id embedding plus a weighted
mean of its attributes' embeddings (IDF weights by default: an attribute most
items share says little), on the input and on the output side.  Plain
concatenation of a feature vector to the input does not help a session GRU
(Hidasi et al., p-RNN, RecSys 2016); a shared additive attribute part does two
things concatenation cannot: items that share a brand or category share
part of their vector (rare items borrow strength from frequent ones), and an
item with attributes but no clicks still gets a usable vector (training
starts its id part at zero, the attribute part is learned from others).

Attributes are ragged (Beauty has 1-6 per item, LastFM up to 625 tag entries), so
they are kept as CSR arrays (``flat`` ids and ``offsets`` per item) and pooled
with ``embedding_bag``; gathering the bags of a mini-batch's rows is a few
vectorised index operations, never a Python loop over items.

After training, ``SessionRNN.folded`` adds the pooled part into the id tables: serving
and evaluation see an ordinary network with the same outputs, so the stream
worker needs no attribute code on its hot path.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from models.data import DataError


@dataclass
class ItemAttributes:
    """Attribute ids per item, CSR-coded against an item vocabulary.

    ``names`` are the attribute ids as strings in index order; ``flat`` (L,)
    holds attribute indices, item i owns ``flat[offsets[i]:offsets[i + 1]]``.
    """

    names: list[str]
    flat: np.ndarray  # (L,) int64
    offsets: np.ndarray  # (N + 1,) int64

    @property
    def n_attributes(self) -> int:
        return len(self.names)

    @property
    def n_items(self) -> int:
        return int(len(self.offsets) - 1)

    def per_item(self) -> np.ndarray:
        """Attributes per item (N,)."""
        return np.diff(self.offsets)

    def to_meta(self) -> dict[str, Any]:
        """Plain data for the checkpoint's meta (the tensors travel in the state dict)."""
        return {"names": self.names, "links": int(len(self.flat))}

    @classmethod
    def build(cls, item_ids: Sequence[str], raw: Mapping[str, Sequence[Any]]) -> "ItemAttributes":
        """Code ``raw`` (item id -> attribute ids) for the items in ``item_ids``; unknown items are ignored.

        Attribute indices follow first appearance over ``item_ids``; repeated
        attributes of one item are kept once.
        """
        index: dict[str, int] = {}
        flat: list[int] = []
        offsets = [0]
        for item in item_ids:
            seen: set[int] = set()
            for a in raw.get(item, ()):
                j = index.setdefault(str(a), len(index))
                if j not in seen:
                    seen.add(j)
                    flat.append(j)
            offsets.append(len(flat))
        names = [""] * len(index)
        for name, j in index.items():
            names[j] = name
        return cls(names, np.asarray(flat, dtype=np.int64), np.asarray(offsets, dtype=np.int64))


def read_attributes(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Read an S3-Rec ``NAME_item2attributes.json`` (item id -> list of attribute ids) as strings."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"attribute file not found: {p}")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{p}: not JSON ({e})") from None
    if not isinstance(data, dict):
        raise DataError(f"{p}: expected an object of item id -> list of attribute ids, got {type(data).__name__}")
    out: dict[str, list[str]] = {}
    for item, attrs in data.items():
        if not isinstance(attrs, list) or not all(isinstance(a, (int, str)) and not isinstance(a, bool) for a in attrs):
            raise DataError(f"{p}: item {item!r}: attributes must be a list of ids, got {attrs!r:.80}")
        out[str(item)] = [str(a) for a in attrs]
    return out


def link_owners(offsets: Tensor) -> Tensor:
    """The item of each link (L,) of a CSR list with ``offsets`` (N+1,)."""
    counts = offsets[1:] - offsets[:-1]  # (N,)
    return torch.repeat_interleave(torch.arange(len(counts)), counts, output_size=int(offsets[-1]))  # (L,)


def bag_weights(flat: Tensor, offsets: Tensor, df: Tensor, n_items: int, pooling: str) -> Tensor:
    """Each link's weight (L,), an item's summing to 1: IDF log(1 + n_items / df) or equal (``"mean"``).

    ``df`` (A,) counts the items carrying each attribute (training's, also for items added later)."""
    if pooling == "idf":
        w = torch.log1p(n_items / df.to(torch.float64).clamp(min=1.0))[flat]  # (L,)
    elif pooling == "mean":
        w = torch.ones(flat.numel(), dtype=torch.float64)
    else:
        raise ValueError(f"unknown attribute pooling {pooling!r}; expected mean or idf")
    owner = link_owners(offsets)
    total = torch.zeros(len(offsets) - 1, dtype=torch.float64).index_add_(0, owner, w)  # (N,)
    return (w / total[owner]).to(torch.float32)


class AttributePool(nn.Module):
    """Weighted mean of attribute embeddings per item: ``forward(rows) -> (U, D)``.

    The attribute table is small (hundreds to a few thousand rows) and dense;
    its gradient is an ordinary dense gradient.  Items without attributes pool
    to zeros.
    """

    def __init__(self, n_attributes: int, links: int, n_items: int, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_attributes, width))  # (A, D)
        nn.init.normal_(self.weight, std=0.01)
        self.register_buffer("flat", torch.zeros(links, dtype=torch.int64))  # (L,)
        self.register_buffer("offsets", torch.zeros(n_items + 1, dtype=torch.int64))  # (N+1,)
        self.register_buffer("link_weight", torch.ones(links))  # (L,) each (item, attribute) pair's weight

    def load_attributes(self, attrs: ItemAttributes, pooling: str = "mean") -> None:
        """Copy the CSR arrays in (sizes must match the config the module was built with).

        ``pooling="idf"`` weighs an attribute by log(1 + N / items carrying it),
        so a category every item shares adds little and a brand adds much;
        ``"mean"`` weighs all of an item's attributes alike.
        """
        with torch.no_grad():
            self.flat.copy_(torch.from_numpy(attrs.flat))
            self.offsets.copy_(torch.from_numpy(attrs.offsets))
            self.link_weight.copy_(bag_weights(self.flat, self.offsets, self.attribute_counts(), attrs.n_items,
                                               pooling))

    def attribute_counts(self) -> Tensor:
        """Items carrying each attribute (A,), over the items the pool was loaded with."""
        return torch.bincount(self.flat, minlength=int(self.weight.shape[0]))

    def pool_new(self, flat: Tensor, offsets: Tensor, pooling: str = "mean") -> Tensor:
        """Pooled vectors (M, D) of items the network never saw, from their attribute indices (CSR).

        The weights are the ones training used: IDF from the training items'
        attribute counts (an attribute no training item carries gets the
        largest weight, as a count of one would), or plain means."""
        w = bag_weights(flat, offsets, self.attribute_counts(), int(self.offsets.numel()) - 1, pooling)  # (T,)
        return nn.functional.embedding_bag(flat, self.weight, offsets[:-1], mode="sum",
                                           per_sample_weights=w.to(self.weight.dtype))  # (M, D)

    def _bags(self, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The attributes of rows (U,) as one list: (attribute ids (T,), weights (T,), bag starts (U,))."""
        start = self.offsets[rows]  # (U,)
        count = self.offsets[rows + 1] - start  # (U,)
        bag_off = torch.cumsum(count, 0) - count  # (U,) where each bag starts in the gathered list
        total = int(count.sum())
        pos = torch.repeat_interleave(start - bag_off, count, output_size=total) + torch.arange(total)  # (T,)
        return self.flat[pos], self.link_weight[pos], bag_off

    def forward(self, rows: Tensor) -> Tensor:
        """Pooled attribute vectors (U, D) for item indices rows (U,)."""
        ids, w, bag_off = self._bags(rows)
        return nn.functional.embedding_bag(ids, self.weight, bag_off, mode="sum", per_sample_weights=w)  # (U, D)

    def all(self) -> Tensor:
        """Pooled vectors of every item (N, D)."""
        return nn.functional.embedding_bag(self.flat, self.weight, self.offsets[:-1], mode="sum",
                                           per_sample_weights=self.link_weight)  # (N, D)


__all__ = ["AttributePool", "ItemAttributes", "bag_weights", "link_owners", "read_attributes"]
