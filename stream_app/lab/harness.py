"""Runs workers as child processes and reads topics back: shared by the demo, the tests and the benchmarks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from threading import Thread
from types import TracebackType
from typing import Any

from stream_app.brokers.process import dies_with_parent, free_port
from stream_app.core.records import DEAD_LETTER_REASON_HEADER, Recommendation
from stream_app.settings import Settings
from stream_app.worker.topics import client_kwargs


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class WorkerProcess:
    """``streamrec worker`` in a child process with the given settings; SIGTERM on exit."""

    def __init__(self, settings: Settings, log_path: Path | None = None) -> None:
        if settings.worker.web_port == 0 or settings.worker.web_port == 6066:
            worker = settings.worker.model_copy(update={"web_port": free_port()})
            settings = settings.model_copy(update={"worker": worker})
        self.settings = settings
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.tail: deque[str] = deque(maxlen=80)

    @property
    def base_url(self) -> str:
        return f"http://{self.settings.worker.web_host}:{self.settings.worker.web_port}"

    def start(self) -> "WorkerProcess":
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
        env.update(self.settings.to_env())
        env.setdefault("PYTHONUNBUFFERED", "1")
        # a harness that dies (a killed test run, chaos or bench) takes its workers with it:
        # SIGTERM, a graceful stop, instead of workers retrying against a broker that is gone
        self.proc = subprocess.Popen(
            dies_with_parent([sys.executable, "-m", "stream_app.cli", "worker"], "TERM"),
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )
        Thread(target=self._drain, daemon=True).start()
        return self

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        sink = open(self.log_path, "ab") if self.log_path else None
        try:
            for line in iter(self.proc.stdout.readline, b""):
                self.tail.append(line.decode("utf-8", "replace").rstrip())
                if sink:
                    sink.write(line)
                    sink.flush()
        finally:
            if sink:
                sink.close()

    def wait_ready(self, timeout_s: float = 90.0) -> float:
        """Seconds until /readyz said 200; RuntimeError with the log tail if it died or timed out."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError("worker exited during start-up:\n" + "\n".join(self.tail))
            try:
                status, _ = http_get(self.base_url + "/readyz", timeout=1.0)
                if status == 200:
                    return time.monotonic() - start
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready after {timeout_s}s:\n" + "\n".join(self.tail))

    def metrics(self) -> str:
        return http_get(self.base_url + "/metrics")[1].decode()

    def kill(self) -> None:
        """SIGKILL: no flush, no commit (fault injection)."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM and wait for a graceful exit; SIGKILL if it overstays."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def __enter__(self) -> "WorkerProcess":
        return self.start()

    def __exit__(self, a: type[BaseException] | None, b: BaseException | None, c: TracebackType | None) -> None:
        self.stop()


class TopicReader:
    """Reads every partition of one topic from the beginning, without a consumer group."""

    def __init__(self, settings: Settings, topic: str, fetch_min_bytes: int = 1, fetch_max_wait_ms: int = 100) -> None:
        from kafka import KafkaConsumer, TopicPartition

        # under exactly-once, what a downstream reader sees: committed transactions only
        isolation = "read_committed" if settings.worker.exactly_once else "read_uncommitted"
        self.consumer = KafkaConsumer(
            **client_kwargs(settings), enable_auto_commit=False, auto_offset_reset="earliest",
            consumer_timeout_ms=200, fetch_max_wait_ms=fetch_max_wait_ms, fetch_min_bytes=fetch_min_bytes,
            isolation_level=isolation,
        )
        parts = self.consumer.partitions_for_topic(topic) or set()
        deadline = time.monotonic() + 10
        while not parts and time.monotonic() < deadline:
            time.sleep(0.2)
            parts = self.consumer.partitions_for_topic(topic) or set()
        self.consumer.assign([TopicPartition(topic, p) for p in sorted(parts)])
        self.consumer.seek_to_beginning()

    def poll(self, max_wait_s: float = 0.5) -> list[Any]:
        out: list[Any] = []
        for records in self.consumer.poll(timeout_ms=int(max_wait_s * 1000), max_records=5000).values():
            out.extend(records)
        return out

    def read_until(self, count: int, timeout_s: float, idle_s: float = 0.0) -> list[Any]:
        """At least ``count`` records (or all there are at the timeout); then ``idle_s`` more to catch extras."""
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < count and time.monotonic() < deadline:
            out.extend(self.poll())
        end = time.monotonic() + idle_s
        while time.monotonic() < end:
            out.extend(self.poll())
        return out

    def close(self) -> None:
        self.consumer.close()


def recommendations(records: list[Any]) -> list[Recommendation]:
    return [Recommendation.from_json(r.value) for r in records]


def dead_letter_reasons(records: list[Any]) -> list[str]:
    reasons = []
    for r in records:
        headers = dict(r.headers or [])
        reasons.append(headers.get(DEAD_LETTER_REASON_HEADER, b"?").decode())
    return reasons


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} (enough for tests and summaries)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=False)
