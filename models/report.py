"""HTML quality report with PNG plots (matplotlib, Agg backend: no display needed).

Shows the network beside the popularity and Markov floors, because a number
alone does not tell whether the network learned anything beyond the floor.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np

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


# (field of a point, what it is, axis label, file) of the accuracy / beyond-accuracy trade-off plots
TRADEOFF_PLOTS: tuple[tuple[str, str, str, str], ...] = (
    ("coverage@20", "catalogue coverage", "coverage@20 (share of items in some list)", "tradeoff_coverage.png"),
    ("ild@20", "intra-list diversity", "ILD@20 (mean 1 - cosine of item embeddings)", "tradeoff_ild.png"),
)
# (field, column heading, format) of the trade-off table
TRADEOFF_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("hr@20", "HR@20", ".4f"), ("ndcg@20", "NDCG@20", ".4f"), ("coverage@20", "coverage@20", ".3f"),
    ("tail_share@20", "tail share@20", ".3f"), ("ild@20", "ILD@20", ".3f"),
    ("miscalibration@20", "miscalibration@20", ".3f"),
)


def _by_setting(points: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The points as one curve per setting, in the order given, each by increasing strength."""
    curves: dict[str, list[dict[str, Any]]] = {}
    for pt in points:
        curves.setdefault(pt["setting"], []).append(pt)
    return {name: sorted(c, key=lambda pt: pt["strength"]) for name, c in curves.items()}


def _plot_tradeoff(curves: dict[str, list[dict[str, Any]]], field: str, what: str, label: str, path: Path) -> None:
    """HR@20 against ``field``, one line per setting, each point annotated with its strength; the shared
    strength-0 point (top 20 by score) drawn once, as a black star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    zero = None
    drawn: list[tuple[list[tuple[float, float, float]], str]] = []
    for name, curve in curves.items():
        pts = [(pt[field], pt["hr@20"], pt["strength"]) for pt in curve if pt.get(field) is not None]
        if pts:
            line = ax.plot([x for x, _, _ in pts], [y for _, y, _ in pts], marker="o", label=name)[0]
            drawn.append((pts, line.get_color()))
            zero = next(((x, y) for x, y, strength in pts if strength == 0), zero)
    if zero is not None:
        ax.plot(*zero, marker="*", markersize=13, color="black", linestyle="none", label="top 20 by score", zorder=3)
    fig.canvas.draw()  # final limits: the labels are placed on screen
    for c, (pts, colour) in enumerate(drawn):
        at = ax.transData.transform(np.array([(x, y) for x, y, _ in pts]))  # (P, 2) pixels
        for j, (x, y, strength) in enumerate(pts):
            if strength == 0:
                continue
            # 9 px off the curve, square to its local direction, on one side per setting
            t = at[min(j + 1, len(at) - 1)] - at[max(j - 1, 0)]
            n = np.array([-t[1], t[0]]) / max(float(np.hypot(*t)), 1e-9) * (9 if c % 2 else -9)
            ax.annotate(f"{strength:g}", (x, y), textcoords="offset points", xytext=(n[0], n[1]), fontsize=7,
                        color=colour, ha="center", va="center")
    ax.set_xlabel(label)
    ax.set_ylabel("HR@20 of the served lists")
    ax.set_title(f"Accuracy against {what} (labels: strength)")
    ax.grid(alpha=0.3)
    ax.legend(title="setting", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_tradeoff(points: list[dict[str, Any]], out_dir: str | Path, notes: list[str] | tuple[str, ...] = ()) -> str:
    """Plot the trade-off points (dicts with setting, strength and the "lists" figures of models/beyond.py) to
    tradeoff_coverage.png and tradeoff_ild.png, write them to tradeoff.json and return the page's HTML section.

    The strength-0 point (top 20 by score) is expected in every setting's curve; the table shows it once."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    curves = _by_setting(points)
    for field, what, label, name in TRADEOFF_PLOTS:
        _plot_tradeoff(curves, field, what, label, out / name)
    (out / "tradeoff.json").write_text(json.dumps({"points": points, "notes": list(notes)}, indent=2) + "\n")

    def row(setting: str, pt: dict[str, Any]) -> str:
        cells = "".join(f"<td>{'&ndash;' if pt.get(f) is None else format(pt[f], fmt)}</td>"
                        for f, _, fmt in TRADEOFF_COLUMNS)
        return f"<tr><td>{html.escape(setting)}</td><td>{pt['strength']:g}</td>{cells}</tr>"

    first = next((c[0] for c in curves.values() if c and c[0]["strength"] == 0), None)
    rows = row("none (top 20 by score)", first) if first is not None else ""
    rows += "".join(row(name, pt) for name, c in curves.items() for pt in c if pt["strength"] != 0)
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h, _ in TRADEOFF_COLUMNS)
    extra = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return f"""<h2>Accuracy against coverage and diversity</h2>
<p>Each re-ranking setting alone at each strength (stream_app/core/rerank.py); strength 0 is the accuracy-only
list, shared by every curve. HR@20 is where the next click landed in the served list.</p>
{f'<ul>{extra}</ul>' if extra else ''}
<table><tr><th>setting</th><th>strength</th>{head}</tr>{rows}</table>
<p>{' '.join(f'<img src="{name}">' for *_, name in TRADEOFF_PLOTS)}</p>
"""


def write_report(
    ckpt_path: str, test_path: str, out_dir: str, train_path: str | None = None, results: dict[str, Any] | None = None,
    tradeoff: dict[str, Any] | None = None,
) -> Path:
    """Evaluate (with baselines) unless ``results`` are given, then write index.html + PNGs + results.json.

    ``tradeoff`` ({"points": [...], "notes": [...]}, see :func:`write_tradeoff`) adds the trade-off plots and table."""
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
    section = write_tradeoff(tradeoff["points"], out, tradeoff.get("notes", ())) if tradeoff else ""

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
{section}<h2>Training</h2><p>train data <code>{html.escape(str(meta.get('train_path')))}</code>, {meta.get('train_seconds')} s
with {meta.get('torch_threads')} torch threads, best epoch {meta.get('best_epoch')}.</p>
<pre>{html.escape(json.dumps(cfg, indent=1))}</pre></body></html>
"""
    (out / "index.html").write_text(page)
    return out / "index.html"


__all__ = ["write_report", "write_tradeoff"]
