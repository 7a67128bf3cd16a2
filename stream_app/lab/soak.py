"""`streamrec chaos --soak SECONDS`: the worker's saturated rate, then a run at half of it, watched per window.

Per window: the worker's resident memory (``process_resident_memory_bytes``
from /metrics) and the click-to-publish p99 (from the lists: the worker's
publish time minus the click's Kafka timestamp). At the end: lost lists,
dead letters, error lines in the worker log, RSS growth after the warm-up.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np


P99_STEADY_RATIO = 1.5  # the soak's bar: the last window's click-to-publish p99 over the first window's


@dataclass
class Window:
    t_s: float  # seconds since the soak began (end of the window)
    rss_bytes: float
    clicks: int  # lists published in the window
    p50_s: float
    p99_s: float
    lag: int = 0  # clicks sent but not yet consumed by the worker, at the end of the window
    worker_cpu_s: float = 0.0  # CPU seconds the worker used in the window
    broker_cpu_s: float = 0.0  # CPU seconds the embedded broker used in the window
    batch_p99_s: float = math.nan  # the worker's own time per micro-batch (streamrec_processing_seconds), p99
    worker_p99_s: float = math.nan  # a stream taking the click to its list produced (receive_to_publish), p99


@dataclass
class SoakReport:
    saturated_rate: float
    rate: float
    seconds: float
    clicks: int
    lost: int
    dead_letters: int
    errors: int
    rss_warm_bytes: float
    rss_end_bytes: float
    rss_max_bytes: float
    warmup_s: float = 0.0
    windows: list[Window] = field(default_factory=list)

    @property
    def rss_growth(self) -> float:
        """End over warm-up RSS, minus one (0.05 = 5% more)."""
        return self.rss_end_bytes / self.rss_warm_bytes - 1.0 if self.rss_warm_bytes else float("nan")

    def _ratio(self, field_name: str) -> float:
        # over the whole run, not from the warm-up on as for memory: the worker is warm when the soak
        # starts (the saturation run came first), and a rise that happened early is a rise too
        values = [v for v in (getattr(w, field_name) for w in self.windows) if v == v]
        return values[-1] / values[0] if len(values) >= 2 and values[0] > 0 else float("nan")

    @property
    def p99_ratio(self) -> float:
        """Last window's click-to-publish p99 over the first window's (1.0 = steady)."""
        return self._ratio("p99_s")

    @property
    def worker_p99_ratio(self) -> float:
        """The same for the worker's own share, receive to publish."""
        return self._ratio("worker_p99_s")

    @property
    def p99_steady(self) -> bool:
        """The bar of the reliability criteria: the last window's p99 at most 1.5x the first window's."""
        return self.p99_ratio <= P99_STEADY_RATIO

    @property
    def ok(self) -> bool:
        return (self.lost == 0 and self.dead_letters == 0 and self.errors == 0 and self.rss_growth < 0.10
                and self.p99_steady)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(rss_growth=round(self.rss_growth, 4), p99_ratio=round(self.p99_ratio, 2),
                 worker_p99_ratio=round(self.worker_p99_ratio, 2),
                 p99_steady=self.p99_steady, ok=self.ok)
        return d


PROCESSING = "streamrec_processing_seconds"
RECEIVE_TO_PUBLISH = "streamrec_receive_to_publish_seconds"


def histogram_buckets(metrics: dict[str, float], histogram: str = PROCESSING) -> dict[float, float]:
    """``{upper bound: cumulative count}`` of one of the worker's histograms (unlabelled) in a scrape."""
    prefix = f'{histogram}_bucket{{le="'
    out = {}
    for name, value in metrics.items():
        if name.startswith(prefix):
            out[float(name[len(prefix):].rstrip('"}'))] = value
    return out


def histogram_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The ``q`` quantile of the observations between two scrapes of one histogram, interpolated
    linearly inside its bucket as Prometheus's ``histogram_quantile`` does; NaN without observations."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return math.nan
    rank = q * counts[-1]
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, counts):
        if count >= rank:
            if math.isinf(bound):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside > 0 else 1.0)
        lower, below = bound, count
    return lower


