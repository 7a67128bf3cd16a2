"""The offline candidate pipeline around a checkpoint: recall tables from its training data, the ranker's
training run, and the probes ``streamrec evaluate`` adds (candidate recall, ranker vs network order).

Both protocols are served: click logs (GRU4Rec TSVs; the ranker learns on a validation TSV the
network was not trained on) and user sequences (the S3-Rec format; the ranker learns on each user's
validation item, so the network must be trained with ``streamrec train --validate``, which keeps it out).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from models.data import ClickLog, DataError, Sessions, encode, read_tsv
from models.evaluate import evaluate_scorer
from models.ranker import (Collector, ItemStats, RankerParams, RankingProbe, fit_ranker, load_ranker, recent_counts,
                           save_ranker)
from models.recall import Neighbours, RecallConfig, RecallProbe, attribute_neighbours, covisitation
from models.sequences import aligned, score_last


def sources_for(ckpt: Any, train: Sessions) -> tuple[Neighbours, Neighbours | None]:
    """(co-visitation table of the training sessions, attribute table or None without attributes)."""
    n = len(ckpt.item_ids)
    attributes = ckpt.attribute_lists()
    attrs = attribute_neighbours(attributes, ckpt.item_counts.numpy()) if attributes is not None else None
    return covisitation(train, n), attrs


def log_training(ckpt: Any, train_path: str | None) -> tuple[Sessions, np.ndarray]:
    """A click log checkpoint's training sessions and each item's clicks in the latest tenth of its time."""
    path = train_path or ckpt.meta.get("train_path")
    if not path:
        raise DataError("no training data path given (--train) or recorded in the checkpoint")
    log: ClickLog = read_tsv(path)
    sessions, _ = encode(log, ckpt.item_index)
    idx = np.fromiter((ckpt.item_index.get(s, -1) for s in log.item.tolist()), dtype=np.int64, count=len(log))
    order = np.argsort(log.time, kind="stable")
    coded = idx[order]
    return sessions, recent_counts(coded[coded >= 0], len(ckpt.item_ids))


def sequence_training(data: Any, holdout: int) -> tuple[Sessions, np.ndarray]:
    """Each user's items before the target, and per item the clicks in the latest tenth of each history."""
    train = data.train_part(holdout)
    lens = train.lengths
    pos = np.arange(len(train.items)) - np.repeat(train.offsets[:-1], lens)
    late = pos >= np.repeat(np.floor(0.9 * lens), lens)
    return train, np.bincount(train.items[late], minlength=data.n_items).astype(np.float64)


def stats_for(ckpt: Any, train: Sessions, recent: np.ndarray) -> ItemStats:
    covis, attrs = sources_for(ckpt, train)
    return ItemStats.build(ckpt.model.out_emb, ckpt.item_counts.numpy(), recent, covis, attrs, ckpt.attribute_lists())


Probe = Callable[[Tensor, list[np.ndarray], Tensor], None]


class Probes:
    """What ``streamrec evaluate`` watches besides its own figures: candidate recall, and with a ranker file
    the ranker's order against the network's on the same candidates."""

    def __init__(self, recall: RecallProbe | None, ranking: RankingProbe | None, note: str | None = None) -> None:
        self.recall, self.ranking, self.note = recall, ranking, note

    def __call__(self, scores: Tensor, history: list[np.ndarray], targets: Tensor) -> None:
        if self.recall is not None:
            self.recall.add(scores, history, targets)
        if self.ranking is not None:
            self.ranking(scores, history, targets)

    def into(self, res: dict[str, Any]) -> dict[str, Any]:
        if self.recall is not None:
            res["recall"] = self.recall.result()
        if self.ranking is not None:
            res["ranking"] = self.ranking.result()
        if self.note:
            res["recall"] = {"error": self.note}
        return res


def _probes(ckpt: Any, training: Callable[[], Sessions], recall: RecallConfig | None, ranker_path: str | None) -> Probes:
    ranker = load_ranker(ranker_path, ckpt) if ranker_path else None
    rp = None
    if recall is not None:
        covis_attrs = (ranker.stats.covis, ranker.stats.attrs) if ranker is not None else sources_for(ckpt, training())
        rp = RecallProbe(recall, *covis_attrs)
    return Probes(rp, RankingProbe(ranker) if ranker is not None else None)


