"""Offline sub-commands of ``streamrec``: train, evaluate, prepare, tune, report.

Only argparse and ``models`` are imported here (never faust), so the offline
tools work without the streaming stack.  The lead's ``stream_app.cli`` calls
``register(subparsers)`` and dispatches ``args.func(args)``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable

# flag -> TrainConfig field for the training overrides
_TRAIN_FLAGS: dict[str, tuple[str, type]] = {
    "epochs": ("epochs", int),
    "hidden": ("hidden", int),
    "loss": ("loss", str),
    "batch_size": ("batch_size", int),
    "lr": ("lr", float),
    "momentum": ("momentum", float),
    "negatives": ("negatives", int),
    "alpha": ("alpha", float),
    "bpreg": ("bpreg", float),
    "logq": ("logq", float),
    "dropout_emb": ("dropout_emb", float),
    "dropout_hidden": ("dropout_hidden", float),
    "cell": ("cell", str),
    "layers": ("layers", int),
    "embedding": ("embedding", int),
    "seed": ("seed", int),
    "patience": ("patience", int),
    "attr_lr": ("attr_lr", float),
    "attr_pooling": ("attr_pooling", str),
    "user_hidden": ("user_hidden", int),
}


def _guard(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn expected errors (bad data, bad checkpoint, bad option) into one line on stderr and exit code 2."""

    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except (ValueError, RuntimeError, OSError, FloatingPointError) as e:  # DataError/CheckpointError are ValueErrors
            print(f"error: {e}", file=sys.stderr)
            return 2

    run.__name__ = fn.__name__
    run.__doc__ = fn.__doc__
    return run


