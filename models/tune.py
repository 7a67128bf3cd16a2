"""Hyper-parameter search with optuna on a training/validation split (never the test set).

The study lives in an sqlite file inside ``out_dir`` so an interrupted search
resumes where it stopped (same study name).  The best trial is written as a
preset JSON (``{"config": {...}, "metric": ..., ...}``) that
``streamrec train --preset NAME|PATH`` loads.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from models.data import build_vocab, encode, read_tsv, split_by_time
from models.evaluate import evaluate_scorer
from models.train import TrainConfig, auto_preset, fit, load_preset


def suggest(trial: Any, base: TrainConfig) -> dict[str, Any]:
    """The search space: loss, layer size, batch size, learning rate, dropout, negatives, alpha (+ a few more)."""
    loss = trial.suggest_categorical("loss", ["cross-entropy", "bpr-max"])
    cfg: dict[str, Any] = {
        "loss": loss,
        "hidden": trial.suggest_categorical("hidden", [64, 100, 128, 192, 256, 384, 512]),
        "batch_size": trial.suggest_categorical("batch_size", [32, 48, 64, 96, 128, 192, 256]),
        "lr": trial.suggest_float("lr", 0.01, 0.4, log=True),
        "momentum": trial.suggest_float("momentum", 0.0, 0.5),
        "dropout_emb": trial.suggest_float("dropout_emb", 0.0, 0.5),
        "dropout_hidden": trial.suggest_float("dropout_hidden", 0.0, 0.6),
        "negatives": trial.suggest_categorical("negatives", [512, 1024, 2048, 4096]),
        "alpha": trial.suggest_float("alpha", 0.0, 1.0),
        "constrained": trial.suggest_categorical("constrained", [False, True]),
    }
    if loss == "bpr-max":
        cfg["bpreg"] = trial.suggest_float("bpreg", 0.0, 2.0)
        cfg["elu"] = trial.suggest_categorical("elu", [0.0, 0.5, 1.0])
    else:
        cfg["logq"] = trial.suggest_categorical("logq", [0.0, 1.0])
    return cfg


def tune(
    train_path: str,
    out_dir: str,
    valid_path: str | None = None,
    valid_fraction: float = 0.1,
    trials: int = 20,
    timeout: float | None = None,
    study_name: str = "streamrec",
    preset_name: str | None = None,
    presets_dir: str = "presets",
    base_preset: str | None = None,
    epochs: int | None = None,
    metric: str = "recall@20",
    seed: int = 42,
    log: Any = print,
) -> dict[str, Any]:
    """Run (or resume) a study; returns the best trial's summary and writes the preset file."""
    try:
        import optuna
    except ImportError:
        raise RuntimeError("tuning needs optuna (pip install optuna)") from None
    train_log = read_tsv(train_path)
    if valid_path:
        valid_log = read_tsv(valid_path)
    else:  # split the training log by time ourselves: never the test set
        train_log, valid_log = split_by_time(train_log, valid_fraction)
    item_ids, counts = build_vocab(train_log)
    index = {s: i for i, s in enumerate(item_ids)}
    train_s, _ = encode(train_log, index)
    valid_s, _ = encode(valid_log, index)
    base = TrainConfig().updated(load_preset(base_preset or auto_preset(len(item_ids)), presets_dir))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{(out / 'study.sqlite3').resolve()}"
    study = optuna.create_study(
        study_name=study_name, storage=storage, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed),
    )

    def objective(trial: Any) -> float:
        over = suggest(trial, base)
        if epochs is not None:
            over["epochs"] = epochs
        cfg = base.updated(over)
        t0 = time.perf_counter()
        try:
            model, meta = fit(train_s, counts, cfg, valid=None, progress=False, log=None)
        except FloatingPointError:
            return 0.0
        res = evaluate_scorer(model, valid_s, len(counts), counts, ks=(5, 10, 20), batch_size=512)
        trial.set_user_attr("train_seconds", meta["train_seconds"])
        trial.set_user_attr("metrics", {k: v for k, v in res.items() if isinstance(v, float)})
        if log is not None:
            log(f"trial {trial.number}: {metric} {res[metric]:.4f} in {time.perf_counter() - t0:.0f}s  {over}")
        return float(res[metric])

    remaining = max(0, trials - len([t for t in study.trials if t.state.is_finished()]))
    if remaining:
        study.optimize(objective, n_trials=remaining, timeout=timeout)
    best = study.best_trial
    cfg = base.updated({**suggest(optuna.trial.FixedTrial(best.params), base), **({"epochs": epochs} if epochs else {})})
    from dataclasses import asdict

    summary = {
        "config": asdict(cfg),
        "metric": metric,
        "value": best.value,
        "trial": best.number,
        "metrics": best.user_attrs.get("metrics", {}),
        "train_seconds": best.user_attrs.get("train_seconds"),
        "train_path": str(train_path),
        "valid_path": str(valid_path) if valid_path else f"last {valid_fraction:.0%} of sessions of {train_path}",
        "n_items": int(len(np.asarray(counts))),
    }
    name = preset_name or study_name
    pdir = Path(presets_dir)
    pdir.mkdir(parents=True, exist_ok=True)
    (pdir / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "best.json").write_text(json.dumps(summary, indent=2) + "\n")
    summary["preset_path"] = str(pdir / f"{name}.json")
    return summary


__all__ = ["suggest", "tune"]
