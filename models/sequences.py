"""User sequences with item attributes (the S3-Rec format) and their leave-one-out protocol.

Format (``../shared/data/s3rec/README.md``): ``NAME.txt`` has one user per
line, the user id then the user's items oldest first; ``NAME_item2attributes.json``
maps item id -> attribute ids.

Protocol (the one the published full-ranking figures use): per user the last
item is the test target and the one before it the validation target; the
model reads the items before the target (cut to the last ``max_len``) and
ranks *all* items; the items of the user's sequence before the target are
excluded from the ranking (a repeated target therefore counts as a miss, as in
the reference code); HR@K and NDCG@K over users, K = 5, 10, 20.

Training reads each user's sequence as one session of the session-parallel
scheme: ``holdout=1`` (what ``streamrec train --sequences`` does) trains on
everything but the test item, ``holdout=2`` also keeps the validation item
out, for tuning and early stopping on the validation target.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.baselines import popularity_tiebreak
from models.data import ClickLog, DataError, Sessions, write_tsv
from models.beyond import ListFigures, unit_of
from models.evaluate import Probe, Shaper, ranks_of
from models.features import ItemAttributes, read_attributes

KS_SEQ: tuple[int, ...] = (5, 10, 20)
MAX_LEN = 50


@dataclass
class SequenceSet:
    """Integer-coded user sequences: ``seqs`` holds one run per user (in file order)."""

    users: list[str]
    item_ids: list[str]
    seqs: Sessions
    attributes: ItemAttributes | None = None

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def train_part(self, holdout: int) -> Sessions:
        """Every user's sequence without its last ``holdout`` items (users left empty vanish)."""
        lens = self.seqs.lengths
        keep_len = np.maximum(lens - holdout, 0)  # (U,)
        pos = np.arange(len(self.seqs.items)) - np.repeat(self.seqs.offsets[:-1], lens)  # (C,) position in its sequence
        keep = pos < np.repeat(keep_len, lens)
        new_off = np.concatenate([[0], np.cumsum(keep_len[keep_len > 0])]).astype(np.int64)
        return Sessions(self.seqs.items[keep], new_off)

    def counts(self, holdout: int) -> np.ndarray:
        """Training clicks per item (N,) of ``train_part(holdout)`` (0 for items seen only as targets)."""
        return np.bincount(self.train_part(holdout).items, minlength=self.n_items).astype(np.int64)

    def subset(self, users: np.ndarray) -> "SequenceSet":
        """The sequences of some users (indices (U,), in that order), same vocabulary and attributes."""
        off = self.seqs.offsets
        lens = off[users + 1] - off[users]  # (U,)
        pos = np.repeat(off[users] - (np.cumsum(lens) - lens), lens) + np.arange(int(lens.sum()))  # (C',)
        seqs = Sessions(self.seqs.items[pos], np.concatenate([[0], np.cumsum(lens)]).astype(np.int64))
        return SequenceSet([self.users[u] for u in users], self.item_ids, seqs, self.attributes)