def _set_threads(n: int | None) -> None:
    """Apply --threads (None keeps torch's default: one thread per physical core)."""
    if n is not None:
        import torch

        torch.set_num_threads(n)


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Only the flags the user actually gave (None = not given)."""
    over: dict[str, Any] = {}
    for flag, (name, _) in _TRAIN_FLAGS.items():
        v = getattr(args, flag, None)
        if v is not None:
            over[name] = v
    if args.constrained is not None:
        over["constrained"] = args.constrained
    if args.lr_schedule is not None:
        over["lr_schedule"] = args.lr_schedule
    return over


def _one_input(args: argparse.Namespace, positional: str, what: str, attributes_with_log: bool = False) -> None:
    """Exactly one of the click-log positional and --sequences."""
    given = getattr(args, positional) is not None
    if given == (args.sequences is not None):
        raise ValueError(f"give either {what} or --sequences NAME.txt (the S3-Rec format), not both or neither")
    if args.item_attributes and not args.sequences and not attributes_with_log:
        raise ValueError("--item-attributes goes with --sequences")


def cmd_train(args: argparse.Namespace) -> int:
    """streamrec train TRAIN_TSV --out CKPT [overrides], or --sequences NAME.txt [--item-attributes F]."""
    _set_threads(args.threads)
    _one_input(args, "train", "TRAIN_TSV", attributes_with_log=True)
    t0 = time.perf_counter()
    if args.sequences:
        from models.sequences import train_sequences

        if args.valid:
            raise ValueError("--valid is for click logs; with --sequences use --validate (the validation target)")
        _, meta = train_sequences(
            args.sequences, args.out, args.item_attributes, validate=args.validate, preset=args.preset,
            overrides=_train_overrides(args), presets_dir=args.presets_dir, progress=not args.quiet,
        )
    else:
        from models.train import train_file

        _, meta = train_file(
            args.train, args.out, preset=args.preset, overrides=_train_overrides(args), valid_path=args.valid,
            progress=not args.quiet, presets_dir=args.presets_dir, attributes_path=args.item_attributes,
        )
    elapsed = time.perf_counter() - t0
    print(f"saved {args.out} (version {meta['version']}, preset {meta['preset']}): "
          f"training {meta['train_seconds']:.1f} s, total {elapsed:.1f} s, {meta['torch_threads']} torch threads")
    return 0


def _fmt_table(res: dict[str, Any]) -> str:
    """Human-readable table of conservative figures for the network and baselines."""
    from models.evaluate import KS

    cols = [f"{m}@{k}" for m in ("recall", "mrr", "ndcg") for k in KS]
    lines = ["method      " + " ".join(f"{c:>10}" for c in cols)]
    rows = [("network", res)] + list(res.get("baselines", {}).items())
    for name, r in rows:
        if "error" in r:
            lines.append(f"{name:<12}{r['error']}")
        else:
            lines.append(f"{name:<12}" + " ".join(f"{r[c]:>10.4f}" for c in cols))
    s = res["standard"]
    lines.append(f"standard ties (network): recall@20 {s['recall@20']:.4f}  mrr@20 {s['mrr@20']:.4f}")
    lines.append(f"coverage@20 {res['coverage@20']:.3f}  popularity@20 {res.get('popularity@20', float('nan')):.3f}  "
                 f"predictions {res['predictions']}  skipped unknown clicks {res['skipped_unknown']}  "
                 f"({res['eval_seconds']:.1f} s)")
    return "\n".join(lines + _fmt_pipeline(res))


def _fmt_pipeline(res: dict[str, Any]) -> list[str]:
    """The candidate recall and ranker lines of an evaluation, when it has them."""
    lines = []
    rec = res.get("recall")
    if rec and "error" in rec:
        lines.append(rec["error"])
    elif rec:
        sizes = [k for k in rec if k.startswith("recall@")]
        shares = ", ".join(f"{k} {v:g}" for k, v in rec["shares"].items() if v)
        lines.append(f"candidates (network{' + ' + shares if shares else ''}): " + "  ".join(
            f"{k} {rec[k]:.4f} (exact top {rec['network_exact'][k]:.4f})" for k in sizes))
    rank = res.get("ranking")
    if rank:
        for name in ("ranker", "network"):
            r = rank[name]
            lines.append(f"{name + ' order':<14} ndcg@10 {r['ndcg@10']:.4f}  mrr@20 {r['mrr@20']:.4f}  hr@20 {r['hr@20']:.4f}"
                         f"  (same {rank['recall']['size']} candidates, {rank['candidates_recall']:.4f} recall)")
    return lines


def _fmt_sequences(res: dict[str, Any]) -> str:
    """Human-readable HR/NDCG table of a leave-one-out evaluation."""
    from models.sequences import KS_SEQ

    cols = [f"{m}@{k}" for m in ("hr", "ndcg") for k in KS_SEQ]
    lines = ["method      " + " ".join(f"{c:>9}" for c in cols)]
    for name, r in [("network", res)] + list(res.get("baselines", {}).items()):
        lines.append(f"{name:<12}" + " ".join(f"{r[c]:>9.4f}" for c in cols))
    lines.append(f"{res['target']} target of {res['users']} users ({res['protocol']}, inputs cut to "
                 f"{res['max_len']}; {res['eval_seconds']:.1f} s)")
    return "\n".join(lines + _fmt_pipeline(res))


def _shaper(args: argparse.Namespace) -> Any:
    """--rerank as a factory of the offline list pipeline (stream_app/core/rerank.py), or None."""
    if not args.rerank:
        return None
    from stream_app.core.rerank import parse_strengths

    return _shaper_of(parse_strengths(args.rerank), args.candidates)


def _shaper_of(strengths: Any, candidates: int) -> Callable[[Any], Any]:
    """The factory ``build(ckpt) -> Shaper`` of the offline list pipeline at these Strengths (all 0: the top 20
    of the ``candidates`` by score, in score order)."""
    from stream_app.core.rerank import ItemFacts, shaper

    def build(ckpt: Any) -> Any:
        facts = ItemFacts.build(ckpt.model.out_emb, ckpt.item_counts.numpy(), ckpt.attribute_lists())
        return shaper(facts, strengths, 20, candidates)

    return build


TRADEOFF_SETTINGS = ("mmr", "calibration", "long_tail")


def _strength_grid(spec: str) -> list[float]:
    """--strengths ``0,0.1,0.3`` as sorted distinct floats, 0 always first; ValueError naming what is wrong."""
    from stream_app.core.rerank import Strengths

    try:
        grid = sorted({0.0, *(float(p) for p in spec.split(",") if p.strip())})
    except ValueError:
        raise ValueError(f"--strengths takes comma-separated numbers, got {spec!r}") from None
    try:
        for s in grid:
            Strengths(mmr=s)  # each in [0, 1)
    except ValueError as e:
        raise ValueError(f"--strengths: {e}") from None
    return grid


def _tradeoff(args: argparse.Namespace) -> dict[str, Any]:
    """Each re-ranking setting alone at each --strengths value: the shaped lists' figures as plain points.

    Strength 0 is one run through the pipeline with every strength 0 (the accuracy-only top 20, measured
    the same way as the others) and is every setting's first point."""
    from models.checkpoint import load_checkpoint
    from models.evaluate import evaluate_checkpoint
    from stream_app.core.rerank import Strengths

    grid = _strength_grid(args.strengths)
    notes = [f"each list is the top {args.candidates} items by score re-ranked to 20 with one setting on"]
    settings = list(TRADEOFF_SETTINGS)
    if load_checkpoint(args.checkpoint).attribute_lists() is None:
        settings.remove("calibration")
        notes.append("calibration skipped: the checkpoint has no item attributes")

    def measure(setting: str, strength: float) -> dict[str, Any]:
        res = evaluate_checkpoint(args.checkpoint, args.test,
                                  shaper=_shaper_of(Strengths(**{setting: strength}), args.candidates))
        label = f"{setting}={strength:g}" if strength else "top 20 by score"
        print(f"tradeoff {label}: HR@20 {res['lists']['hr@20']:.4f}  coverage@20 "
              f"{res['lists']['coverage@20']:.3f}  ({res['eval_seconds']:.1f} s)", file=sys.stderr, flush=True)
        return {"setting": setting, "strength": strength, **res["lists"], "eval_seconds": res["eval_seconds"]}

    base = measure(settings[0], 0.0)
    points = []
    for setting in settings:
        points.append({**base, "setting": setting})
        points.extend(measure(setting, s) for s in grid[1:])
    return {"points": points, "notes": notes}