def log_probes(recall: RecallConfig | None, ranker_path: str | None = None,
               train_path: str | None = None) -> Callable[[Any], Probes] | None:
    """``evaluate_checkpoint``'s probes: candidate recall at ``recall``'s shares (None: off) and the ranker file's
    order (None: off); the recall tables are the ranker's when it is given, else built from the checkpoint's
    training clicks (``train_path`` or the recorded one). Without those clicks the recall is skipped with a
    note (the ranker's own tables need none)."""
    if recall is None and not ranker_path:
        return None

    def build(ckpt: Any) -> Probes:
        try:
            return _probes(ckpt, lambda: log_training(ckpt, train_path)[0], recall, ranker_path)
        except (DataError, OSError) as e:
            if ranker_path:
                raise
            return Probes(None, None, f"candidate recall skipped: {e}")

    return build


def sequence_probes(recall: RecallConfig | None, ranker_path: str | None = None) -> Callable[..., Probes] | None:
    """``evaluate_sequence_checkpoint``'s probes (as :func:`log_probes`; the history before the target trains)."""
    if recall is None and not ranker_path:
        return None
    return lambda ckpt, data, holdout: _probes(ckpt, lambda: data.train_part(holdout), recall, ranker_path)


def train_ranker(ckpt_path: str, out_path: str, valid_path: str | None = None, train_path: str | None = None,
                 sequences_path: str | None = None, recall: RecallConfig = RecallConfig(),
                 params: RankerParams = RankerParams(), log: Any = print) -> dict[str, Any]:
    """``streamrec ranker``: fit the lambdarank ranker on predictions the network was not trained on."""
    from models.checkpoint import load_checkpoint

    t0 = time.perf_counter()
    ckpt = load_checkpoint(ckpt_path)
    n = len(ckpt.item_ids)
    if sequences_path:
        if int(ckpt.meta.get("holdout", 1)) < 2:
            raise ValueError("the ranker learns on each user's validation item, which this network was trained on: "
                             "train it with `streamrec train --sequences ... --validate`")
        data = aligned(ckpt, sequences_path)
        train, recent = sequence_training(data, 2)
        stats = stats_for(ckpt, train, recent)
        expected = int((data.seqs.lengths > 2).sum())
        collector = Collector(stats, recall, keep=min(1.0, params.max_queries / max(expected, 1)), seed=params.seed)
        score_last(ckpt.model, data, 2, probe=collector)
        source = {"sequences": str(sequences_path), "target": "validation"}
    else:
        if not valid_path:
            raise ValueError("streamrec ranker needs --valid TSV (clicks the network was not trained on) or --sequences")
        train, recent = log_training(ckpt, train_path)
        stats = stats_for(ckpt, train, recent)
        valid, _ = encode(read_tsv(valid_path), ckpt.item_index)
        expected = int(np.maximum(valid.lengths - 1, 0).sum())
        collector = Collector(stats, recall, keep=min(1.0, params.max_queries / max(expected, 1)), seed=params.seed)
        evaluate_scorer(ckpt.model, valid, n, None, probe=collector)
        source = {"valid": str(valid_path), "train": str(train_path or ckpt.meta.get("train_path"))}
    booster = fit_ranker(collector, params, log=log)
    meta = {"queries": len(collector.groups), "predictions_seen": collector.seen, "trees": booster.best_iteration or booster.num_trees(),
            "target_in_candidates": collector.inside, "params": params.__dict__, **source,
            "seconds": round(time.perf_counter() - t0, 1)}
    save_ranker(out_path, booster, recall, stats, ckpt.version, meta)
    importance = booster.feature_importance("gain")
    meta["importance"] = {f: round(float(v) / max(float(importance.sum()), 1e-12), 4)
                          for f, v in sorted(zip(booster.feature_name(), importance), key=lambda x: -x[1])}
    return meta


__all__ = ["Probes", "log_probes", "log_training", "sequence_probes", "sequence_training", "sources_for", "stats_for", "train_ranker"]