def read_sequences(path: str | os.PathLike[str], attributes_path: str | os.PathLike[str] | None = None) -> SequenceSet:
    """Read ``NAME.txt`` (and optionally ``NAME_item2attributes.json``) into a coded SequenceSet.

    The vocabulary is every item of the file (the protocol ranks all of them,
    test targets included), numeric ids in numeric order, others after them in
    order of first appearance.  Items of the attribute file that never occur in
    a sequence are ignored.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"sequence file not found: {p}")
    users: list[str] = []
    rows: list[list[str]] = []
    with open(p) as f:
        for lineno, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2:
                raise DataError(f"{p}:{lineno}: a line needs a user id and at least one item, got {line.strip()!r:.80}")
            users.append(parts[0])
            rows.append(parts[1:])
    if not rows:
        raise DataError(f"{p}: no user sequences")
    if len(set(users)) != len(users):
        raise DataError(f"{p}: a user id appears on more than one line")
    seen: dict[str, None] = {}
    for r in rows:
        seen.update(dict.fromkeys(r))
    numeric = sorted((s for s in seen if s.isdigit()), key=int)
    ids = numeric + [s for s in seen if not s.isdigit()]
    index = {s: i for i, s in enumerate(ids)}
    items = np.fromiter((index[s] for r in rows for s in r), dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    attrs = ItemAttributes.build(ids, read_attributes(attributes_path)) if attributes_path else None
    return SequenceSet(users, ids, Sessions(items, offsets), attrs)


def _targets(data: SequenceSet, holdout: int) -> tuple[np.ndarray, np.ndarray]:
    """Users with a target at position len - holdout and at least one item before it: (users (U,), targets (U,))."""
    lens = data.seqs.lengths
    users = np.flatnonzero(lens > holdout)
    return users, data.seqs.items[data.seqs.offsets[users + 1] - holdout]


def score_last(model: Any, data: SequenceSet, holdout: int = 1, max_len: int = MAX_LEN,
               batch_size: int = 512, candidates: np.ndarray | None = None, shape: Shaper | None = None,
               figures: ListFigures | None = None, probe: Probe | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Conservative ranks (U,) of each user's target under full ranking with history exclusion, and the users.

    ``candidates`` (N,) bool restricts the ranking to those items (the others
    score -inf), for instance to the new items of a "new arrivals" row.

    ``model`` needs ``zero_state``, ``advance``, ``input_vectors`` and
    ``score`` (a folded SessionRNN, or ``PopularityModel``).  Inputs are
    right-aligned: a row's state stays zero until its own first item.

    ``figures`` collects the beyond-accuracy figures of each user's top-k list
    (models/beyond.py), of the lists ``shape`` makes from the scores when given
    (the re-ranking pipeline, with the lists' own HR/MRR/NDCG), else of the plain
    top k; the history they read is the user's last ``max_len`` training items.
    """
    users, targets = _targets(data, holdout)
    off, items = data.seqs.offsets, data.seqs.items
    ends = off[users + 1] - holdout  # (U,) one past the last input item
    ranks = np.empty(len(users), dtype=np.int64)
    outside = torch.from_numpy(~candidates) if candidates is not None else None  # (N,)
    with torch.inference_mode():
        for b0 in range(0, len(users), batch_size):
            u = users[b0:b0 + batch_size]
            e = ends[b0:b0 + batch_size]
            starts = off[u]  # (b,)
            cut = np.maximum(starts, e - max_len)  # (b,) first input item read
            T = int((e - cut).max())
            pos = e[None, :] - T + np.arange(T)[:, None]  # (T, b) right-aligned positions
            live = pos >= cut[None, :]  # (T, b)
            mat = torch.from_numpy(np.where(live, items[np.maximum(pos, 0)], 0))  # (T, b)
            live_t = torch.from_numpy(live).unsqueeze(2)  # (T, b, 1)
            state = model.zero_state(len(u))  # (b, S)
            for t in range(T):
                new, _ = model.advance(state, model.input_vectors(mat[t]))  # (b, S)
                state = torch.where(live_t[t], new, state)  # (b, S)
            scores = model.score(state)  # (b, N)
            hist_len = e - starts  # (b,) the whole history is excluded, not only the read window
            rows = torch.from_numpy(np.repeat(np.arange(len(u)), hist_len))
            cols = torch.from_numpy(np.concatenate([items[s:x] for s, x in zip(starts, e)]))
            scores[rows, cols] = -torch.inf
            if outside is not None:
                scores[:, outside] = -torch.inf
            target = torch.from_numpy(targets[b0:b0 + batch_size])  # (b,)
            _, cons = ranks_of(scores, target)
            ranks[b0:b0 + len(u)] = cons.numpy()
            if figures is not None:
                history = [items[max(s, x - max_len):x] for s, x in zip(starts, e)]
                lists = shape(scores, history) if shape is not None else torch.topk(scores, figures.k, dim=1).indices
                figures.add(lists, history, target if shape is not None else None)
            if probe is not None:
                probe(scores, [items[max(s, x - max_len):x] for s, x in zip(starts, e)], target)
    return ranks, users


def hr_ndcg(ranks: np.ndarray, ks: tuple[int, ...] = KS_SEQ) -> dict[str, float]:
    """HR@K and NDCG@K (one target per user) from 1-based ranks."""
    r = ranks.astype(np.float64)
    n = max(len(r), 1)
    out: dict[str, float] = {}
    for k in ks:
        hit = r <= k
        out[f"hr@{k}"] = float(hit.sum() / n)
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(r + 1.0), 0.0).sum() / n)
    return out