def cmd_evaluate(args: argparse.Namespace) -> int:
    """streamrec evaluate CKPT TEST_TSV [--json] [--baselines] [--report DIR], or CKPT --sequences NAME.txt."""
    from models.evaluate import evaluate_checkpoint
    from models.pipeline import log_probes, sequence_probes
    from models.recall import RecallConfig

    _set_threads(args.threads)
    _one_input(args, "test", "TEST_TSV")
    if args.sequences:
        from models.sequences import evaluate_sequence_checkpoint

        if args.report:
            raise ValueError("--report reads click logs; it does not take --sequences")
        seq = evaluate_sequence_checkpoint(args.checkpoint, args.sequences, 2 if args.target == "validation" else 1,
                                           baselines=args.baselines, shaper=_shaper(args),
                                           probes=sequence_probes(RecallConfig.parse(args.recall), args.ranker))
        print(json.dumps(seq) if args.json else _fmt_sequences(seq))
        return 0
    res = evaluate_checkpoint(args.checkpoint, args.test, baselines=args.baselines or bool(args.report),
                              train_path=args.train, batch_size=args.batch_size, shaper=_shaper(args),
                              probes=log_probes(RecallConfig.parse(args.recall), args.ranker, args.train))
    if args.report:
        from models.report import write_report

        page = write_report(args.checkpoint, args.test, args.report, train_path=args.train, results=res)
        if not args.json:
            print(f"report: {page}")
    print(json.dumps(res) if args.json else _fmt_table(res))
    return 0