def _sample(worker: Any, broker_pid: int | None) -> dict[str, Any]:
    """The worker's RSS, CPU, clicks consumed and batch times (from /metrics), the broker's CPU and RSS (/proc)."""
    from stream_app.lab.harness import parse_metrics

    m = parse_metrics(worker.metrics())
    out = {"rss": m.get("process_resident_memory_bytes", math.nan), "cpu": m.get("process_cpu_seconds_total", 0.0),
           "consumed": m.get("streamrec_clicks_consumed_total", 0.0), "broker_cpu": math.nan,
           "broker_rss": math.nan, "batches": histogram_buckets(m, PROCESSING),
           "receive": histogram_buckets(m, RECEIVE_TO_PUBLISH)}
    if broker_pid:
        try:
            fields = Path(f"/proc/{broker_pid}/stat").read_text().rsplit(")", 1)[1].split()
            out["broker_cpu"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            out["broker_rss"] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            pass
    return out


def _latencies(recs: list[Any]) -> np.ndarray:
    return np.array([r.produced_ts - r.source.timestamp for r in recs], dtype=np.float64)


def saturated_rate(settings: Any, items: list[str], n: int, users: int) -> float:
    """Clicks per second the worker sustains on a backlog: produce ``n`` at once, time the middle 80% of lists."""
    from stream_app.lab.harness import TopicReader, recommendations
    from stream_app.lab.traffic import clicks_stream
    from stream_app.lab.verify import send_all

    stream = clicks_stream(items, users, seed=7, user_prefix="sat-")
    messages = [(k, v) for k, v, _ in (next(stream) for _ in range(n))]
    reader = TopicReader(settings, settings.topics.recommendations)
    try:
        send_all(settings, messages)
        recs = recommendations(reader.read_until(n, timeout_s=max(60.0, n / 50.0)))
    finally:
        reader.close()
    times = np.sort(np.array([r.produced_ts for r in recs if r.user_id.startswith("sat-")]))
    if len(times) < 10:
        raise RuntimeError(f"saturation run produced only {len(times)} lists of {n}")
    lo, hi = int(0.1 * len(times)), int(0.9 * len(times)) - 1
    span = times[hi] - times[lo]
    return (hi - lo) / span if span > 0 else float("inf")


def run_soak(seconds: float, model_path: Path, root: Path, windows: int = 6, warmup_frac: float = 0.25,
             saturation_clicks: int = 3000, users: int = 500, rate: float = 0.0, linger_ms: int = 50,
             log: Callable[[str], None] = lambda s: None, broker_kind: str | None = None) -> SoakReport:
    """Saturated rate first (unless ``rate`` is given), then ``seconds`` of traffic at half of it.

    The click producer lingers ``linger_ms`` and the list reader asks for 64 KiB
    or 500 ms per Fetch, as batching clients do: the embedded broker's Fetch cost
    grows with the number of record batches in a partition (docs/reliability.md),
    and with 5 ms batches of about one click each its CPU, not the worker, set
    the soak's latency after a few minutes.
    """
    from stream_app.lab.fault_env import FaultEnv
    from stream_app.lab.harness import TopicReader, recommendations
    from stream_app.lab.traffic import Traffic, clicks_stream
    from stream_app.lab.verify import delivery
    from stream_app.worker.start import load_recommender

    root.mkdir(parents=True, exist_ok=True)
    env = FaultEnv(model_path, root, broker_kind=broker_kind)
    try:
        recommender, _ = load_recommender(env.settings)
        items = recommender.item_ids[:1000]
        worker = env.worker("soak")
        worker.wait_ready()
        saturated = saturated_rate(env.settings, items, saturation_clicks, users)
        rate = rate or saturated / 2.0
        log(f"soak: saturated rate {saturated:.0f} clicks/s, running {seconds:.0f}s at {rate:.0f} clicks/s")
        reader = TopicReader(env.settings, env.settings.topics.recommendations, fetch_min_bytes=65536,
                             fetch_max_wait_ms=500)
        broker_pid = env.broker.pid if env.broker is not None else None
        first = _sample(worker, broker_pid)
        traffic = Traffic(env.settings, clicks_stream(items, users, seed=11, user_prefix="soak-"), rate,
                          linger_ms=linger_ms).start()
        started = time.time()
        samples: list[tuple[float, dict[str, float], int]] = []  # (time since start, sample, clicks sent)
        step = seconds / windows
        for i in range(1, windows + 1):
            time.sleep(max(0.0, started + i * step - time.time()))
            smp = _sample(worker, broker_pid)
            samples.append((time.time() - started, smp, traffic.count))
            log(f"soak: {samples[-1][0]:.0f}s, RSS {smp['rss'] / 2**20:.0f} MiB, {traffic.count} clicks sent, "
                f"{smp['consumed'] - first['consumed']:.0f} consumed, worker cpu {smp['cpu']:.0f}s, "
                f"broker cpu {smp['broker_cpu']:.0f}s rss {smp['broker_rss'] / 2**20:.0f} MiB")
        sent = traffic.stop()
        valid = [m.position for m in sent if m.position is not None]
        recs: list[Any] = []
        wanted, seen = set(valid), set()
        last_progress = time.monotonic()
        while time.monotonic() - last_progress < 30 and not wanted <= seen:  # drain, however slow
            batch = [r for r in recommendations(reader.poll()) if r.user_id.startswith("soak-")]
            if batch:
                last_progress = time.monotonic()
            recs.extend(batch)
            seen.update((r.source.partition, r.source.offset) for r in batch)
        reader.close()
        dlq = TopicReader(env.settings, env.settings.topics.dead_letter)
        dead = len(dlq.read_until(0, 0, idle_s=1.0))
        dlq.close()
        end_rss = _sample(worker, None)["rss"]
        worker.stop()
        log_text = (root / "worker-soak.log").read_text("utf-8", "replace") if (root / "worker-soak.log").exists() else ""
        errors = sum(1 for line in log_text.splitlines() if "Traceback" in line or "ERROR" in line)
        lat = _latencies(recs)
        produced = np.array([r.produced_ts - started for r in recs])
        out_windows = []
        previous = first
        for i, (t, smp, n_sent) in enumerate(samples):
            sel = lat[(produced >= i * step) & (produced < t)]
            out_windows.append(Window(
                round(t, 1), smp["rss"], int(sel.size),
                float(np.percentile(sel, 50)) if sel.size else math.nan,
                float(np.percentile(sel, 99)) if sel.size else math.nan,
                lag=int(n_sent - (smp["consumed"] - first["consumed"])),
                worker_cpu_s=round(smp["cpu"] - previous["cpu"], 2),
                broker_cpu_s=round(smp["broker_cpu"] - previous["broker_cpu"], 2),
                batch_p99_s=histogram_quantile(previous["batches"], smp["batches"], 0.99),
                worker_p99_s=histogram_quantile(previous["receive"], smp["receive"], 0.99)))
            previous = smp
        warm = [smp["rss"] for t, smp, _ in samples if t >= warmup_frac * seconds] or [samples[-1][1]["rss"]]
        return SoakReport(
            saturated_rate=round(saturated, 1), rate=round(rate, 1), seconds=seconds, clicks=len(valid),
            lost=len(delivery(valid, recs).lost), dead_letters=dead, errors=errors,
            rss_warm_bytes=warm[0], rss_end_bytes=end_rss if end_rss == end_rss else samples[-1][1]["rss"],
            rss_max_bytes=max(smp["rss"] for _, smp, _ in samples), warmup_s=warmup_frac * seconds,
            windows=out_windows,
        )
    finally:
        env.close()


def format_report(r: SoakReport) -> str:
    lines = [f"saturated rate {r.saturated_rate:.0f} clicks/s; soak at {r.rate:.0f} clicks/s for {r.seconds:.0f}s",
             f"{'t_s':>6} {'rss_MiB':>8} {'lists':>7} {'p50_ms':>8} {'p99_ms':>8} {'worker_p99_ms':>13} "
             f"{'batch_p99_ms':>12} {'lag':>7} {'worker_cpu_s':>12} {'broker_cpu_s':>12}"]
    for w in r.windows:
        lines.append(f"{w.t_s:>6.0f} {w.rss_bytes / 2**20:>8.1f} {w.clicks:>7} {w.p50_s * 1000:>8.1f} "
                     f"{w.p99_s * 1000:>8.1f} {w.worker_p99_s * 1000:>13.1f} {w.batch_p99_s * 1000:>12.1f} "
                     f"{w.lag:>7} {w.worker_cpu_s:>12.1f} {w.broker_cpu_s:>12.1f}")
    lines.append(f"clicks {r.clicks}, lost {r.lost}, dead letters {r.dead_letters}, error lines {r.errors}, "
                 f"RSS {r.rss_warm_bytes / 2**20:.1f} -> {r.rss_end_bytes / 2**20:.1f} MiB after warm-up "
                 f"({100 * r.rss_growth:+.1f}%), max {r.rss_max_bytes / 2**20:.1f} MiB, "
                 f"p99 last/first window {r.p99_ratio:.2f} (worker's share {r.worker_p99_ratio:.2f}): "
                 f"{'OK' if r.ok else 'FAILED'}")
    return "\n".join(lines)


def cmd_soak(args: argparse.Namespace) -> int:
    from stream_app.lab.traffic import json_line, small_checkpoint

    work = Path(args.work_dir)
    model = Path(args.model) if args.model else small_checkpoint(work / "model.pt")
    say = (lambda s: print(s, file=sys.stderr, flush=True)) if args.json else (lambda s: print(s, flush=True))
    report = run_soak(args.soak, model, work / "soak", rate=args.soak_rate, windows=args.soak_windows,
                      linger_ms=args.soak_linger_ms, log=say, broker_kind=args.broker)
    print(format_report(report), file=sys.stderr if args.json else sys.stdout, flush=True)
    if args.json:
        print(json_line({"soak": report.to_dict()}), flush=True)
    return 0 if report.ok else 1