class PopularityModel:
    """The PopRec floor in the same interface: training counts as scores, a state of one zero."""

    def __init__(self, counts: np.ndarray) -> None:
        self._scores = torch.as_tensor(counts + popularity_tiebreak(counts), dtype=torch.float32)  # (N,)

    def zero_state(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, 1)

    def input_vectors(self, items: torch.Tensor) -> torch.Tensor:
        return torch.zeros(items.shape[0], 1)

    def advance(self, state: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return state, state

    def score(self, state: torch.Tensor) -> torch.Tensor:
        return self._scores.unsqueeze(0).repeat(state.shape[0], 1)  # (B, N)


def evaluate_sequences(model: Any, data: SequenceSet, holdout: int = 1, max_len: int = MAX_LEN,
                       baselines: bool = False, shape: Shaper | None = None,
                       attributes: tuple[np.ndarray, np.ndarray] | None = None,
                       probe: Probe | None = None) -> dict[str, Any]:
    """HR/NDCG@5/10/20 on the test (holdout 1) or validation (holdout 2) target, as one JSON-able dict, and
    under "lists" the beyond-accuracy figures of the top-20 lists (through ``shape`` when given)."""
    t0 = time.perf_counter()
    figures = ListFigures(data.counts(holdout), unit_of(model, data.n_items), attributes, 20)
    ranks, users = score_last(model, data, holdout, max_len, shape=shape, figures=figures, probe=probe)
    res: dict[str, Any] = hr_ndcg(ranks)
    res["lists"] = figures.result()
    res.update(users=int(len(users)), target="test" if holdout == 1 else "validation", max_len=max_len,
               protocol="leave-one-out, full ranking, history excluded",
               eval_seconds=round(time.perf_counter() - t0, 3))
    if baselines:
        pop_ranks, _ = score_last(PopularityModel(data.counts(holdout)), data, holdout, max_len)
        res["baselines"] = {"popularity": hr_ndcg(pop_ranks)}
    return res


def validation_hook(data: SequenceSet, max_len: int = MAX_LEN):  # type: ignore[no-untyped-def]
    """A ``fit`` validator: NDCG@20 (the score) and HR@20 on the validation target."""

    def run(model: Any) -> dict[str, float]:
        m = hr_ndcg(score_last(model, data, 2, max_len)[0], (20,))
        return {"ndcg@20": m["ndcg@20"], "hr@20": m["hr@20"]}

    return run


def to_click_log(data: SequenceSet, holdout: int = 0) -> ClickLog:
    """The sequences as a GRU4Rec click log: one session per user, Time = position (0, 1, ...)."""
    part = data.train_part(holdout) if holdout else data.seqs
    lens = part.lengths
    alive = np.flatnonzero(data.seqs.lengths > holdout)  # users left in the part, in file order
    users = np.asarray(data.users, dtype=object)[alive]
    time_ = (np.arange(len(part.items)) - np.repeat(part.offsets[:-1], lens)).astype(np.float64)
    ids = np.asarray(data.item_ids, dtype=object)
    return ClickLog(np.repeat(users, lens).astype(str), ids[part.items].astype(str), time_)


def prepare_sequences(sequences_path: str, out_dir: str, attributes_path: str | None = None) -> dict[str, str]:
    """Check a sequence file (and its attributes) and write it as click logs for the stream tools.

    ``sequences.tsv`` holds every item (what ``streamrec replay`` publishes:
    the list served after each user's second-to-last click is then ranked
    against the test target); ``train_full.tsv`` leaves the test items out,
    ``train_tr.tsv`` the validation items too.
    """
    data = read_sequences(sequences_path, attributes_path)
    out = Path(out_dir)
    stats: dict[str, str] = {}
    for name, holdout in (("sequences.tsv", 0), ("train_full.tsv", 1), ("train_tr.tsv", 2)):
        log = to_click_log(data, holdout)
        write_tsv(log, out / name)
        stats[name] = f"{len(log)} clicks, {log.n_sessions} users"
    if data.attributes is not None:
        per = data.attributes.per_item()
        stats["attributes"] = (f"{data.attributes.n_attributes} attribute ids, {int((per > 0).sum())} of "
                               f"{data.n_items} items with attributes, {per.mean():.1f} per item")
    return stats


def train_sequences(
    sequences_path: str,
    out_path: str,
    attributes_path: str | None = None,
    validate: bool = False,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
    presets_dir: str | Path = "presets",
    progress: bool = True,
    log: Any = print,
) -> tuple[Any, dict[str, Any]]:
    """Train on every user's sequence but its test item and write a checkpoint. Returns (model, meta).

    ``validate=True`` keeps the validation item out of training too and stops
    early on the validation NDCG@20 (for tuning; the published protocol's
    models are trained that way).  The configuration is resolved as for click
    logs: defaults <- preset (by catalogue size) <- overrides.
    """
    from dataclasses import asdict

    from models.checkpoint import save_checkpoint
    from models.train import fit, resolve_config

    t0 = time.perf_counter()
    data = read_sequences(sequences_path, attributes_path)
    holdout = 2 if validate else 1
    train = data.train_part(holdout)
    counts = data.counts(holdout)
    cfg, preset_name = resolve_config(data.n_items, preset, overrides, presets_dir)
    if log is not None:
        n_attr = data.attributes.n_attributes if data.attributes is not None else 0
        log(f"{sequences_path}: {len(data.users)} users, {data.n_items} items, {len(train.items)} training items "
            f"(holdout {holdout}), {n_attr} attribute ids; preset {preset_name}: {asdict(cfg)}")
    load_secs = time.perf_counter() - t0
    model, meta = fit(train, counts, cfg, progress=progress, log=log, attributes=data.attributes,
                      validator=validation_hook(data) if validate else None)
    meta.update(
        protocol="sequences",
        sequences_path=str(Path(sequences_path).resolve()),
        attributes_path=str(Path(attributes_path).resolve()) if attributes_path else None,
        attributes=data.attributes.to_meta() if data.attributes is not None and model.attr_out is not None else None,
        holdout=holdout,
        n_items=data.n_items,
        n_users=len(data.users),
        n_clicks=int(len(train.items)),
        load_seconds=round(load_secs, 3),
        preset=preset_name,
    )
    version = save_checkpoint(out_path, model, data.item_ids, counts, meta)
    meta["version"] = version
    return model, meta


def aligned(ckpt: Any, sequences_path: str) -> SequenceSet:
    """The sequences coded with the checkpoint's item indices; DataError if it lacks some of their items."""
    data = read_sequences(sequences_path)
    if data.item_ids != ckpt.item_ids:
        missing = len(set(data.item_ids) - set(ckpt.item_ids))
        if missing:
            raise DataError(f"{sequences_path}: {missing} item(s) unknown to the checkpoint; train on this file")
        index = ckpt.item_index
        remap = np.asarray([index[s] for s in data.item_ids], dtype=np.int64)
        data = SequenceSet(data.users, ckpt.item_ids, Sessions(remap[data.seqs.items], data.seqs.offsets))
    return data


def evaluate_sequence_checkpoint(ckpt_path: str, sequences_path: str, holdout: int = 1,
                                 baselines: bool = False, max_len: int = MAX_LEN,
                                 shaper: Any = None, probes: Any = None) -> dict[str, Any]:
    """``streamrec evaluate CKPT --sequences NAME.txt``: the checkpoint's item ids must cover the file's.

    ``probes(ckpt, data, holdout)`` builds a probe that watches every prediction and adds its figures to the
    result (candidate recall, the ranker's order: models/pipeline.py)."""
    from models.checkpoint import load_checkpoint

    ckpt = load_checkpoint(ckpt_path)
    data = aligned(ckpt, sequences_path)
    watch = probes(ckpt, data, holdout) if probes is not None else None
    res = evaluate_sequences(ckpt.model, data, holdout, max_len, baselines,
                             shape=shaper(ckpt) if shaper is not None else None, attributes=ckpt.attribute_lists(),
                             probe=watch)
    if watch is not None:
        watch.into(res)
    res.update(model_version=ckpt.version, checkpoint=str(ckpt_path), sequences=str(sequences_path),
               attributes=bool(ckpt.meta.get("attributes")))
    return res


__all__ = ["KS_SEQ", "MAX_LEN", "PopularityModel", "SequenceSet", "aligned", "evaluate_sequence_checkpoint",
           "evaluate_sequences", "hr_ndcg", "prepare_sequences", "read_sequences", "score_last", "to_click_log", "train_sequences",
           "validation_hook"]