def cmd_ranker(args: argparse.Namespace) -> int:
    """streamrec ranker CKPT --valid TSV --out FILE, or CKPT --sequences NAME.txt --out FILE."""
    from models.pipeline import train_ranker
    from models.ranker import RankerParams
    from models.recall import RecallConfig

    _set_threads(args.threads)
    recall = RecallConfig.parse(args.recall, args.candidates)
    if recall is None:
        raise ValueError("the ranker ranks the recall stage's candidates: --recall cannot be off")
    params = RankerParams(**{k: v for k, v in (("trees", args.trees), ("max_queries", args.max_queries)) if v is not None})
    meta = train_ranker(args.checkpoint, args.out, valid_path=args.valid, train_path=args.train,
                        sequences_path=args.sequences, recall=recall, params=params,
                        log=None if args.json else print)
    meta["out"] = args.out
    print(json.dumps(meta) if args.json else f"ranker: {args.out} ({meta['queries']} queries, {meta['seconds']} s); "
          f"features by gain: {', '.join(f'{k} {v:.3f}' for k, v in list(meta['importance'].items())[:6])}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """streamrec report CKPT TEST_TSV --out DIR [--tradeoff [--strengths LIST] [--candidates C]]."""
    from models.report import write_report

    _set_threads(args.threads)
    tradeoff = _tradeoff(args) if args.tradeoff else None
    print(f"report: {write_report(args.checkpoint, args.test, args.out, train_path=args.train, tradeoff=tradeoff)}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    """streamrec prepare RAW_LOG --out-dir DIR (sessionize, filter, time split), or --sequences NAME.txt."""
    from models.prepare import Columns, prepare

    _one_input(args, "input", "RAW_LOG")
    if args.sequences:
        from models.sequences import prepare_sequences

        stats = prepare_sequences(args.sequences, args.out_dir, args.item_attributes)
        for name, s in stats.items():
            print(f"{args.out_dir}/{name}: {s}")
        return 0

    stats = prepare(
        args.input, args.out_dir, Columns(args.user_col, args.item_col, args.time_col, args.session_col),
        fmt=args.format, gap=args.gap, repeats=not args.drop_repeats, min_item_support=args.min_item_support,
        min_session_length=args.min_session_length, test_fraction=args.test_fraction,
        valid_fraction=args.valid_fraction, delimiter=args.delimiter,
    )
    for name, s in stats.items():
        print(f"{args.out_dir}/{name}.tsv: {s['clicks']} clicks, {s['sessions']} sessions, {s['items']} items")
    return 0


def cmd_coldstart(args: argparse.Namespace) -> int:
    """streamrec coldstart --sequences NAME.txt --item-attributes F [--share 0.1] [--json]."""
    from models.coldstart import cold_start

    _set_threads(args.threads)
    if not (args.sequences and args.item_attributes):
        raise ValueError("coldstart needs --sequences and --item-attributes")
    res = cold_start(args.sequences, args.item_attributes, share=args.share, seed=args.holdout_seed, preset=args.preset,
                     overrides=_train_overrides(args), progress=not args.quiet, log=None if args.json else print)
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"{res['held_out_items']} items held out of training; {res['users']} users whose test target is one of them")
    for name in ("network", "network_without_attributes", "attribute_popularity", "popularity"):
        r = res[name]
        a = r["among_held_out"]
        print(f"{name:<28} HR@20 {r['hr@20']:.4f}  NDCG@20 {r['ndcg@20']:.4f}   among held-out items: "
              f"HR@20 {a['hr@20']:.4f}  NDCG@20 {a['ndcg@20']:.4f}")
    return 0


def cmd_longterm(args: argparse.Namespace) -> int:
    """streamrec longterm [--clicks TSV --user-attributes JSON] [--gap S] [--json] [--out CKPT]."""
    from models.users import long_term_experiment

    _set_threads(args.threads)
    clicks, profiles = args.clicks, args.user_attributes
    if clicks is None:
        from stream_app.lab.datasets import ML100K_TERMS, movielens_users

        clicks, profiles = movielens_users()
        print(f"[data] {ML100K_TERMS}", file=sys.stderr, flush=True)
    res = long_term_experiment(clicks, profiles, gap=args.gap, overrides=_train_overrides(args), progress=not args.quiet,
                               log=None if args.json else print, out_path=args.out)
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"{res['test_users']} users' last sessions ({int(res['session_aware']['predictions'])} predicted clicks), "
          f"{res['items']} items, gap {res['gap_seconds']:.0f} s")
    for name in ("session_aware", "session_aware_no_profile", "session_only", "sknn_user_history", "sknn", "popularity"):
        r = res[name]
        print(f"{name:<26} Recall@20 {r['recall@20']:.4f}  MRR@20 {r['mrr@20']:.4f}  NDCG@20 {r['ndcg@20']:.4f}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    """streamrec tune TRAIN_TSV [--valid TSV] --out-dir DIR --name PRESET."""
    from models.tune import tune

    _set_threads(args.threads)
    best = tune(args.train, args.out_dir, valid_path=args.valid, valid_fraction=args.valid_fraction,
                trials=args.trials, timeout=args.timeout, study_name=args.study, preset_name=args.name,
                presets_dir=args.presets_dir, base_preset=args.base_preset, epochs=args.epochs, metric=args.metric)
    print(f"best {best['metric']} {best['value']:.4f} (trial {best['trial']}); preset written to {best['preset_path']}")
    return 0


def _fmt_simulation(res: dict[str, Any]) -> str:
    """``streamrec simulate`` without --json: the setting, the two learned policies item by item, the claims."""
    st, std, top = res["setting"], res["standard"]["probabilities"], res["top_k"]["probabilities"]
    lines = [f"{res['paper']}: {st['items']} items, rewards {st['rewards']}, {st['behaviour']} behaviour policy, "
             f"K = {st['k']}; {st['steps']} SGD steps of {st['batch']} logged actions, lr {st['lr']}, "
             f"seed {st['seed']}",
             f"{'item':>4}  {'reward':>6}  {'standard':>8}  {'top-K':>8}"]
    for i, r in enumerate(st["rewards"]):
        lines.append(f"{i + 1:>4}  {r:>6g}  {std[i]:>8.4f}  {top[i]:>8.4f}")
    lines += [f"{name}: {'yes' if ok else 'NO'}" for name, ok in res["claims"].items()]
    lines.append(f"{res['seconds']} s")
    return "\n".join(lines)


def cmd_simulate(args: argparse.Namespace) -> int:
    """streamrec simulate chen2019 [--steps N] [--seed S] [--lr LR] [--batch B] [--cap C] [--json]."""
    from models.offpolicy import chen2019

    _set_threads(args.threads if args.threads is not None else 1)  # ten logits: one thread is the fastest
    t0 = time.perf_counter()
    res = chen2019(steps=args.steps, lr=args.lr, seed=args.seed, batch=args.batch, cap=args.cap)
    res["seconds"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(res) if args.json else _fmt_simulation(res))
    return 0


def _fmt_ope(res: dict[str, Any]) -> str:
    """``streamrec ope`` without --json: each direction's on-policy value and the three estimates."""
    st = res["settings"]
    lines = [f"Open Bandit Dataset sample, campaign {res['campaign']}: {res['rounds']['random']} Random rounds, "
             f"{res['rounds']['bts']} Bernoulli TS rounds, {res['items']} items; {st['runs']} bootstrap runs"]
    for key in ("random_to_bts", "bts_to_random"):
        d = res[key]
        on = d["on_policy"]
        lines.append(f"{d['evaluation']} from the {d['behaviour']} log: on-policy {on['value']:.5f} "
                     f"[{on['ci'][0]:.5f}, {on['ci'][1]:.5f}] ({on['clicks']} clicks); "
                     f"effective sample size {d['weights']['effective_sample_size']:.0f}")
        for name, e in d["estimators"].items():
            runs = e["relative_error_runs"]
            spread = f"  over runs {runs['mean']:.3f} +- {runs['std']:.3f}" if runs else ""
            rel = "n/a" if e["relative_error"] is None else f"{e['relative_error']:.3f}"
            lines.append(f"  {name:<6} {e['estimate']:.5f} [{e['ci'][0]:.5f}, {e['ci'][1]:.5f}]  "
                         f"relative error {rel}{spread}")
    lines.append(f"{res['seconds']} s")
    return "\n".join(lines)


def cmd_ope(args: argparse.Namespace) -> int:
    """streamrec ope [--campaign all] [--runs N] [--wheel WHL] [--json]."""
    from pathlib import Path

    from models.ope import OBD_TERMS, fetch_wheel, obd_check

    _set_threads(args.threads if args.threads is not None else 1)
    if args.runs < 0 or args.bootstrap < 1 or args.n_sim < 1:
        raise ValueError("--runs takes 0 or more, --bootstrap and --n-sim 1 or more")
    if args.wheel:
        wheel = Path(args.wheel)
    else:
        from stream_app.settings import Settings

        wheel = fetch_wheel(Settings().lab.cache_dir / "wheels", log=lambda m: print(m, file=sys.stderr, flush=True))
    print(f"[data] {OBD_TERMS}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    res = obd_check(wheel, campaign=args.campaign, runs=args.runs, n_bootstrap=args.bootstrap, n_sim=args.n_sim,
                    seed=args.seed)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(res) if args.json else _fmt_ope(res))
    return 0


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    """Overrides shared by train (None means: keep the preset's value)."""
    g = p.add_argument_group("model / optimisation overrides (default: the preset's value)")
    g.add_argument("--epochs", type=int)
    g.add_argument("--hidden", type=int, help="units per recurrent layer")
    g.add_argument("--layers", type=int)
    g.add_argument("--cell", choices=["gru", "lstm", "rnn"])
    g.add_argument("--embedding", type=int, help="input embedding size; 0 = one-hot-like item rows")
    g.add_argument("--constrained", action=argparse.BooleanOptionalAction, default=None,
                   help="share input and output item embeddings")
    g.add_argument("--loss", choices=["cross-entropy", "bpr-max", "top1-max", "ce", "bpr", "top1"])
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--lr-schedule", choices=["constant", "linear"])
    g.add_argument("--momentum", type=float)
    g.add_argument("--negatives", type=int, help="extra shared negatives per step")
    g.add_argument("--alpha", type=float, help="negative sampling ~ popularity^alpha")
    g.add_argument("--bpreg", type=float, help="BPR-max score regularisation")
    g.add_argument("--logq", type=float, help="logQ correction weight for cross-entropy")
    g.add_argument("--dropout-emb", type=float)
    g.add_argument("--dropout-hidden", type=float)
    g.add_argument("--seed", type=int)
    g.add_argument("--patience", type=int, help="early-stopping patience in epochs (with --valid or --validate)")
    g.add_argument("--attr-lr", type=float, help="learning rate of the attribute tables relative to --lr")
    g.add_argument("--attr-pooling", choices=["idf", "mean"], help="how an item's attributes are weighed")
    g.add_argument("--user-hidden", type=int, help="width of the user-level GRU (streamrec longterm)")


