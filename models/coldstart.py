"""Cold-start items, measured: hold items out of training entirely, then rank them as test targets.

Why this protocol: a product added this morning has attributes but no clicks.
To measure what the attribute part of the item vectors is worth for it, a
share of the items (chosen at random, ``seed``) loses every interaction from
the training sequences; the network is trained on the rest with the usual
defaults; the users whose test target is a held-out item are then evaluated
with the leave-one-out protocol (full ranking over all items, history
excluded), their inputs without the held-out items (nobody had clicked them).

Each figure comes twice: ranked among all items (can a new item beat the
established ones into a list?) and among the held-out items only (does the
network order the new items well, as a "new arrivals" row would need?).
The floor beside it is attribute popularity: an item scores the mean, over
its attributes, of the training clicks on items carrying that attribute, so a
held-out item from a popular brand or category ranks high.  A network without
attributes cannot rank a held-out item above chance and is shown for scale.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from models.data import DataError, Sessions
from models.sequences import MAX_LEN, PopularityModel, SequenceSet, hr_ndcg, read_sequences, score_last


def hold_out(data: SequenceSet, share: float, seed: int = 0) -> tuple[SequenceSet, np.ndarray]:
    """Drop a random ``share`` of items from every sequence except where they are a user's test target.

    Returns the reduced set (same vocabulary and attributes) and the held-out
    mask (N,).  Every user keeps the last item; the users whose last item is
    held out are the ones this evaluation scores.
    """
    if not 0.0 < share < 1.0:
        raise DataError(f"the held-out share must be in (0, 1), got {share}")
    rng = np.random.default_rng(seed)
    cold = np.zeros(data.n_items, dtype=bool)
    cold[rng.choice(data.n_items, size=max(1, int(round(share * data.n_items))), replace=False)] = True
    items, off = data.seqs.items, data.seqs.offsets
    last = np.zeros(len(items), dtype=bool)
    last[off[1:] - 1] = True
    keep = ~cold[items] | last  # (C,) a held-out item survives only as a test target
    owner = np.repeat(np.arange(len(off) - 1), np.diff(off))[keep]
    lens = np.bincount(owner, minlength=len(off) - 1)
    seqs = Sessions(items[keep], np.concatenate([[0], np.cumsum(lens)]).astype(np.int64))
    return SequenceSet(data.users, data.item_ids, seqs, data.attributes), cold


class AttributePopularity(PopularityModel):
    """Scores an item by the mean training popularity of its attributes (items without attributes: 0)."""

    def __init__(self, data: SequenceSet, counts: np.ndarray) -> None:
        if data.attributes is None:
            raise DataError("attribute popularity needs --item-attributes")
        a = data.attributes
        per = a.per_item()
        owner = np.repeat(np.arange(data.n_items), per)
        attr_pop = np.bincount(a.flat, weights=counts[owner], minlength=a.n_attributes)  # (A,)
        item_score = np.bincount(owner, weights=attr_pop[a.flat], minlength=data.n_items) / np.maximum(per, 1)
        super().__init__(item_score)


def cold_start(sequences_path: str, attributes_path: str, share: float = 0.1, seed: int = 0,
               preset: str | None = None, overrides: dict[str, Any] | None = None, progress: bool = False,
               log: Any = print) -> dict[str, Any]:
    """Train with and without attributes on the reduced set; HR/NDCG on the held-out test targets."""
    from models.train import fit, resolve_config

    data = read_sequences(sequences_path, attributes_path)
    reduced, cold = hold_out(data, share, seed)
    target = reduced.seqs.items[reduced.seqs.offsets[1:] - 1]  # (U,)
    scored = np.flatnonzero(cold[target] & (reduced.seqs.lengths >= 2))
    if len(scored) == 0:
        raise DataError("no user has a held-out test target; raise the share")
    ev = reduced.subset(scored)  # inputs without any held-out item but the target
    counts = reduced.counts(1)
    res: dict[str, Any] = {"share": share, "seed": seed, "held_out_items": int(cold.sum()), "users": int(len(scored)),
                           "max_len": MAX_LEN}
    base, name = resolve_config(data.n_items, preset, overrides)
    for use in (True, False):
        t0 = time.perf_counter()
        cfg = base.updated({"attributes": use})
        model, meta = fit(reduced.train_part(1), counts, cfg, progress=progress, log=log, attributes=data.attributes)
        folded = model.folded()
        res["network" if use else "network_without_attributes"] = {
            **hr_ndcg(score_last(folded, ev, 1)[0]),
            "among_held_out": hr_ndcg(score_last(folded, ev, 1, candidates=cold)[0]),
            "train_seconds": round(time.perf_counter() - t0, 1), "preset": name}
    for key, floor in (("attribute_popularity", AttributePopularity(data, counts)), ("popularity", PopularityModel(counts))):
        res[key] = {**hr_ndcg(score_last(floor, ev, 1)[0]),
                    "among_held_out": hr_ndcg(score_last(floor, ev, 1, candidates=cold)[0])}
    return res


__all__ = ["AttributePopularity", "cold_start", "hold_out"]
