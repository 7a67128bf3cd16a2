"""Scale-out in ``streamrec bench``: one worker, then two in one consumer group on the same 4 partitions.

Each worker's CPU seconds (from /proc) are divided by the clicks it consumed
itself (its ``streamrec_clicks_consumed_total``), so the figure is CPU seconds
per 1,000 clicks per worker: what ``docs/operations.md`` sizes a fleet with. On
a machine with fewer cores than workers plus broker the two share the cores, so
events/s shows contention, not the scaling of a cluster; the per-click CPU is the
figure that carries over.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

from stream_app.lab.benchkit import Child, _read_all, cpu_seconds, fresh_settings, latencies_ms, send, wait_for


def clicks_consumed(child: Child) -> float:
    """The worker's own count of click messages read (its Prometheus page)."""
    from stream_app.lab.harness import parse_metrics

    return parse_metrics(child.worker.metrics()).get("streamrec_clicks_consumed_total", 0.0)


def all_ready(children: list[Child], timeout_s: float = 120.0) -> None:
    """Until every worker says ready at once (the group's rebalance after the last join is over)."""
    from stream_app.lab.harness import http_get

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(http_get(c.worker.base_url + "/readyz", timeout=1.0)[0] == 200 for c in children):
            return
        time.sleep(0.5)
    raise RuntimeError("the workers of the scale-out run did not all become ready")


def run_group(n_workers: int, base: Any, model: Path, work: Path, broker_pid: int | None,
              msgs: list[tuple[bytes, bytes]], overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """``n_workers`` workers in one group on fresh topics (4 partitions), the clicks at saturation."""
    from stream_app.brokers.process import free_port
    from stream_app.worker.topics import ensure_topics

    s = fresh_settings(base, model, work, overrides)
    ensure_topics(s)
    settings = [s] + [s.model_copy(update={"worker": s.worker.model_copy(update={
        "data_dir": Path(f"{s.worker.data_dir}-{i}"), "web_port": free_port()})}) for i in range(1, n_workers)]
    children = [Child("worker", x, work) for x in settings]
    try:
        for child in children:
            child.start()
        all_ready(children)
        cpu0, bcpu0 = [cpu_seconds(c.pid) for c in children], cpu_seconds(broker_pid)
        clicks0 = [clicks_consumed(c) for c in children]
        n = send(s, s.topics.clicks, msgs)
        got = wait_for(s.kafka.bootstrap_servers, s.topics.recommendations, n, timeout_s=max(120.0, n / 50.0),
                       alive=lambda: all(c.alive() for c in children),
                       worker=children[0].worker if s.worker.exactly_once else None)
        cpu = [cpu_seconds(c.pid) - c0 for c, c0 in zip(children, cpu0)]
        bcpu = cpu_seconds(broker_pid) - bcpu0
        clicks = [clicks_consumed(c) - k0 for c, k0 in zip(children, clicks0)]
    finally:
        for child in children:
            child.stop()
    records = asyncio.run(_read_all(s.kafka.bootstrap_servers, s.topics.recommendations))
    _, first_in, last_out = latencies_ms(records)
    for x in settings:
        shutil.rmtree(x.worker.data_dir, ignore_errors=True)
    return {
        "workers": n_workers,
        "events": len(records),
        "lists_awaited": got,
        "events_per_s": round(len(records) / max(1e-3, (last_out - first_in) / 1000.0), 1),
        "clicks_per_worker": [int(c) for c in clicks],
        "cpu_s_per_1k_per_worker": [round(c / max(1.0, k) * 1000.0, 3) for c, k in zip(cpu, clicks)],
        "cpu_s_per_1k_all_workers": round(sum(cpu) / max(1, len(records)) * 1000.0, 3),
        "broker_cpu_s_per_1k": round(bcpu / max(1, len(records)) * 1000.0, 3),
    }


def scale_out(base: Any, model: Path, work: Path, broker_pid: int | None, msgs: list[tuple[bytes, bytes]],
              overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """One worker, then two, each on fresh topics and a fresh group; printed as a small table."""
    runs = {}
    for n in (1, 2):
        print(f"[bench] scale-out: {n} worker{'s' if n > 1 else ''} in one group, {len(msgs):,} clicks ...",
              flush=True)
        runs[str(n)] = run_group(n, base, model, work, broker_pid, msgs, overrides)
    one, two = runs["1"], runs["2"]
    print("\nscale-out: diginetica clicks at saturation, 4 partitions, one group")
    print(f"  {'workers':<9}{'events/s':>10}{'clicks per worker':>26}{'CPU s/1k per worker':>28}{'broker':>8}")
    for r in (one, two):
        print(f"  {r['workers']:<9}{r['events_per_s']:>10.0f}{' / '.join(f'{c:,}' for c in r['clicks_per_worker']):>26}"
              f"{' / '.join(f'{c:.3f}' for c in r['cpu_s_per_1k_per_worker']):>28}{r['broker_cpu_s_per_1k']:>8.3f}")
    runs["two_over_one_events_per_s"] = round(two["events_per_s"] / max(1e-9, one["events_per_s"]), 2)
    print(f"  two workers / one: {runs['two_over_one_events_per_s']:.2f}x events/s (same cores: contention, "
          "not cluster scaling; the CPU per click is the sizing figure)")
    return runs