RECALL_DEFAULT = "covisitation=0.25,attributes=0.1"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the offline sub-commands to the main ``streamrec`` parser."""
    thr = argparse.ArgumentParser(add_help=False)
    thr.add_argument("--threads", type=int, default=None,
                     help="torch.set_num_threads (default: torch's default, one per physical core)")

    seq = argparse.ArgumentParser(add_help=False)
    g = seq.add_argument_group("user sequences (the S3-Rec format, leave-one-out protocol: models/sequences.py)")
    g.add_argument("--sequences", metavar="NAME.txt", help="one user per line: user id, then items oldest first")
    g.add_argument("--item-attributes", metavar="NAME_item2attributes.json",
                   help="item id -> attribute ids; pooled into the item vectors")

    p = subparsers.add_parser("train", parents=[thr, seq], help="train a session RNN on a GRU4Rec TSV or user sequences")
    p.add_argument("train", metavar="TRAIN_TSV", nargs="?")
    p.add_argument("--validate", action="store_true",
                   help="with --sequences: keep each user's validation item out and stop early on it")
    p.add_argument("--out", required=True, metavar="CKPT")
    p.add_argument("--valid", metavar="TSV", help="validation TSV: early stopping on Recall@20")
    p.add_argument("--preset", help="built-in (small, large, auto), a name in --presets-dir, or a JSON path; "
                   "default auto: chosen from the number of items")
    p.add_argument("--presets-dir", default="presets")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_train_flags(p)
    p.set_defaults(func=_guard(cmd_train))

    p = subparsers.add_parser("evaluate", parents=[thr, seq],
                              help="next-item Recall/MRR/NDCG@K on a test TSV, or HR/NDCG@K on user sequences")
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument("test", metavar="TEST_TSV", nargs="?")
    p.add_argument("--target", choices=["test", "validation"], default="test",
                   help="with --sequences: rank each user's last item (test) or the one before it (validation)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--baselines", action="store_true", help="also popularity and Markov chain")
    p.add_argument("--train", metavar="TSV", help="training data for the Markov baseline (default: from the checkpoint)")
    p.add_argument("--report", metavar="DIR", help="also write the HTML report to DIR")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--rerank", metavar="SPEC", default="",
                   help="serve the lists through the re-rankers, e.g. mmr=0.2,long_tail=0.1 (also calibration=); "
                        "\"lists\" in the output then has their HR/MRR/NDCG@20 beside the beyond-accuracy figures")
    p.add_argument("--candidates", type=int, default=200, help="with --rerank: candidates re-ranked per list")
    p.add_argument("--recall", metavar="SPEC", default=RECALL_DEFAULT,
                   help="candidate sources' shares of the budget, reported as \"recall\" at 100/200/500 against "
                        "the network's exact top (needs the training clicks); off to skip (default %(default)s)")
    p.add_argument("--ranker", metavar="FILE", help="a `streamrec ranker` file: \"ranking\" then compares its order "
                   "with the network's on the same candidates (NDCG@10, MRR@20, HR@20)")
    p.set_defaults(func=_guard(cmd_evaluate))

    p = subparsers.add_parser("ranker", parents=[thr, seq],
                              help="train the LightGBM lambdarank ranker over the recall stage's candidates")
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument("--valid", metavar="TSV", help="click log the network was not trained on (the ranker learns there)")
    p.add_argument("--train", metavar="TSV", help="the network's training clicks (co-visitation; default: from the checkpoint)")
    p.add_argument("--out", required=True, metavar="FILE")
    p.add_argument("--recall", metavar="SPEC", default=RECALL_DEFAULT, help="candidate sources' shares (default %(default)s)")
    p.add_argument("--candidates", type=int, default=200, help="candidates per prediction (default %(default)s)")
    p.add_argument("--trees", type=int, help="boosting rounds (default 300)")
    p.add_argument("--max-queries", type=int, help="predictions sampled to learn from (default 20000)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_guard(cmd_ranker))

    p = subparsers.add_parser("report", parents=[thr], help="HTML report with plots")
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument("test", metavar="TEST_TSV")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--train", metavar="TSV")
    p.add_argument("--tradeoff", action="store_true",
                   help="also plot HR@20 against coverage@20 and intra-list diversity as each re-ranker's strength "
                        "varies (mmr, long_tail, and calibration for a checkpoint with item attributes): "
                        "tradeoff_*.png, a table and tradeoff.json; reads click logs (TEST_TSV), not --sequences")
    p.add_argument("--strengths", default="0,0.1,0.2,0.3,0.5", metavar="LIST",
                   help="with --tradeoff: the strengths each setting is run at; 0 (top 20 by score) is always "
                        "run, once (default %(default)s)")
    p.add_argument("--candidates", type=int, default=200, help="with --tradeoff: candidates re-ranked per list")
    p.set_defaults(func=_guard(cmd_report))

    p = subparsers.add_parser("prepare", parents=[seq],
                              help="raw click log -> sessionized, filtered, time-split GRU4Rec TSVs")
    p.add_argument("input", metavar="RAW_LOG", nargs="?", help="CSV, TSV, JSON lines or Parquet (needs pyarrow)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--format", choices=["csv", "tsv", "jsonl", "parquet"], help="default: from the extension")
    p.add_argument("--delimiter", help="CSV delimiter (default , for csv, tab for tsv)")
    p.add_argument("--user-col", default="user")
    p.add_argument("--item-col", default="item")
    p.add_argument("--time-col", default="time", help="numbers (seconds) or ISO-8601 strings")
    p.add_argument("--session-col", default=None, help="use this column as the session instead of a gap")
    p.add_argument("--gap", type=float, default=1800.0, help="inactivity gap in seconds that ends a session")
    p.add_argument("--drop-repeats", action="store_true", help="drop consecutive repeated clicks")
    p.add_argument("--min-item-support", type=int, default=5)
    p.add_argument("--min-session-length", type=int, default=2)
    p.add_argument("--test-fraction", type=float, default=0.1, help="latest sessions (by end time) kept for test")
    p.add_argument("--valid-fraction", type=float, default=0.1, help="latest training sessions for validation")
    p.set_defaults(func=_guard(cmd_prepare))

    p = subparsers.add_parser("coldstart", parents=[thr, seq],
                              help="hold a share of items out of training, rank them as test targets (attributes only)")
    p.add_argument("--share", type=float, default=0.1, help="share of items held out (default 0.1)")
    p.add_argument("--holdout-seed", type=int, default=0, help="which items are held out")
    p.add_argument("--json", action="store_true")
    p.add_argument("--preset", help="as for train (default auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_train_flags(p)
    p.set_defaults(func=_guard(cmd_coldstart))

    p = subparsers.add_parser("longterm", parents=[thr],
                              help="long-term users: session-aware vs session-only vs session-kNN on each user's last session")
    p.add_argument("--clicks", metavar="TSV", help="UserId, ItemId, Time (seconds); default MovieLens-100k from the recbole wheel")
    p.add_argument("--user-attributes", metavar="JSON", help="user id -> profile attributes (default with MovieLens: age band, gender, occupation)")
    p.add_argument("--gap", type=float, default=3600.0, help="inactivity gap in seconds that ends a session")
    p.add_argument("--out", metavar="CKPT", help="also save the session-aware network (the worker serves it)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_train_flags(p)
    p.set_defaults(func=_guard(cmd_longterm))

    p = subparsers.add_parser("simulate", parents=[thr],
                              help="off-policy REINFORCE on a known-reward simulation: chen2019 is Chen et al. 2019 "
                                   "§6.1.2 (10 items, uniform behaviour policy), standard vs top-K correction")
    p.add_argument("setting", choices=["chen2019"])
    p.add_argument("--steps", type=int, default=1000, help="SGD steps (default %(default)s)")
    p.add_argument("--batch", type=int, default=2048, help="logged actions per step (default %(default)s)")
    p.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="which actions the behaviour policy logs")
    p.add_argument("--cap", type=float, default=None, help="cap on the importance weight pi/beta (default: none)")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.set_defaults(func=_guard(cmd_simulate))

    p = subparsers.add_parser("ope", parents=[thr],
                              help="off-policy estimates (IPS, SNIPS, DR; obp) against on-policy values on the Open "
                                   "Bandit Dataset sample: Bernoulli TS from the Random log and Random from the BTS log")
    p.add_argument("--campaign", choices=["all", "men", "women"], default="all")
    p.add_argument("--runs", type=int, default=20,
                   help="bootstrap resamples of the behaviour log for the spread of the relative error (default %(default)s)")
    p.add_argument("--bootstrap", type=int, default=1000, help="resamples for each confidence interval (default %(default)s)")
    p.add_argument("--n-sim", type=int, default=100_000,
                   help="Monte Carlo draws of Bernoulli TS for its action distribution (default %(default)s)")
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--wheel", metavar="WHL", help="the obp 0.4.1 wheel (default: fetched into var/datasets/wheels)")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.set_defaults(func=_guard(cmd_ope))

    p = subparsers.add_parser("tune", parents=[thr], help="optuna search on train/validation; writes a preset")
    p.add_argument("train", metavar="TRAIN_TSV")
    p.add_argument("--valid", metavar="TSV", help="validation TSV (default: split TRAIN_TSV by time)")
    p.add_argument("--valid-fraction", type=float, default=0.1)
    p.add_argument("--out-dir", required=True, help="study storage (sqlite, resumable) and best.json")
    p.add_argument("--study", default="streamrec")
    p.add_argument("--name", help="preset name to write (default: the study name)")
    p.add_argument("--presets-dir", default="presets")
    p.add_argument("--base-preset", help="preset the search starts from (default: auto)")
    p.add_argument("--trials", type=int, default=20, help="total trials in the study (resume tops up)")
    p.add_argument("--timeout", type=float, help="seconds for this run")
    p.add_argument("--epochs", type=int, help="fix the number of epochs per trial")
    p.add_argument("--metric", default="recall@20", choices=["recall@20", "mrr@20", "ndcg@20", "recall@10", "mrr@10"])
    p.set_defaults(func=_guard(cmd_tune))


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m stream_app.offline_cli``) until stream_app.cli exists."""
    parser = argparse.ArgumentParser(prog="streamrec")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
