"""Data and models of ``streamrec bench``: the diginetica sessions, a synthetic 1M-item catalogue, ANN recall."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def default_data_dir() -> Path:
    """The diginetica folder of the public data sets (``STREAMREC_LAB__DATA_DIR``, else ../shared/data)."""
    from stream_app.lab.datasets import shared_data_dir

    return shared_data_dir() / "diginetica"


def ensure_diginetica_model(data: Path, work: Path, given: str | None) -> Path:
    """The --model checkpoint, or a small one trained once on diginetica and cached."""
    if given:
        return Path(given)
    path = work / "model-diginetica.pt"
    if not path.is_file():
        print(f"[bench] training a small model on {data / 'train_full.tsv'} (2 epochs, cached at {path}) ...",
              flush=True)
        cmd = [sys.executable, "-m", "stream_app.cli", "train", str(data / "train_full.tsv"), "--out", str(path),
               "--threads", "1", "--epochs", "2", "--hidden", "100", "--quiet"]
        subprocess.run(cmd, check=True)
    return path


def ensure_synthetic_model(work: Path, n_items: int = 1_000_000, hidden: int = 100, seed: int = 7) -> Path:
    """A random-weight GRU over ``n_items`` items (cached).

    Item embeddings are random but clustered (2,000 random centres plus noise)
    rather than i.i.d.: trained item tables have that structure, and i.i.d.
    vectors make every ANN index look useless (docs/performance.md).
    """
    path = work / f"model-synthetic-{n_items}.pt"
    if path.is_file():
        return path
    import torch

    from models.checkpoint import save_checkpoint
    from models.rnn import ModelConfig, build_model

    print(f"[bench] building a random-weight {n_items:,}-item model (cached at {path}) ...", flush=True)
    model = build_model(ModelConfig(n_items=n_items, hidden=hidden, constrained=True), seed=seed).eval()
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(2000, hidden, generator=g) * 0.25  # (C, H)
    assign = torch.randint(0, 2000, (n_items,), generator=g)  # (N,)
    with torch.no_grad():
        model.out_emb.copy_(centres[assign] + torch.randn(n_items, hidden, generator=g) * 0.08)  # (N, H)
        model.out_bias.copy_(torch.randn(n_items, generator=g) * 0.1)  # (N,)
    counts = torch.randint(1, 1000, (n_items,), generator=g)
    save_checkpoint(path, model, [f"s{i}" for i in range(n_items)], counts, {"synthetic": True, "seed": seed})
    return path


def diginetica_clicks(data: Path, limit: int) -> list[tuple[bytes, bytes]]:
    from stream_app.lab.replay import click_messages, read_log

    return list(click_messages(read_log(data / "test.tsv", limit=limit or None), user_prefix="u"))


def synthetic_clicks(n: int, n_items: int, seed: int = 11) -> list[tuple[bytes, bytes]]:
    """Interleaved sessions (mean length 5) over a skewed item distribution, in time order."""
    import numpy as np

    from stream_app.core.records import Click

    rng = np.random.default_rng(seed)
    out: list[tuple[bytes, bytes]] = []
    live: list[list[Any]] = []
    ts = 1_700_000_000.0
    next_session = 0
    while len(out) < n:
        if len(live) < 200 or rng.random() < 0.2:
            live.append([f"x{next_session}", int(rng.geometric(0.2))])
            next_session += 1
        j = int(rng.integers(len(live)))
        user, left = live[j]
        item = int(min(n_items - 1, rng.pareto(0.8) * 50)) if rng.random() < 0.7 else int(rng.integers(n_items))
        ts += 0.01
        out.append((user.encode(), Click(user, f"s{item}", ts).to_json()))
        live[j][1] -= 1
        if live[j][1] <= 0:
            live.pop(j)
    return out


def session_queries(ckpt: Any, clicks: list[tuple[bytes, bytes]], n_queries: int) -> tuple[Any, list[set[int]], list[int | None]]:
    """The model's own session vectors after each known click (first ``n_queries``), each with the
    served list's mask (the last 5 clicked items) and the session's next item (None at its end)."""
    import torch

    m = ckpt.model
    states: dict[bytes, torch.Tensor] = {}
    recent: dict[bytes, list[int]] = {}
    last_row: dict[bytes, int] = {}
    qs: list[torch.Tensor] = []
    excl: list[set[int]] = []
    targets: list[int | None] = []
    tail = 5000  # clicks read past the last query for the next items of its sessions
    with torch.inference_mode():
        for key, value in clicks:
            item = ckpt.item_index.get(str(json.loads(value)["item_id"]))
            if item is None:
                continue
            if key in last_row:
                targets[last_row[key]] = item
            if len(qs) >= n_queries:
                tail -= 1
                if tail <= 0:
                    break
                continue  # only the next items of the rows taken are still wanted
            h = states.get(key, m.zero_state(1))
            h, _ = m.advance(h, m.input_table()[torch.tensor([item])])
            states[key] = h
            recent[key] = (recent.get(key, []) + [item])[-5:]
            last_row[key] = len(qs)
            qs.append(m.output_vector(h)[0])
            excl.append(set(recent[key]))
            targets.append(None)
    q = torch.stack(qs) if qs else torch.empty(0, m.state_size)  # (Q, H)
    return q, excl, targets


def list_quality(lists: list[list[int]], targets: list[int | None], k: int = 20) -> dict[str, float]:
    """Recall@k and MRR@k of the lists against each row's next item (rows without one left out)."""
    hits = rr = n = 0.0
    for row, target in zip(lists, targets):
        if target is None:
            continue
        n += 1
        if target in row[:k]:
            hits += 1
            rr += 1.0 / (row.index(target) + 1)
    return {f"recall_at_{k}": round(hits / max(1.0, n), 4), f"mrr_at_{k}": round(rr / max(1.0, n), 4),
            "scored_rows": int(n)}


