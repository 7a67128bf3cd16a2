"""The ground every fault and the soak stand on: one broker, fresh topics and group, worker processes.

Also the lists monitor (the recommendations topic read from a thread for the whole
run) and the readiness and progress probes the faults share.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from stream_app.settings import Settings


class FaultEnv:
    """One broker, fresh topics and group, workers with their own ports and data dirs; kills everything on exit.

    The broker is a fresh local one of ``broker_kind`` (``embedded`` or ``kafka``;
    default ``STREAMREC_BROKER__KIND``) unless ``STREAMREC_KAFKA__BOOTSTRAP_SERVERS``
    names a cluster (then ``broker`` is None and the topics are created there, with
    unique names): the soak and the worker faults run against any cluster, only the
    broker freeze needs a broker process of its own.
    """

    def __init__(self, model_path: Path, root: Path, standby: int = 0, loglevel: str = "INFO",
                 broker_kind: str | None = None, nodes: int = 1) -> None:
        from stream_app.brokers import start_broker

        self.root = root
        for stale in root.glob("data-*"):  # RocksDB offsets of another run's topics would not match
            shutil.rmtree(stale, ignore_errors=True)
        for old_log in root.glob("worker-*.log"):
            old_log.unlink()
        configured = Settings()
        self.broker: Any = None
        self.kind = "configured"
        base = configured
        if configured.kafka.needs_embedded:
            self.kind = broker_kind or configured.broker.kind
            self.broker, base = start_broker(configured, self.kind, nodes=nodes)
        tag = uuid.uuid4().hex[:8]
        self.settings = base.model_copy(update={
            "topics": base.topics.model_copy(update={
                "clicks": f"clicks-{tag}", "recommendations": f"recs-{tag}", "dead_letter": f"dlq-{tag}",
                "partitions": 4, "replication_factor": min(3, nodes)}),
            "model": base.model.model_copy(update={"path": model_path}),
            "worker": base.worker.model_copy(update={
                "app_id": f"chaos-{tag}", "data_dir": root / "data", "standby_replicas": standby,
                "loglevel": loglevel, "web_port": 0}),
        })
        self.workers: list[Any] = []
        from stream_app.worker.topics import ensure_topics

        ensure_topics(self.settings)

    def data_dir(self, name: str) -> Path:
        return self.root / f"data-{name}"

    def worker(self, name: str) -> Any:
        """Start worker ``name`` (its data dir and log are named after it); not waited for."""
        from stream_app.lab.harness import WorkerProcess

        s = self.settings
        s = s.model_copy(update={"worker": s.worker.model_copy(update={"data_dir": self.data_dir(name)})})
        w = WorkerProcess(s, log_path=self.root / f"worker-{name}.log").start()
        self.workers.append(w)
        return w

    def close(self) -> None:
        for w in self.workers:
            w.stop(timeout_s=30)
        if self.broker is not None:
            self.broker.stop()



def wait_both_ready(*workers: Any, timeout_s: float = 60.0) -> None:
    """Until every worker answers /readyz 200 at once (the second join rebalances the first)."""
    from stream_app.lab.harness import http_get

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if all(http_get(w.base_url + "/readyz")[0] == 200 for w in workers):
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError("workers never ready together")


def clicks_consumed(worker: Any) -> int:
    """Clicks a worker has read so far (0 if it does not answer): proves it owned partitions."""
    from stream_app.lab.harness import parse_metrics

    try:
        return int(parse_metrics(worker.metrics()).get("streamrec_clicks_consumed_total", 0))
    except OSError:
        return 0


class ListsMonitor:
    """Reads the recommendations topic from a thread for the whole run, so recovery is seen as it happens."""

    def __init__(self, settings: Settings) -> None:
        import threading

        from stream_app.lab.harness import TopicReader

        self.reader = TopicReader(settings, settings.topics.recommendations)
        self.recs: list[Any] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="lists-monitor")
        self._thread.start()

    def _run(self) -> None:
        from stream_app.core.records import Recommendation

        while not self._stop.is_set():
            batch = [Recommendation.from_json(r.value) for r in self.reader.poll(0.2)]
            with self._lock:
                self.recs.extend(batch)

    def snapshot(self) -> list[Any]:
        with self._lock:
            return list(self.recs)

    def wait_recovered(self, end: float, partitions: int, timeout_s: float) -> bool:
        """Until every partition has published a list produced after ``end``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len({r.source.partition for r in self.snapshot() if r.produced_ts >= end}) >= partitions:
                return True
            time.sleep(0.2)
        return False

    def wait_covered(self, positions: set[tuple[int, int]], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if positions <= {(r.source.partition, r.source.offset) for r in self.snapshot()}:
                break
            time.sleep(0.3)
        time.sleep(1.0)  # a moment for late duplicates

    def close(self) -> list[Any]:
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join(10)
            self.reader.close()
        return self.recs


def under_traffic(env: FaultEnv, traffic: Any, gap_s: float) -> Any:
    """Worker "a" ready, steady traffic flowing for ``gap_s``: the state most faults start from."""
    w = env.worker("a")
    w.wait_ready()
    traffic.start()
    time.sleep(gap_s)
    return w


def hold_frozen(freeze: Callable[[], None], thaw: Callable[[], None], seconds: float) -> None:
    """A broker process stopped (SIGSTOP) for ``seconds``, then resumed, whatever happens meanwhile."""
    freeze()
    try:
        time.sleep(seconds)
    finally:
        thaw()
