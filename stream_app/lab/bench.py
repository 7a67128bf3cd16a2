"""``streamrec bench [--quick] [--json]``: the worker against a bare Kafka loop and a naive Faust agent.

On one embedded broker, for two catalogues (the diginetica test sessions with a
43k-item model trained on diginetica, and a synthetic 1M-item catalogue with a
random-weight network, served through the ANN index), one after the other:
(a) ceiling: ``stream_app.lab.ceiling``, a bare aiokafka consume -> produce loop;
(b) the worker as shipped (``WorkerProcess``); (c) ``stream_app.lab.naive``, one
click at a time. Each gets a fresh topic set. Per system: events/s at
saturation (clicks produced as fast as the producer can, the system already
running), click-to-publish latency (output record time minus click record
time, both Kafka CreateTime) at saturation and at half of (b)'s saturated
rate, CPU seconds per 1,000 events (the child process, from /proc), peak RSS
(VmHWM). Then ANN recall@20 against exact top 20, and (full run) a soak of (b)
at half rate with RSS sampled. With --json the last line is one JSON object.
Figures are documented in docs/performance.md; nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream_app.brokers import KINDS
from stream_app.lab.bench_data import (
    ann_recall,
    default_data_dir,
    diginetica_clicks,
    ensure_diginetica_model,
    ensure_synthetic_model,
    scoring_agreement,
    synthetic_clicks,
)
from stream_app.lab.scaleout import scale_out
from stream_app.lab.benchkit import (
    WARMUP_MS,
    Child,
    Result,
    _read_all,
    cpu_seconds,
    fresh_settings,
    latencies_ms,
    percentiles,
    run_system,
    send,
    wait_for,
)


@dataclass
class Profile:
    """Sizes of one benchmark run (quick or full)."""

    clicks: int  # diginetica clicks replayed for (a) and (b) at saturation (0 = all)
    naive_clicks: int  # for (c)
    synth_clicks: int
    synth_naive_clicks: int
    half_rate_s: float
    naive_half_rate_s: float
    soak_s: float
    recall_queries: int


# --quick skips (c) at (b)'s half rate: the naive worker cannot sustain it, so that figure is queueing
QUICK = Profile(clicks=12000, naive_clicks=1500, synth_clicks=5000, synth_naive_clicks=200,
                half_rate_s=6.0, naive_half_rate_s=0.0, soak_s=0.0, recall_queries=500)
TINY = Profile(clicks=300, naive_clicks=100, synth_clicks=300, synth_naive_clicks=50,  # tests only
               half_rate_s=1.0, naive_half_rate_s=1.0, soak_s=0.0, recall_queries=100)
FULL = Profile(clicks=0, naive_clicks=10000, synth_clicks=30000, synth_naive_clicks=1500,
               half_rate_s=30.0, naive_half_rate_s=10.0, soak_s=300.0, recall_queries=2000)


# --------------------------------------------------------------------------- the command

def catalogue_runs(name: str, base: Any, model: Path, work: Path, broker_pid: int | None,
                   msgs: list[tuple[bytes, bytes]], naive_msgs: list[tuple[bytes, bytes]], prof: Profile,
                   overrides: dict[str, Any] | None, soak_s: float) -> dict[str, Result]:
    print(f"[bench] {name}: (b) worker at saturation, {len(msgs):,} clicks ...", flush=True)
    b = run_system("worker", base, model, work, broker_pid, msgs, [], 0.0, 0.0, overrides)
    half = b.events_per_s / 2
    print(f"[bench] {name}: (b) {b.events_per_s:,.0f} events/s; half rate = {half:,.0f}/s", flush=True)
    print(f"[bench] {name}: (b) at half rate for {prof.half_rate_s:g}s"
          + (f", then a {soak_s:g}s soak" if soak_s else "") + " ...", flush=True)
    b2 = run_system("worker", base, model, work, broker_pid, msgs[:1], msgs, half, prof.half_rate_s, overrides,
                    soak_s=soak_s)
    b.half_rate, b.half_rate_events_per_s, b.soak = b2.half_rate, half, b2.soak
    b.half_rate_incl_warmup = b2.half_rate_incl_warmup
    b.peak_rss_mb = max(b.peak_rss_mb, b2.peak_rss_mb)
    print(f"[bench] {name}: (a) ceiling ...", flush=True)
    a = run_system("ceiling", base, model, work, broker_pid, msgs, msgs, half, prof.half_rate_s, overrides)
    print(f"[bench] {name}: (c) naive, {len(naive_msgs):,} clicks ...", flush=True)
    c = run_system("naive", base, model, work, broker_pid, naive_msgs, naive_msgs, half, prof.naive_half_rate_s,
                   overrides)
    return {"ceiling": a, "worker": b, "naive": c}


def print_table(name: str, runs: dict[str, Result]) -> None:
    print(f"\n{name}")
    print(f"  {'system':<10}{'events':>8}{'events/s':>10}{'sat p50':>9}{'p99':>9}{'p99.9':>9}"
          f"{'half p50':>10}{'p99':>8}{'p99.9':>9}{'CPU s/1k':>10}{'broker':>8}{'RSS MB':>8}")
    for key, label in (("ceiling", "(a) ceil"), ("worker", "(b) work"), ("naive", "(c) naive")):
        r = runs[key]
        f = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
        print(f"  {label:<10}{r.events:>8}{r.events_per_s:>10.0f}{f(r.saturation.get('p50_ms')):>9}"
              f"{f(r.saturation.get('p99_ms')):>9}{f(r.saturation.get('p999_ms')):>9}"
              f"{f(r.half_rate.get('p50_ms')):>10}{f(r.half_rate.get('p99_ms')):>8}{f(r.half_rate.get('p999_ms')):>9}"
              f"{r.cpu_s_per_1k:>10.3f}{r.broker_cpu_s_per_1k:>8.3f}{r.peak_rss_mb:>8.0f}")
    a, b, c = runs["ceiling"], runs["worker"], runs["naive"]
    print(f"  b/a = {b.events_per_s / max(1e-9, a.events_per_s):.2f}   "
          f"b/c = {b.events_per_s / max(1e-9, c.events_per_s):.1f}   "
          f"(latency in ms; saturation = clicks produced as fast as possible, so its latency is mostly queueing;\n"
          f"  half rate: after a {WARMUP_MS / 1000:g} s warm-up, worker p99 with it: "
          f"{b.half_rate_incl_warmup.get('p99_ms')})")


def print_guarantees(runs: dict[str, Result]) -> None:
    print("\nprocessing guarantees: (b) on the diginetica clicks at saturation, one after the other")
    print(f"  {'guarantee':<15}{'events':>8}{'events/s':>10}{'sat p50':>9}{'p99':>9}{'CPU s/1k':>10}"
          f"{'broker':>8}{'vs ALO':>8}")
    base = runs["at_least_once"].events_per_s
    for name in ("at_least_once", "exactly_once"):
        r = runs[name]
        print(f"  {name:<15}{r.events:>8}{r.events_per_s:>10.0f}{r.saturation.get('p50_ms') or 0:>9.1f}"
              f"{r.saturation.get('p99_ms') or 0:>9.1f}{r.cpu_s_per_1k:>10.3f}{r.broker_cpu_s_per_1k:>8.3f}"
              f"{r.events_per_s / max(1e-9, base):>8.2f}")
    print("  (exactly_once: latency to the produced record; a read_committed reader sees it at the next commit, "
          "every 0.1 s)")


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from stream_app.brokers import local_broker
    from stream_app.settings import Settings

    prof = TINY if args.tiny else QUICK if args.quick else FULL
    soak_s = args.soak_s if args.soak_s is not None else prof.soak_s
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) if args.data else default_data_dir()
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    digi_model = ensure_diginetica_model(data, work, args.model)
    synth_model = ensure_synthetic_model(work, n_items=args.synthetic_items) if not args.skip_synthetic else None

    summary: dict[str, Any] = {"quick": bool(args.quick), "cpus": os.cpu_count()}
    digi_msgs = diginetica_clicks(data, prof.clicks)
    scoring = scoring_agreement(digi_model, digi_msgs, prof.recall_queries)
    print(f"[bench] exact scoring on the diginetica model: {scoring['identical_lists']:.2%} of "
          f"{scoring['queries']:,} top-20 lists identical to one full float32 product and topk; Recall@20 "
          f"{scoring['default']['recall_at_20']} vs {scoring['reference']['recall_at_20']}, MRR@20 "
          f"{scoring['default']['mrr_at_20']} vs {scoring['reference']['mrr_at_20']}; "
          f"{scoring['default_ms_per_click']} vs {scoring['reference_ms_per_click']} ms per click at batch "
          f"{scoring['batch']} ({scoring['speedup']}x)", flush=True)
    recall_43k = ann_recall(digi_model, digi_msgs, prof.recall_queries, work)
    print(f"[bench] ANN recall@20 on the diginetica model ({recall_43k['items']:,} items): "
          f"{recall_43k['recall_at_20']}", flush=True)
    recall_1m = None
    synth_msgs: list[tuple[bytes, bytes]] = []
    if synth_model is not None:
        synth_msgs = synthetic_clicks(max(prof.synth_clicks, prof.recall_queries), args.synthetic_items)
        recall_1m = ann_recall(synth_model, synth_msgs, prof.recall_queries, work)
        print(f"[bench] ANN recall@20 on the synthetic model ({recall_1m['items']:,} items): "
              f"{recall_1m['recall_at_20']} (index {recall_1m.get('index_build_or_load_s')} s, "
              f"{recall_1m.get('ann_ms_per_query')} ms/query vs exact {recall_1m.get('exact_ms_per_query')} ms)",
              flush=True)

    results: dict[str, dict[str, Result]] = {}
    guarantees: dict[str, Result] = {}
    with local_broker(Settings(), args.broker) as (broker, base):
        broker_pid = broker.pid if broker is not None else None
        summary["broker"] = (args.broker or base.broker.kind) if broker is not None else "configured"
        print(f"[bench] broker: {summary['broker']} at {base.kafka.bootstrap_servers}", flush=True)
        results["diginetica"] = catalogue_runs(
            "diginetica (43k items, exact top-k)", base, digi_model, work, broker_pid, digi_msgs,
            digi_msgs[: prof.naive_clicks], prof, None, soak_s)
        if summary["broker"] != "embedded":  # transactions: both processing guarantees side by side
            other = "at_least_once" if base.worker.exactly_once else "exactly_once"
            print(f"[bench] diginetica: (b) worker under {other} at saturation ...", flush=True)
            guarantees = {base.worker.processing_guarantee: results["diginetica"]["worker"],
                          other: run_system("worker", base, digi_model, work, broker_pid, digi_msgs, [], 0.0, 0.0,
                                            {"worker": {"processing_guarantee": other}})}
        scaling = scale_out(base, digi_model, work, broker_pid, digi_msgs)
        if synth_model is not None:
            ann = {"model": {"index": "ann", "ann_cache_dir": str(work / "ann")}}
            results["synthetic"] = catalogue_runs(
                f"synthetic ({args.synthetic_items:,} items, ANN top-k)", base, synth_model, work, broker_pid,
                synth_msgs[: prof.synth_clicks], synth_msgs[: prof.synth_naive_clicks], prof, ann, 0.0)

    print_table("diginetica test sessions, 43,097-item model, exact top-k", results["diginetica"])
    if "synthetic" in results:
        print_table(f"synthetic {args.synthetic_items:,}-item catalogue, ANN top-k in (b), full scoring in (c)",
                    results["synthetic"])
    if guarantees:
        print_guarantees(guarantees)
        alo, eos = guarantees["at_least_once"], guarantees["exactly_once"]
        summary.update({"exactly_once_events_per_s": eos.events_per_s,
                        "at_least_once_events_per_s": alo.events_per_s,
                        "exactly_once_over_at_least_once": round(eos.events_per_s / max(1e-9, alo.events_per_s), 3)})
    print(f"\nANN recall@20 vs exact: diginetica {recall_43k['recall_at_20']}"
          + (f", synthetic 1M {recall_1m['recall_at_20']}" if recall_1m else ""))
    d = results["diginetica"]
    a, b, c = d["ceiling"], d["worker"], d["naive"]
    summary.update({
        "ceiling_events_per_s": a.events_per_s,
        "worker_events_per_s": b.events_per_s,
        "naive_events_per_s": c.events_per_s,
        "worker_over_ceiling": round(b.events_per_s / max(1e-9, a.events_per_s), 3),
        "worker_over_naive": round(b.events_per_s / max(1e-9, c.events_per_s), 2),
        "worker_p99_ms_half_rate": b.half_rate.get("p99_ms"),  # after the 2 s warm-up
        "worker_p99_ms_half_rate_incl_warmup": b.half_rate_incl_warmup.get("p99_ms"),
        "ann_recall_at_20": (recall_1m if recall_1m and recall_1m["recall_at_20"] is not None
                             else recall_43k)["recall_at_20"],
        "ann_recall_at_20_diginetica": recall_43k["recall_at_20"],
        "exact_identical_lists": scoring["identical_lists"],
        "scoring": scoring,
        "scale_out": scaling,
        "cpu_s_per_1k_per_worker_one": scaling["1"]["cpu_s_per_1k_per_worker"][0],
        "cpu_s_per_1k_per_worker_two": scaling["2"]["cpu_s_per_1k_per_worker"],
        "ann": {"diginetica": recall_43k, "synthetic": recall_1m},
        "runs": {cat: {k: vars(r) for k, r in runs.items()} for cat, runs in results.items()},
        "wall_s": round(time.perf_counter() - t_start, 1),
    })
    if "synthetic" in results:
        sa, sb, sc = (results["synthetic"][k] for k in ("ceiling", "worker", "naive"))
        summary.update({"synthetic_worker_events_per_s": sb.events_per_s,
                        "synthetic_worker_over_naive": round(sb.events_per_s / max(1e-9, sc.events_per_s), 2),
                        "synthetic_worker_over_ceiling": round(sb.events_per_s / max(1e-9, sa.events_per_s), 3)})
    if b.soak:
        summary["soak_rss_growth_pct"] = b.soak.get("growth_after_warmup_pct")
    print(f"[bench] done in {summary['wall_s']} s", flush=True)
    if args.json:
        print(json.dumps(summary, separators=(",", ":"), default=str), flush=True)
    return 0


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``group.name=value`` strings (e.g. ``model.index=ann``) as fresh_settings overrides."""
    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        group, _, field_name = name.partition(".")
        out.setdefault(group, {})[field_name] = json.loads(value) if value[:1] in "0123456789[{tf-" else value
    return out