def scoring_agreement(model_path: Path, clicks: list[tuple[bytes, bytes]], n_queries: int,
                      batch: int = 128) -> dict[str, Any]:
    """The default exact ranker against one full (B, N) product and ``topk`` in float32: the share of
    identical top-20 lists, Recall@20 / MRR@20 of both against the next click, and ms per click of each."""
    from models.checkpoint import load_checkpoint
    from stream_app.core.ranking import ExactRanker

    ckpt = load_checkpoint(model_path)
    q, excl, targets = session_queries(ckpt, clicks, n_queries)
    m = ckpt.model
    ranker, reference = ExactRanker(m.out_emb, m.out_bias), ExactRanker(m.out_emb, m.out_bias, chunk=0)
    out: dict[str, Any] = {"items": len(ckpt.item_ids), "queries": int(q.shape[0]), "batch": batch}
    lists: dict[str, list[list[int]]] = {"default": [], "reference": []}
    for name, fn in (("reference", reference.full_top_k), ("default", ranker.top_k)):
        t0 = time.perf_counter()
        for s in range(0, q.shape[0], batch):
            lists[name].extend(fn(q[s : s + batch], 20, excl[s : s + batch]).indices)
        out[f"{name}_ms_per_click"] = round((time.perf_counter() - t0) / max(1, q.shape[0]) * 1000, 4)
        out[name] = list_quality(lists[name], targets)
    same = sum(a == b for a, b in zip(lists["default"], lists["reference"]))
    out["identical_lists"] = round(same / max(1, q.shape[0]), 5)
    out["speedup"] = round(out["reference_ms_per_click"] / max(1e-9, out["default_ms_per_click"]), 2)
    return out


def ann_recall(model_path: Path, clicks: list[tuple[bytes, bytes]], n_queries: int, work: Path,
               probes: int = 32) -> dict[str, Any]:
    """Recall@20 of the ANN ranker against exact top 20, on the model's own session vectors."""
    import numpy as np

    from models.checkpoint import load_checkpoint
    from stream_app.core.ranking import AnnRanker, ExactRanker, recall_at_k

    ckpt = load_checkpoint(model_path)
    m = ckpt.model
    t0 = time.perf_counter()
    ann = AnnRanker(m.out_emb, m.out_bias, probes=probes, cache_dir=work / "ann", tag=ckpt.version)
    build_s = time.perf_counter() - t0
    exact = ExactRanker(m.out_emb, m.out_bias)
    q, excl, _ = session_queries(ckpt, clicks, n_queries)
    if not q.shape[0]:  # no click on an item the model knows
        return {"items": len(ckpt.item_ids), "queries": 0, "recall_at_20": None}
    t0 = time.perf_counter()
    want = exact.top_k(q, 20, excl)
    exact_ms = (time.perf_counter() - t0) / len(excl) * 1000
    t0 = time.perf_counter()
    got = ann.top_k(q, 20, excl)
    ann_ms = (time.perf_counter() - t0) / len(excl) * 1000
    return {"items": len(ckpt.item_ids), "queries": len(excl), "lists": ann.lists, "probes": ann.probes,
            "recall_at_20": round(recall_at_k(got.indices, want.indices, 20), 4),
            "index_build_or_load_s": round(build_s, 1), "exact_ms_per_query": round(exact_ms, 3),
            "ann_ms_per_query": round(ann_ms, 3), "model_version": ckpt.version,
            "mean_norm": float(np.round(q.norm(dim=1).mean().item(), 3))}
