"""HTML quality report with PNG plots (matplotlib, Agg backend: no display needed).

Shows the network beside the popularity and Markov floors, because a number
alone does not tell whether the network learned anything beyond the floor.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from models.evaluate import KS, evaluate_checkpoint


def _plot_curves(results: dict[str, dict[str, Any]], metric: str, path: Path) -> None:
    """metric@K for K in KS, one line per method (conservative ties)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=110)
    for name, res in results.items():
        if f"{metric}@{KS[0]}" not in res:
            continue
        ax.plot(KS, [res[f"{metric}@{k}"] for k in KS], marker="o", label=name)
    ax.set_xticks(KS)
    ax.set_xlabel("K (list length)")
    ax.set_ylabel(f"{metric.upper()}@K (conservative ties)")
    ax.set_title(f"{metric.upper()}@K")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_loss(epochs: list[dict[str, Any]], path: Path) -> None:
    """Training loss per epoch (and validation recall when recorded)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=110)
    xs = [e["epoch"] for e in epochs]
    ax.plot(xs, [e["loss"] for e in epochs], marker="o", color="tab:blue", label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.set_xticks(xs)
    ax.grid(alpha=0.3)
    if any("valid_recall@20" in e for e in epochs):
        ax2 = ax.twinx()
        ax2.plot(xs, [e.get("valid_recall@20") for e in epochs], marker="s", color="tab:orange", label="valid Recall@20")
        ax2.set_ylabel("validation Recall@20")
        ax2.legend(loc="lower center")
    ax.legend(loc="upper center")
    ax.set_title("Training loss per epoch")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(
    ckpt_path: str, test_path: str, out_dir: str, train_path: str | None = None, results: dict[str, Any] | None = None
) -> Path:
    """Evaluate (with baselines) unless ``results`` are given, then write index.html + PNGs + results.json."""
    from models.checkpoint import load_checkpoint

    res = results if results is not None and "baselines" in results else evaluate_checkpoint(
        ckpt_path, test_path, baselines=True, train_path=train_path
    )
    meta = load_checkpoint(ckpt_path).meta
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    methods: dict[str, dict[str, Any]] = {"network": res}
    for name, b in res.get("baselines", {}).items():
        if "error" not in b:
            methods[name] = b
    _plot_curves(methods, "recall", out / "recall_at_k.png")
    _plot_curves(methods, "mrr", out / "mrr_at_k.png")
    epochs = meta.get("epochs", [])
    if epochs:
        _plot_loss(epochs, out / "loss.png")
    (out / "results.json").write_text(json.dumps(res, indent=2) + "\n")

    def row(name: str, r: dict[str, Any]) -> str:
        if "error" in r:
            return f"<tr><td>{html.escape(name)}</td><td colspan='8'>{html.escape(r['error'])}</td></tr>"
        cells = "".join(f"<td>{r[f'{m}@{k}']:.4f}</td>" for m in ("recall", "mrr") for k in KS)
        std = r.get("standard", {})
        return (f"<tr><td>{html.escape(name)}</td>{cells}<td>{std.get('recall@20', float('nan')):.4f}</td>"
                f"<td>{std.get('mrr@20', float('nan')):.4f}</td><td>{r.get('coverage@20', float('nan')):.3f}</td>"
                f"<td>{r.get('popularity@20', float('nan')):.3f}</td></tr>")

    head = "".join(f"<th>{m}@{k}</th>" for m in ("Recall", "MRR") for k in KS)
    rows = row("network", res) + "".join(row(n, b) for n, b in res.get("baselines", {}).items())
    cfg = meta.get("train_config", {})
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>streamrec quality report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}td,th{{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}}</style>
</head><body><h1>streamrec quality report</h1>
<p>Checkpoint <code>{html.escape(str(ckpt_path))}</code> (version {html.escape(str(res.get('model_version')))}),
test data <code>{html.escape(str(test_path))}</code>: {res.get('predictions')} next-item predictions,
{res.get('skipped_unknown')} test clicks on unknown items removed. Full ranking over all training items;
headline figures use conservative ties (rank counts items scoring &gt;= the target).</p>
<table><tr><th>method</th>{head}<th>std Recall@20</th><th>std MRR@20</th><th>coverage@20</th><th>popularity@20</th></tr>{rows}</table>
<p><img src="recall_at_k.png"> <img src="mrr_at_k.png"></p>
{'<p><img src="loss.png"></p>' if epochs else ''}
<h2>Training</h2><p>train data <code>{html.escape(str(meta.get('train_path')))}</code>, {meta.get('train_seconds')} s
with {meta.get('torch_threads')} torch threads, best epoch {meta.get('best_epoch')}.</p>
<pre>{html.escape(json.dumps(cfg, indent=1))}</pre></body></html>
"""
    (out / "index.html").write_text(page)
    return out / "index.html"


__all__ = ["write_report"]