def cmd_worker_only(args: argparse.Namespace) -> int:
    """(b) alone on diginetica clicks, at full speed or ``--rate``; optional py-spy profile of the worker.

    With ``--against``, (b) runs twice on the same broker and clicks, first with the ``--set`` settings
    (the baseline), then with the ``--against`` ones on top, and the last line holds both and their ratios."""
    from stream_app.brokers import local_broker
    from stream_app.settings import Settings

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) if args.data else default_data_dir()
    model = ensure_diginetica_model(data, work, args.model)
    msgs = diginetica_clicks(data, args.worker_only)
    with local_broker(Settings(), args.broker) as (_broker, base):
        out = _worker_only_run(args, base, model, work, msgs, args.set)
        if args.against:
            other = _worker_only_run(args, base, model, work, msgs, args.set + args.against)
            out = {"baseline": out, "against": other, "ratios": {
                "events_per_s": round(other["events_per_s"] / max(out["events_per_s"], 1e-9), 3),
                "cpu_s_per_1k": round(other["cpu_s_per_1k"] / max(out["cpu_s_per_1k"], 1e-9), 3)}}
    print(json.dumps(out), flush=True)
    return 0


def _worker_only_run(args: argparse.Namespace, base: Any, model: Path, work: Path, msgs: Any,
                     overrides: list[str]) -> dict[str, Any]:
    import urllib.request

    from stream_app.worker.topics import ensure_topics

    s = fresh_settings(base, model, work, parse_overrides(overrides))
    ensure_topics(s)
    child = Child("worker", s, work)
    child.start()
    try:
        spy = None
        stacks = work / "profile.txt"
        if args.profile_s:
            stacks.unlink(missing_ok=True)
            venv_spy = Path(sys.executable).with_name("py-spy")
            spy = subprocess.Popen([str(venv_spy) if venv_spy.exists() else "py-spy", "record", "-f", "raw", "-r", "200", "-d", str(max(1, round(args.profile_s))),
                                    "-o", str(stacks), "--pid", str(child.pid)])
        cpu0 = cpu_seconds(child.pid)
        n = send(s, s.topics.clicks, msgs, rate=args.rate)
        got = wait_for(s.kafka.bootstrap_servers, s.topics.recommendations, n, 600, child.alive,
                       worker=child.worker if s.worker.exactly_once else None)
        cpu = cpu_seconds(child.pid) - cpu0
        metrics = urllib.request.urlopen(child.worker.base_url + "/metrics").read().decode()
        batches = [ln for ln in metrics.splitlines() if ln.startswith("streamrec_batch_size_")
                   and ("_sum" in ln or "_count" in ln)]
        if spy is not None:
            spy.wait()
    finally:
        child.stop()
    lat, first_in, last_out = latencies_ms(asyncio.run(_read_all(s.kafka.bootstrap_servers,
                                                                 s.topics.recommendations)))
    out = {"events": got, "events_per_s": round(got / max(1e-3, (last_out - first_in) / 1000.0), 1),
           "cpu_s_per_1k": round(cpu / max(1, got) * 1000, 3), "rate": args.rate, **percentiles(lat),
           "batch_metrics": batches, "overrides": overrides}
    if args.profile_s and stacks.exists():
        from stream_app.lab.profile import format_summary, summarize

        rows = summarize(stacks.read_text("utf-8", "replace").splitlines())
        print(f"py-spy, {sum(c for _, c, _ in rows)} samples of the worker ({stacks}):", flush=True)
        print(format_summary(rows), flush=True)
        out["profile"] = [{"part": p, "samples": c, "share": round(sh, 4)} for p, c, sh in rows]
    if not args.against:
        return out
    print(json.dumps(out), flush=True)  # each run's own line; the last line holds both and the ratios
    return out


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``streamrec bench``."""
    p = subparsers.add_parser("bench", help="throughput and latency: worker vs. a bare Kafka loop and a naive agent")
    p.add_argument("--quick", action="store_true", help="a smaller run (under 3 minutes)")
    p.add_argument("--json", action="store_true", help="end with one JSON line of figures")
    p.add_argument("--model", default=None, help="diginetica checkpoint (default: train a small one once, cached)")
    p.add_argument("--data", default=None, help="diginetica folder with train_full.tsv and test.tsv")
    p.add_argument("--broker", choices=KINDS, default=None,
                   help="the local broker to run on (default STREAMREC_BROKER__KIND, embedded); "
                        "ignored when STREAMREC_KAFKA__BOOTSTRAP_SERVERS names a cluster")
    p.add_argument("--work-dir", default="var/bench", help="cached models and indexes, logs, worker data")
    p.add_argument("--soak-s", type=float, default=None, help="seconds of (b) at half rate with RSS sampled "
                   "(default: 300 in the full run, 0 with --quick)")
    p.add_argument("--synthetic-items", type=int, default=1_000_000, help="size of the synthetic catalogue")
    p.add_argument("--skip-synthetic", action="store_true", help="diginetica only")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # the JSON-keys test
    p.add_argument("--worker-only", type=int, default=0, metavar="N",
                   help="only (b), on the first N diginetica clicks (profiling and tuning)")
    p.add_argument("--rate", type=float, default=0.0, help="with --worker-only: clicks/s (0: as fast as possible)")
    p.add_argument("--set", action="append", default=[], metavar="GROUP.NAME=VALUE",
                   help="with --worker-only: a setting, e.g. model.index=ann or worker.batch_max=64")
    p.add_argument("--against", action="append", default=[], metavar="GROUP.NAME=VALUE",
                   help="with --worker-only: run (b) again with these settings on top and print the ratios "
                        "(e.g. model.ranker=FILE: the pipeline on against off)")
    p.add_argument("--profile-s", type=float, default=0.0,
                   help="with --worker-only: py-spy the worker for this long (raw stacks in WORK_DIR/profile.txt)")
    p.set_defaults(func=lambda args: cmd_worker_only(args) if args.worker_only else cmd_bench(args))
