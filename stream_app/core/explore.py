"""The "you may also like" list: items drawn from the network's softmax at a temperature, with the probability
each had, the exploration traffic a policy learner needs (logged propensities).

The sampling policy is the softmax of ``score / T`` over a row's candidate pool (the ranker's top C, recent
clicks and unavailable items already out; a popularity list's pool is weighted by popularity ** (1 / T)),
and the list is k draws without replacement (Gumbel top-k, i.e. Plackett-Luce). Each item comes with
``p``, its single-draw probability under that softmax: the pi(a | s) of off-policy estimators; with K
draws its chance of being in the list is close to 1 - (1 - p) ** K (Chen et al., WSDM 2019). The draw is
seeded by the click's (partition, offset), so a redelivered click gets the same list again.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def sample_lists(values: Sequence[Sequence[float]], indices: Sequence[Sequence[int]], k: int, temperature: float,
                 seeds: Sequence[tuple[int, int]], popular: Sequence[bool]) -> list[tuple[list[int], list[float]]]:
    """Per row: (k items drawn, each one's single-draw probability), from that row's candidates."""
    out: list[tuple[list[int], list[float]]] = []
    for vals, idx, seed, pop in zip(values, indices, seeds, popular):
        if not vals:
            out.append(([], []))
            continue
        v = np.asarray(vals, dtype=np.float64)
        logits = (np.log(np.maximum(v, 1e-30)) if pop else v) / temperature  # (C,)
        logits -= logits.max()
        p = np.exp(logits)
        p /= p.sum()
        keys = np.log(np.maximum(p, 1e-300)) + np.random.default_rng(list(seed)).gumbel(size=len(p))  # (C,)
        take = np.argsort(-keys, kind="stable")[: min(k, len(p))]
        out.append(([int(idx[j]) for j in take], [float(p[j]) for j in take]))
    return out


__all__ = ["sample_lists"]
