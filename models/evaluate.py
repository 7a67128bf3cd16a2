"""Next-item evaluation with full ranking, standard and conservative ties.

Protocol (the one the published GRU4Rec numbers use, see the data README):
the state starts from zero at each test session; after every click the model
ranks *all* training items for the next click; rank = 1 + #items scoring
strictly higher (standard) or #items scoring >= the target, the target counted
once (conservative, the headline).  Test clicks on items unknown to the model
are removed from their session before evaluation (the session continues with
its next known click, the state is not advanced by the unknown click);
sessions left with < 2 clicks give no prediction.  The number of removed
clicks is reported as ``skipped_unknown``.

Sessions are evaluated many at a time: sorted by length (longest first) and
cut into batches, so at time step t the still-running sessions of a batch are
a prefix and the state is just sliced.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Protocol

import numpy as np
import torch
from torch import Tensor

from models.beyond import ListFigures, unit_of
from models.data import Sessions

KS: tuple[int, ...] = (1, 5, 10, 20)

# (scores (b, N), per row the item indices the user's taste is read from) -> lists (b, k), best first, -1 past
# a short list
Shaper = Callable[[Tensor, list[np.ndarray]], Tensor]
# (scores (b, N), history per row, targets (b,)) -> None: watches every prediction (candidate recall, ranker data)
Probe = Callable[[Tensor, list[np.ndarray], Tensor], None]


class Scorer(Protocol):
    """Anything that ranks the next item click by click (SessionRNN and the baselines)."""

    def zero_state(self, batch: int) -> Tensor: ...

    def step(self, state: Tensor, items: Tensor) -> tuple[Tensor, Tensor]: ...


def ranks_of(scores: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """(standard, conservative) ranks (B,) of targets (B,) under scores (B, N); NaN scores rank last."""
    t = scores.gather(1, targets.unsqueeze(1))  # (B, 1)
    higher = (scores > t).sum(dim=1, dtype=torch.int32)  # (B,)  int32 sum: ~2x faster than the int64 default
    geq = (scores >= t).sum(dim=1, dtype=torch.int32)  # (B,)
    bad = torch.isnan(t.squeeze(1))  # (B,)
    n = scores.shape[1]
    standard = torch.where(bad, torch.full_like(higher, n), higher + 1)  # (B,)
    conservative = torch.where(bad, torch.full_like(geq, n), geq)  # (B,)
    return standard, conservative


def metrics_from_ranks(ranks: np.ndarray, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """Recall@K, MRR@K and NDCG@K averaged over predictions (one target each)."""
    r = ranks.astype(np.float64)
    out: dict[str, float] = {}
    n = max(len(r), 1)
    for k in ks:
        hit = r <= k
        out[f"recall@{k}"] = float(hit.sum() / n)
        out[f"mrr@{k}"] = float(np.where(hit, 1.0 / r, 0.0).sum() / n)
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(r + 1.0), 0.0).sum() / n)
    return out


def evaluate_scorer(
    scorer: Scorer,
    sessions: Sessions,
    n_items: int,
    counts: np.ndarray | None = None,
    ks: tuple[int, ...] = KS,
    batch_size: int = 256,
    top_n: int = 20,
    shape: Shaper | None = None,
    attributes: tuple[np.ndarray, np.ndarray] | None = None,
    probe: Probe | None = None,
) -> dict[str, Any]:
    """Evaluate a scorer on coded sessions; conservative metrics at top level, standard under "standard".

    ``counts`` (training clicks per item) enables the popularity-bias figure of
    the top-``top_n`` lists (mean of count/max count over recommended items) and
    the beyond-accuracy figures under "lists" (models/beyond.py; intra-list
    diversity needs the scorer's ``out_emb``, miscalibration ``attributes`` as
    (flat, offsets)); coverage is the share of items that appear in at least one
    top list. ``shape`` turns each step's scores into the lists a re-ranking
    pipeline would serve (stream_app/core/rerank.py): "lists" then holds those
    lists' hit rate, MRR and NDCG at ``top_n`` beside their figures. ``probe`` sees
    every step's scores, history and next clicks (models/recall.py, models/ranker.py).
    """
    t0 = time.perf_counter()
    lengths = sessions.lengths
    sel = np.flatnonzero(lengths >= 2)
    sel = sel[np.argsort(-lengths[sel], kind="stable")]
    std_all: list[Tensor] = []
    cons_all: list[Tensor] = []
    covered = torch.zeros(n_items, dtype=torch.bool)
    pop_norm = None
    if counts is not None and len(counts) == n_items and counts.max() > 0:
        pop_norm = torch.as_tensor(counts / counts.max(), dtype=torch.float64)  # (N,)
    pop_sum = 0.0
    k_top = min(top_n, n_items)
    figures = ListFigures(counts, unit_of(scorer, n_items), attributes, top_n) if counts is not None and len(counts) == n_items else None
    with torch.inference_mode():
        for b0 in range(0, len(sel), batch_size):
            chunk = sel[b0:b0 + batch_size]
            lens = lengths[chunk]
            T = int(lens[0])
            mat = np.zeros((T, len(chunk)), dtype=np.int64)  # (T, b) padded item matrix
            for j, s in enumerate(chunk):
                mat[: lens[j], j] = sessions.items[sessions.offsets[s]:sessions.offsets[s + 1]]
            x = torch.from_numpy(mat)  # (T, b)
            active = [(lens > t + 1).sum() for t in range(T - 1)]
            state = scorer.zero_state(len(chunk))  # (b, S)
            for t in range(T - 1):
                nb = int(active[t])
                state, scores = scorer.step(state[:nb], x[t, :nb])  # (nb, S), (nb, N)
                std, cons = ranks_of(scores, x[t + 1, :nb])
                std_all.append(std)
                cons_all.append(cons)
                top = torch.topk(scores, k_top, dim=1).indices  # (nb, k)
                covered[top.reshape(-1)] = True
                if pop_norm is not None:
                    pop_sum += float(pop_norm[top].mean(dim=1).sum())
                history = list(x[: t + 1, :nb].t().numpy())  # per row, the session so far
                lists = shape(scores, history) if shape is not None else top  # (nb, k)
                if figures is not None:  # with a pipeline, where the next click landed in its lists
                    figures.add(lists, history, x[t + 1, :nb] if shape is not None else None)
                if probe is not None:
                    probe(scores, history, x[t + 1, :nb])
    std_r = torch.cat(std_all).numpy().astype(np.int64) if std_all else np.zeros(0, dtype=np.int64)
    cons_r = torch.cat(cons_all).numpy().astype(np.int64) if cons_all else np.zeros(0, dtype=np.int64)
    n_pred = int(len(cons_r))
    res: dict[str, Any] = metrics_from_ranks(cons_r, ks)
    res[f"coverage@{top_n}"] = float(covered.sum()) / n_items
    if pop_norm is not None:
        res[f"popularity@{top_n}"] = pop_sum / max(n_pred, 1)
    res["predictions"] = n_pred
    res["standard"] = metrics_from_ranks(std_r, ks)
    if figures is not None:
        res["lists"] = figures.result()
    res["eval_seconds"] = round(time.perf_counter() - t0, 3)
    return res


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    """Replace NaN/inf floats by None so the JSON output is strict."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out[k] = _finite(v)
        elif isinstance(v, float) and not math.isfinite(v):
            out[k] = None
        else:
            out[k] = v
    return out


