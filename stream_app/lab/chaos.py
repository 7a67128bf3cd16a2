"""`streamrec chaos`: each fault injected under steady traffic, then checked for losses.

Each fault run starts its own local broker (``--broker embedded|kafka``) unless
``STREAMREC_KAFKA__BOOTSTRAP_SERVERS`` names a cluster.

Faults: the worker SIGKILLed three times, one of two workers SIGKILLed (its
partitions move, standby replicas on), the data dir deleted between restarts,
the broker frozen (SIGSTOP) and resumed, a SIGTERM in the middle of a batch.
After each: every valid click has at least one list, every bad message a
dead letter, and every user's final state (read from the changelog) equals a
clean fault-free replay of the same clicks (atol 1e-5).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from stream_app.brokers import KINDS
from stream_app.lab.cluster_faults import CLUSTER_FAULTS, CLUSTER_NODES, CLUSTER_PROCEDURES
from stream_app.lab.fault_env import (
    FaultEnv,
    ListsMonitor,
    clicks_consumed,
    hold_frozen,
    under_traffic,
    wait_both_ready,
)
from stream_app.settings import Settings

FAULTS = ("sigkill x3", "rebalance: 1 of 2 killed", "data dir deleted", "broker frozen", "sigterm mid-batch")


@dataclass(frozen=True)
class Profile:
    """How big each fault run is."""

    name: str
    rate: float  # clicks per second of steady traffic
    min_clicks: int  # traffic goes on after the fault until this many messages are sent
    users: int
    gap_s: float  # seconds of traffic before a fault (and between the three kills)
    tail_s: float  # seconds of traffic after the fault
    freeze_s: float
    burst: int  # clicks sent at once just before the SIGTERM
    items: int = 50  # clicks are on the model's first N items


QUICK = Profile("quick", rate=50.0, min_clicks=0, users=40, gap_s=2.0, tail_s=2.0, freeze_s=5.0, burst=300)
FULL = Profile("full", rate=120.0, min_clicks=0, users=200, gap_s=8.0, tail_s=10.0, freeze_s=10.0, burst=1000)


def real_load(model: Path, root: Path, broker_kind: str | None, log: Callable[[str], None]) -> Profile:
    """``--load real``: the served model (diginetica) at half the worker's saturated rate, so batches are
    large and crashes land mid-batch. The rate is measured once, on a fresh broker and worker."""
    from stream_app.lab.soak import saturated_rate
    from stream_app.worker.start import load_recommender

    env = FaultEnv(model, root / "saturation", broker_kind=broker_kind)
    try:
        recommender, _ = load_recommender(env.settings)
        worker = env.worker("sat")
        worker.wait_ready()
        rate = saturated_rate(env.settings, recommender.item_ids[:5000], 6000, 2000)
    finally:
        env.close()
    log(f"real load: saturated rate {rate:.0f} clicks/s, faults at {rate / 2:.0f} clicks/s")
    return Profile("real", rate=rate / 2.0, min_clicks=0, users=2000, gap_s=8.0, tail_s=10.0, freeze_s=10.0,
                   burst=int(rate * 2), items=5000)


@dataclass
class FaultResult:
    fault: str
    clicks: int
    lost: int
    duplicated: int
    state_mismatches: int
    recovery_s: float
    detail: dict[str, Any] = field(default_factory=dict)

    exactly_once: bool = False

    @property
    def ok(self) -> bool:
        """0 lost lists, dead letters and state mismatches; under exactly-once 0 duplicated lists too."""
        return (self.lost == 0 and self.state_mismatches == 0 and self.detail.get("dead_letters_lost", 0) == 0
                and not (self.exactly_once and self.duplicated) and not self.detail.get("error"))

    def row(self) -> dict[str, Any]:
        return {"fault": self.fault, "clicks": self.clicks, "lost": self.lost, "duplicated": self.duplicated,
                "state_mismatches": self.state_mismatches,
                "recovery_s": round(self.recovery_s, 2) if self.recovery_s == self.recovery_s else None,
                "ok": self.ok, "detail": self.detail}


# -- the faults: each starts its workers, runs the traffic, injects, returns fault-end times ------------------


def _sigkill_x3(env: FaultEnv, traffic: Any, p: Profile, detail: dict[str, Any]) -> list[float]:
    w = env.worker("a")
    w.wait_ready()
    traffic.start()
    ends = []
    for _ in range(3):
        time.sleep(p.gap_s)
        ends.append(time.time())
        w.kill()
        w = env.worker("a")
        w.wait_ready()
    return ends


def _rebalance(env: FaultEnv, traffic: Any, p: Profile, detail: dict[str, Any]) -> list[float]:
    a, b = env.worker("a"), env.worker("b")
    a.wait_ready()
    b.wait_ready()
    wait_both_ready(a, b)
    traffic.start()
    time.sleep(p.gap_s)
    detail["b_clicks_before_kill"] = clicks_consumed(b)
    end = time.time()
    b.kill()
    time.sleep(p.gap_s)
    a.wait_ready()
    return [end]


def _data_dir_deleted(env: FaultEnv, traffic: Any, p: Profile, detail: dict[str, Any]) -> list[float]:
    w = under_traffic(env, traffic, p.gap_s)
    end = time.time()
    w.kill()
    shutil.rmtree(env.data_dir("a"), ignore_errors=True)
    w = env.worker("a")
    detail["rebuild_ready_s"] = round(w.wait_ready(), 2)
    return [end]


def _broker_frozen(env: FaultEnv, traffic: Any, p: Profile, detail: dict[str, Any]) -> list[float]:
    if env.broker is None:
        raise RuntimeError("the broker freeze needs a local broker (it SIGSTOPs its process)")
    w = under_traffic(env, traffic, p.gap_s)
    hold_frozen(env.broker.freeze, env.broker.thaw, p.freeze_s)
    detail["frozen_s"] = p.freeze_s
    end = time.time()
    w.wait_ready()
    return [end]


def _sigterm_mid_batch(env: FaultEnv, traffic: Any, p: Profile, detail: dict[str, Any]) -> list[float]:
    w = under_traffic(env, traffic, p.gap_s)
    traffic.burst(p.burst)  # the worker is now busy with a backlog of full batches
    time.sleep(0.05)
    end = time.time()
    started = time.monotonic()
    code = w.stop(timeout_s=env.settings.worker.shutdown_grace_s + 10)
    detail["shutdown_s"] = round(time.monotonic() - started, 2)
    detail["exit_code"] = code
    w = env.worker("a")
    w.wait_ready()
    return [end]


PROCEDURES: dict[str, tuple[Callable[..., list[float]], int]] = {
    FAULTS[0]: (_sigkill_x3, 0),
    FAULTS[1]: (_rebalance, 1),
    FAULTS[2]: (_data_dir_deleted, 0),
    FAULTS[3]: (_broker_frozen, 0),
    FAULTS[4]: (_sigterm_mid_batch, 0),
}


# -- running one fault and checking it --------------------------------------------------------------------------


def run_fault(name: str, profile: Profile, model_path: Path, root: Path, min_clicks: int = 0,
              drain_timeout_s: float = 90.0, log: Callable[[str], None] = lambda s: None,
              broker_kind: str | None = None) -> FaultResult:
    """Inject one fault under steady traffic; count lost and duplicated lists and state mismatches."""
    from stream_app.lab.traffic import Traffic, clicks_stream

    procedure, standby = {**PROCEDURES, **CLUSTER_PROCEDURES}[name]
    root.mkdir(parents=True, exist_ok=True)
    nodes = CLUSTER_NODES if name in CLUSTER_FAULTS else 1
    env = FaultEnv(model_path, root, standby=standby, broker_kind=broker_kind, nodes=nodes)
    detail: dict[str, Any] = {}
    monitor: ListsMonitor | None = None
    traffic: Any = None
    stopped = False
    try:
        from stream_app.worker.start import load_recommender

        recommender, _ = load_recommender(env.settings)
        items = recommender.item_ids[:profile.items]
        traffic = Traffic(env.settings, clicks_stream(items, profile.users, seed=zlib.crc32(name.encode()) % 1000, bad_every=40),
                          rate=profile.rate)
        monitor = ListsMonitor(env.settings)
        started = time.monotonic()
        log(f"{name}: injecting")
        ends = procedure(env, traffic, profile, detail)
        if not monitor.wait_recovered(ends[-1], env.settings.topics.partitions, drain_timeout_s):
            detail["error"] = "no lists on some partition after the fault"
        time.sleep(profile.tail_s)
        wanted = max(min_clicks, profile.min_clicks)
        while traffic.count < wanted:
            time.sleep(0.2)
        sent = traffic.stop()
        stopped = True
        log(f"{name}: {len(sent)} messages sent in {time.monotonic() - started:.0f}s, draining")
        result = _check(name, env, sent, ends, recommender, detail, monitor, drain_timeout_s)
        if not result.ok:
            detail["error"] = detail.get("error") or f"not ok: worker logs kept in {root}"
        return result
    except Exception as exc:  # noqa: BLE001 - a fault run that breaks is a failed row, not a crash
        detail["error"] = f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return FaultResult(name, 0, -1, 0, -1, -1.0, detail)
    finally:
        if traffic is not None and not stopped:
            traffic.abort()
        if monitor is not None:
            monitor.close()
        env.close()
        if not detail.get("error"):  # keep the worker logs of a broken run
            shutil.rmtree(root, ignore_errors=True)


def _check(name: str, env: FaultEnv, sent: list[Any], ends: list[float], recommender: Any,
           detail: dict[str, Any], monitor: ListsMonitor, drain_timeout_s: float) -> FaultResult:
    from stream_app.lab.harness import TopicReader
    from stream_app.core.records import DEAD_LETTER_SOURCE_HEADER
    from stream_app.lab.verify import delivery, final_states, reference_states, state_mismatches

    s = env.settings
    valid = [m for m in sent if m.valid and m.position is not None]
    bad = [m for m in sent if not m.valid and m.position is not None]
    detail["not_produced"] = sum(1 for m in sent if m.position is None)
    wanted = {m.position for m in valid}
    monitor.wait_covered(wanted, drain_timeout_s)
    recs = monitor.close()
    dlq_reader = TopicReader(s, s.topics.dead_letter)
    dlq = dlq_reader.read_until(len(bad), 30, idle_s=0.5)
    dlq_reader.close()
    for w in env.workers:  # a clean stop flushes the last changelog writes
        w.stop(timeout_s=30)
    got = final_states(s)
    want = reference_states(s, [(m.key, m.value) for m in valid], [m.position for m in valid], recommender)
    problems = state_mismatches(got, want)
    d = delivery(wanted, recs)
    dlq_sources = {dict(r.headers or []).get(DEAD_LETTER_SOURCE_HEADER, b"").decode() for r in dlq}
    detail["dead_letters_lost"] = sum(1 for m in bad if f"{s.topics.clicks}/{m.position[0]}/{m.position[1]}"
                                      not in dlq_sources)
    detail["bad_input"] = len(bad)
    detail["replayed"] = d.replayed
    detail["users"] = len(want)
    if problems:
        detail["mismatch_examples"] = problems[:5]
    if d.lost:
        detail["lost_examples"] = d.lost[:5]
    if d.duplicated and s.worker.exactly_once:
        detail["duplicate_examples"] = [
            {"click": list(p), "lists": [{"produced_ts": r.produced_ts, "replayed": r.replayed} for r in recs
                                         if (r.source.partition, r.source.offset) == p]}
            for p in d.duplicate_examples]
    return FaultResult(name, len(valid), len(d.lost), d.duplicated, len(problems),
                       recovery_seconds(recs, valid, ends, s.topics.partitions), detail,
                       exactly_once=s.worker.exactly_once)


def recovery_seconds(recs: list[Any], sent: list[Any], ends: list[float], partitions: int) -> float:
    """Worst, over the faults, of the time from the fault's end until the pipeline has caught up.

    Caught up: every partition has published a list after the fault ended, and
    every valid click sent before it ended has its list.
    """
    first_list: dict[tuple[int, int], float] = {}
    for r in recs:
        pos = (r.source.partition, r.source.offset)
        first_list[pos] = min(first_list.get(pos, r.produced_ts), r.produced_ts)
    worst = 0.0
    for end in ends:
        flowing: dict[int, float] = {}
        for r in recs:
            if r.produced_ts >= end:
                p = r.source.partition
                flowing[p] = min(flowing.get(p, r.produced_ts), r.produced_ts)
        if len(flowing) < partitions:
            return float("nan")
        backlog = [first_list.get(m.position, float("nan")) for m in sent
                   if m.valid and m.position is not None and m.sent_at < end]
        worst = max(worst, max(flowing.values()) - end, max(backlog, default=end) - end)
    return worst


# -- the command ----------------------------------------------------------------------------------------------


def format_table(results: list[FaultResult]) -> str:
    head = f"{'fault':<28} {'clicks':>7} {'lost':>5} {'duplicated':>10} {'state_mismatches':>16} {'recovery_s':>10}"
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(f"{r.fault:<28} {r.clicks:>7} {r.lost:>5} {r.duplicated:>10} {r.state_mismatches:>16} "
                     f"{r.recovery_s:>10.1f}" + ("" if r.ok else "   FAILED " + str(r.detail.get("error", ""))))
    return "\n".join(lines)


def cmd_chaos(args: argparse.Namespace) -> int:
    from stream_app.lab.traffic import json_line, small_checkpoint

    if args.soak:
        from stream_app.lab.soak import cmd_soak

        return cmd_soak(args)
    profile = QUICK if args.quick else FULL
    work = Path(args.work_dir)
    say = (lambda s: print(s, file=sys.stderr, flush=True)) if args.json else (lambda s: print(s, flush=True))
    if args.load == "real":
        from stream_app.lab.bench_data import default_data_dir, ensure_diginetica_model

        model = ensure_diginetica_model(Path(args.data) if args.data else default_data_dir(), work, args.model)
        profile = real_load(model, work, args.broker, say)
    else:
        model = Path(args.model) if args.model else small_checkpoint(work / "model.pt")
    configured = Settings()
    if (configured.worker.exactly_once and configured.kafka.needs_embedded
            and (args.broker or configured.broker.kind) == "embedded"):
        print("streamrec chaos: error: exactly_once needs Apache Kafka (the embedded broker has no transactions): "
              "add --broker kafka", file=sys.stderr)
        return 2
    local_kafka = configured.kafka.needs_embedded and (args.broker or configured.broker.kind) == "kafka"
    every = FAULTS + (CLUSTER_FAULTS if local_kafka else ())
    faults = [f for f in every if not args.only or any(o in f for o in args.only)]
    if not configured.kafka.needs_embedded and FAULTS[3] in faults:
        faults.remove(FAULTS[3])
        say(f"{FAULTS[3]}: skipped, it needs a local broker's process (a cluster is configured)")
    started = time.monotonic()
    results = []
    for i, name in enumerate(faults):
        r = run_fault(name, profile, model, work / f"run-{i}", min_clicks=args.clicks, log=say,
                      broker_kind=args.broker)
        say(f"{name}: clicks {r.clicks}, lost {r.lost}, duplicated {r.duplicated}, "
            f"state mismatches {r.state_mismatches}, recovery {r.recovery_s:.1f}s {r.detail}")
        results.append(r)
    elapsed = time.monotonic() - started
    table = format_table(results)
    print(table, file=sys.stderr if args.json else sys.stdout, flush=True)
    ok = all(r.ok for r in results)
    if args.json:
        broker = (args.broker or configured.broker.kind) if configured.kafka.needs_embedded else "configured"
        print(json_line({"rows": [r.row() for r in results], "profile": profile.name, "rate": round(profile.rate, 1),
                         "broker": broker, "processing_guarantee": configured.worker.processing_guarantee, "elapsed_s": round(elapsed, 1), "ok": ok}), flush=True)
    else:
        print(f"{'all faults passed' if ok else 'FAILURES'} ({profile.name}, {elapsed:.0f}s)", flush=True)
    return 0 if ok else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("chaos", help="inject faults under steady traffic on a local broker or a cluster; "
                              "count lost lists and state mismatches")
    p.add_argument("--quick", action="store_true", help="every fault at a small size (a few minutes)")
    p.add_argument("--broker", choices=KINDS, default=None,
                   help="the local broker each run starts (default STREAMREC_BROKER__KIND, embedded); "
                        "ignored when STREAMREC_KAFKA__BOOTSTRAP_SERVERS names a cluster")
    p.add_argument("--json", action="store_true", help="the last line is one JSON object {\"rows\": [...]}")
    p.add_argument("--clicks", type=int, default=0, help="at least N messages of traffic per fault")
    p.add_argument("--load", choices=("small", "real"), default="small",
                   help="small: a 50-item, 16-unit model at 120 clicks/s (50 with --quick); real: the diginetica "
                        "model (trained once and cached, or --model) at half the worker's saturated rate")
    p.add_argument("--data", default=None, help="with --load real: the diginetica folder (default: under "
                   "STREAMREC_LAB__DATA_DIR)")
    p.add_argument("--only", action="append", default=[], help="run only faults whose name contains this")
    p.add_argument("--model", default=None, help="checkpoint to serve (default: a small random GRU)")
    p.add_argument("--work-dir", default="var/chaos", help="model, data dirs and worker logs")
    p.add_argument("--soak", type=float, default=0.0, metavar="SECONDS",
                   help="instead: measure the saturated rate, then run SECONDS at half of it")
    p.add_argument("--soak-rate", type=float, default=0.0, metavar="CLICKS_PER_S",
                   help="with --soak: this rate instead of half the measured saturated rate")
    p.add_argument("--soak-windows", type=int, default=6, help="with --soak: sampling windows")
    p.add_argument("--soak-linger-ms", type=int, default=50,
                   help="with --soak: the click producer's linger (the embedded broker's Fetch cost grows "
                        "with the number of record batches)")
    p.set_defaults(func=cmd_chaos)
