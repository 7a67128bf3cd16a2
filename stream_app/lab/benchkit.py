"""Measurement kit of ``streamrec bench``: data, models, Kafka helpers, process accounting, one system run."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from stream_app.brokers.process import dies_with_parent

WARMUP_MS = 2000.0  # half-rate latency leaves out the first 2 s of clicks (fresh process, empty caches)


# --------------------------------------------------------------------------- Kafka helpers

def send(settings: Any, topic: str, messages: list[tuple[bytes, bytes]], rate: float = 0.0,
         duration_s: float = 0.0) -> int:
    """Produce in order (at ``rate``/s for ``duration_s`` if given; cycling through messages is not done)."""
    from stream_app.lab.replay import producer

    prod = producer(settings, linger_ms=1)
    n = 0
    start = time.perf_counter()
    try:
        for key, value in messages:
            if rate > 0:
                if duration_s and time.perf_counter() - start >= duration_s:
                    break
                ahead = n / rate - (time.perf_counter() - start)
                if ahead > 0:
                    time.sleep(ahead)
            prod.send(topic, key=key, value=value)
            n += 1
        prod.flush()
    finally:
        prod.close()
    return n


async def _highwater_total(servers: str, topic: str) -> int:
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition

    from stream_app.worker.transport import fetch_highwaters

    c = AIOKafkaConsumer(bootstrap_servers=servers)
    await c.start()
    try:
        parts = (await c._client.fetch_all_metadata()).partitions_for_topic(topic) or set()
        hw = await fetch_highwaters(c, [TopicPartition(topic, p) for p in parts])
        return int(sum(hw.values()))
    finally:
        await c.stop()


def published(worker: Any) -> int:
    """Lists a worker has sent so far, from its /metrics."""
    from stream_app.lab.harness import parse_metrics

    metrics = parse_metrics(worker.metrics())
    return int(sum(v for k, v in metrics.items() if k.startswith("streamrec_recommendations_published_total")))


def wait_for(servers: str, topic: str, count: int, timeout_s: float, alive: Callable[[], bool],
             worker: Any = None) -> int:
    """Poll the output topic's Fetch high watermarks (or, given a ``worker``, its published lists:
    under exactly-once the commit markers count in the watermarks) until ``count`` records are there."""
    deadline = time.monotonic() + timeout_s
    n = 0
    while time.monotonic() < deadline and alive():
        n = published(worker) if worker is not None else asyncio.run(_highwater_total(servers, topic))
        if n >= count:
            return n
        time.sleep(0.5)
    return n


async def _read_all(servers: str, topic: str) -> list[tuple[int, bytes, list[tuple[str, bytes]]]]:
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition

    from stream_app.worker.transport import fetch_highwaters

    c = AIOKafkaConsumer(bootstrap_servers=servers, enable_auto_commit=False, auto_offset_reset="earliest",
                         max_partition_fetch_bytes=4 << 20, fetch_max_bytes=16 << 20)
    await c.start()
    out: list[tuple[int, bytes, list[tuple[str, bytes]]]] = []
    try:
        parts = (await c._client.fetch_all_metadata()).partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        ends = await fetch_highwaters(c, tps)
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        done = {tp: ends[tp] == 0 for tp in tps}
        while not all(done.values()):
            for tp, records in (await c.getmany(timeout_ms=500, max_records=20000)).items():
                for r in records:
                    out.append((r.timestamp, r.value, list(r.headers or ())))
                if records and records[-1].offset + 1 >= ends[tp]:
                    done[tp] = True
            for tp in tps:  # a transactional topic ends in commit markers, offsets no record has
                if not done[tp] and await c.position(tp) >= ends[tp]:
                    done[tp] = True
    finally:
        await c.stop()
    return out


def latencies_ms(records: list[tuple[int, bytes, list[tuple[str, bytes]]]],
                 skip_first_ms: float = 0.0) -> tuple[list[float], float, float]:
    """(latencies in ms, first click time, last publish time) from output records."""
    if skip_first_ms:
        lat, first_in, _ = latencies_ms(records)
        clicks = [ts - l for (ts, _, _), l in zip(records, lat)]
        return [l for c, l in zip(clicks, lat) if c >= first_in + skip_first_ms], first_in, 0.0
    lat: list[float] = []
    first_in, last_out = float("inf"), 0.0
    for ts_ms, value, headers in records:
        src = dict(headers).get("src")
        if src is not None:
            click_ms = float(src.split(b":")[2])
        else:
            click_ms = json.loads(value)["source"]["timestamp"] * 1000.0
        lat.append(ts_ms - click_ms)
        first_in = min(first_in, click_ms)
        last_out = max(last_out, ts_ms)
    return lat, first_in, last_out


def percentiles(values: list[float]) -> dict[str, float | None]:
    import numpy as np

    if not values:
        return {"p50_ms": None, "p99_ms": None, "p999_ms": None}
    a = np.asarray(values)
    return {"p50_ms": round(float(np.percentile(a, 50)), 2), "p99_ms": round(float(np.percentile(a, 99)), 2),
            "p999_ms": round(float(np.percentile(a, 99.9)), 2)}


# --------------------------------------------------------------------------- process accounting

def cpu_seconds(pid: int | None) -> float:
    """User + system CPU of a process and its children so far (psutil, i.e. /proc)."""
    import psutil

    if pid is None:
        return 0.0
    try:
        p = psutil.Process(pid)
        total = sum(p.cpu_times()[:2])
        for child in p.children(recursive=True):
            try:
                total += sum(child.cpu_times()[:2])
            except psutil.Error:
                pass
        return float(total)
    except psutil.Error:
        return 0.0


def rss_bytes(pid: int | None, peak: bool = False) -> int:
    """VmRSS (or VmHWM, the peak) from /proc/PID/status."""
    if pid is None:
        return 0
    want = "VmHWM:" if peak else "VmRSS:"
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(want):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# --------------------------------------------------------------------------- systems under test

class Child:
    """A system under test in a child process: start, wait until ready, stop."""

    def __init__(self, kind: str, settings: Any, work: Path) -> None:
        self.kind = kind
        self.settings = settings
        self.work = work
        self.worker: Any = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.tail: deque[str] = deque(maxlen=60)

    @property
    def pid(self) -> int | None:
        if self.worker is not None:
            return self.worker.proc.pid if self.worker.proc else None
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        p = self.worker.proc if self.worker is not None else self.proc
        return p is not None and p.poll() is None

    def start(self, timeout_s: float = 180.0) -> float:
        from stream_app.lab.harness import WorkerProcess

        t0 = time.monotonic()
        if self.kind == "worker":
            self.worker = WorkerProcess(self.settings, log_path=self.work / "worker.log").start()
            self.worker.wait_ready(timeout_s)
            return time.monotonic() - t0
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
        env.update(self.settings.to_env())
        env["PYTHONUNBUFFERED"] = "1"
        s = self.settings
        if self.kind == "ceiling":
            cmd = [sys.executable, "-m", "stream_app.lab.ceiling", s.kafka.bootstrap_servers, s.topics.clicks,
                   s.topics.recommendations, *(["embedded"] if s.kafka.embedded else [])]
        else:
            cmd = [sys.executable, "-m", "stream_app.lab.naive"]
        # like WorkerProcess: SIGTERM when the bench that started it dies
        self.proc = subprocess.Popen(dies_with_parent(cmd, "TERM"), env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        threading.Thread(target=self._drain, daemon=True).start()
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited during start-up:\n" + "\n".join(self.tail))
            if self.kind == "ceiling" and any(line == "ready" for line in self.tail):
                return time.monotonic() - t0
            if self.kind == "naive" and self._ready_http():
                return time.monotonic() - t0
            time.sleep(0.2)
        raise RuntimeError(f"{self.kind} not ready after {timeout_s}s:\n" + "\n".join(self.tail))

    def _ready_http(self) -> bool:
        from stream_app.lab.harness import http_get

        w = self.settings.worker
        try:
            return http_get(f"http://{w.web_host}:{w.web_port}/readyz", timeout=1.0)[0] == 200
        except OSError:
            return False

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with open(self.work / f"{self.kind}.log", "ab") as sink:
            for line in iter(self.proc.stdout.readline, b""):
                self.tail.append(line.decode("utf-8", "replace").rstrip())
                sink.write(line)

    def stop(self) -> None:
        import signal

        if self.worker is not None:
            self.worker.stop(30)
        elif self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def fresh_settings(base: Any, model: Path, work: Path, overrides: dict[str, Any] | None = None) -> Any:
    """Own topics, group and data dir for one system run."""
    from stream_app.brokers.process import free_port

    tag = uuid.uuid4().hex[:8]
    data = work / f"data-{tag}"
    model_over = {"path": model}
    model_over.update((overrides or {}).get("model", {}))
    worker_over = {"app_id": f"bench-{tag}", "data_dir": data, "web_port": free_port(), "loglevel": "WARNING"}
    worker_over.update((overrides or {}).get("worker", {}))
    return base.model_copy(update={
        "topics": base.topics.model_copy(update={"clicks": f"clicks-{tag}", "recommendations": f"recs-{tag}",
                                                 "dead_letter": f"dlq-{tag}", "partitions": 4}),
        "model": base.model.model_copy(update=model_over),
        "worker": base.worker.model_copy(update=worker_over),
    })


@dataclass
class Result:
    system: str
    events: int = 0
    events_per_s: float = 0.0
    saturation: dict[str, float | None] = field(default_factory=dict)
    half_rate: dict[str, float | None] = field(default_factory=dict)
    half_rate_events_per_s: float = 0.0
    half_rate_incl_warmup: dict[str, float | None] = field(default_factory=dict)
    cpu_s_per_1k: float = 0.0
    broker_cpu_s_per_1k: float = 0.0
    peak_rss_mb: float = 0.0
    ready_s: float = 0.0
    soak: dict[str, Any] = field(default_factory=dict)


def run_system(kind: str, base: Any, model: Path, work: Path, broker_pid: int | None,
               sat_msgs: list[tuple[bytes, bytes]], half_msgs: list[tuple[bytes, bytes]], half_rate: float,
               half_s: float, overrides: dict[str, Any] | None = None, soak_s: float = 0.0) -> Result:
    """Saturation run, then a half-rate run (fresh topics each), on one started child per run."""
    from stream_app.worker.topics import ensure_topics

    res = Result(kind)
    servers = base.kafka.bootstrap_servers
    # -- saturation
    s = fresh_settings(base, model, work, overrides)
    ensure_topics(s)
    child = Child(kind, s, work)
    try:
        res.ready_s = round(child.start(), 1)
        cpu0, bcpu0 = cpu_seconds(child.pid), cpu_seconds(broker_pid)
        n = send(s, s.topics.clicks, sat_msgs)
        got = wait_for(servers, s.topics.recommendations, n, timeout_s=max(120.0, n / 50.0), alive=child.alive,
                       worker=child.worker if s.worker.exactly_once else None)
        cpu1, bcpu1 = cpu_seconds(child.pid), cpu_seconds(broker_pid)
        res.peak_rss_mb = round(rss_bytes(child.pid, peak=True) / 2**20, 1)
    finally:
        child.stop()
    records = asyncio.run(_read_all(servers, s.topics.recommendations))
    lat, first_in, last_out = latencies_ms(records)
    res.events = len(records)
    res.events_per_s = round(len(records) / max(1e-3, (last_out - first_in) / 1000.0), 1)
    res.saturation = percentiles(lat)
    res.cpu_s_per_1k = round((cpu1 - cpu0) / max(1, got) * 1000.0, 3)
    res.broker_cpu_s_per_1k = round((bcpu1 - bcpu0) / max(1, got) * 1000.0, 3)
    shutil.rmtree(s.worker.data_dir, ignore_errors=True)
    if half_rate <= 0 or half_s <= 0:
        return res
    # -- half of (b)'s saturated rate (and the soak, for the worker)
    s = fresh_settings(base, model, work, overrides)
    ensure_topics(s)
    child = Child(kind, s, work)
    try:
        child.start()
        n = send(s, s.topics.clicks, half_msgs, rate=half_rate, duration_s=half_s)
        wait_for(servers, s.topics.recommendations, n, timeout_s=60.0, alive=child.alive,
                 worker=child.worker if s.worker.exactly_once else None)
        if soak_s > 0:
            res.soak = soak(child, s, half_msgs, half_rate, soak_s)
        res.peak_rss_mb = max(res.peak_rss_mb, round(rss_bytes(child.pid, peak=True) / 2**20, 1))
    finally:
        child.stop()
    records = asyncio.run(_read_all(servers, s.topics.recommendations))
    lat, first_in, last_out = latencies_ms(records[: n])
    res.half_rate_incl_warmup = percentiles(lat)
    res.half_rate = percentiles(latencies_ms(records[: n], skip_first_ms=WARMUP_MS)[0])
    res.half_rate_events_per_s = round(half_rate, 1)
    shutil.rmtree(s.worker.data_dir, ignore_errors=True)
    return res


def soak(child: Child, s: Any, msgs: list[tuple[bytes, bytes]], rate: float, seconds: float) -> dict[str, Any]:
    """Keep feeding at ``rate`` (cycling the clicks with fresh user ids) and sample RSS every 10 s."""
    from stream_app.lab.replay import producer

    prod = producer(s, linger_ms=1)
    samples: list[tuple[float, int]] = []
    start = time.perf_counter()
    next_sample = 0.0
    n = 0

    def cycled() -> Iterator[tuple[bytes, bytes]]:
        lap = 0
        while True:
            lap += 1
            for key, value in msgs:
                body = json.loads(value)
                body["user_id"] = f"{body['user_id']}-{lap}"
                yield body["user_id"].encode(), json.dumps(body).encode()

    for key, value in cycled():
        elapsed = time.perf_counter() - start
        if elapsed >= seconds or not child.alive():
            break
        if elapsed >= next_sample:
            samples.append((round(elapsed, 1), rss_bytes(child.pid)))
            next_sample += 10.0
        ahead = n / rate - elapsed
        if ahead > 0:
            time.sleep(ahead)
        prod.send(s.topics.clicks, key=key, value=value)
        n += 1
    prod.flush()
    prod.close()
    samples.append((round(time.perf_counter() - start, 1), rss_bytes(child.pid)))
    rss = [r for _, r in samples]
    # growth after warm-up: the first minute fills caches, tables and the allocator
    warm = [r for t, r in samples if t >= min(60.0, seconds / 5)] or rss
    return {"seconds": round(seconds, 1), "events": n, "rss_mb_first": round(rss[0] / 2**20, 1),
            "rss_mb_after_warmup": round(warm[0] / 2**20, 1), "rss_mb_last": round(rss[-1] / 2**20, 1),
            "rss_mb_max": round(max(rss) / 2**20, 1),
            "growth_after_warmup_pct": round(100.0 * (rss[-1] - warm[0]) / max(1, warm[0]), 1),
            "samples_mb": [(t, round(r / 2**20, 1)) for t, r in samples]}