def evaluate_checkpoint(
    ckpt_path: str,
    test_path: str,
    baselines: bool = False,
    train_path: str | None = None,
    batch_size: int = 256,
    shaper: Callable[[Any], Shaper] | None = None,
    probes: Callable[[Any], Any] | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint on a GRU4Rec TSV; optional popularity / Markov floors.

    The Markov chain needs the training clicks: ``train_path`` or the path
    recorded in the checkpoint's meta; it is skipped (with a note) if neither
    can be read. ``shaper`` builds, from the loaded checkpoint, the list-shaping
    pipeline the network's lists are evaluated through (``evaluate_scorer``'s ``shape``).
    ``probes`` builds, from the checkpoint, a probe that watches every prediction and adds its
    figures to the result (``into``): candidate recall, the ranker's order (models/pipeline.py).
    """
    from models.baselines import MarkovScorer, PopularityScorer
    from models.checkpoint import load_checkpoint
    from models.data import DataError, encode, read_tsv

    ckpt = load_checkpoint(ckpt_path)
    test_log = read_tsv(test_path)
    sessions, skipped = encode(test_log, ckpt.item_index)
    n = len(ckpt.item_ids)
    counts = ckpt.item_counts.numpy()
    watch = probes(ckpt) if probes is not None else None
    res = evaluate_scorer(ckpt.model, sessions, n, counts, batch_size=batch_size,
                          shape=shaper(ckpt) if shaper is not None else None, attributes=ckpt.attribute_lists(),
                          probe=watch)
    if watch is not None:
        watch.into(res)
    res["skipped_unknown"] = skipped
    res["model_version"] = ckpt.version
    res["checkpoint"] = str(ckpt_path)
    res["test"] = str(test_path)
    if baselines:
        base: dict[str, Any] = {"popularity": evaluate_scorer(PopularityScorer(counts), sessions, n, counts, batch_size=batch_size)}
        tp = train_path or ckpt.meta.get("train_path")
        try:
            if not tp:
                raise DataError("no training data path given or recorded in the checkpoint")
            train_sessions, _ = encode(read_tsv(tp), ckpt.item_index)
            base["markov"] = evaluate_scorer(MarkovScorer(train_sessions, n, counts), sessions, n, counts, batch_size=batch_size)
        except (DataError, OSError) as e:
            base["markov"] = {"error": f"Markov baseline skipped: {e}"}
        res["baselines"] = base
    return _finite(res)


__all__ = ["KS", "Probe", "Scorer", "Shaper", "evaluate_checkpoint", "evaluate_scorer", "metrics_from_ranks", "ranks_of"]
