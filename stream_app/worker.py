"""Start-up of one worker: checks that fail fast, then the Faust worker until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prometheus_client import CollectorRegistry, ProcessCollector, PlatformCollector, GCCollector

from stream_app.errors import ModelLoadError, StateDirError
from stream_app.metrics import Metrics
from stream_app.recommender import Policy, Recommender
from stream_app.settings import Settings

log = logging.getLogger("streamrec.worker")


def load_recommender(settings: Settings) -> tuple[Recommender, Any]:
    """The checkpoint as a Recommender; ModelLoadError with one clear line if it cannot serve."""
    from models.checkpoint import CheckpointError, load_checkpoint

    path = Path(settings.model.path)
    if not path.is_file():
        raise ModelLoadError(f"model checkpoint {str(path)!r} not found (train one: streamrec train TSV --out {path})")
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as exc:
        raise ModelLoadError(f"model checkpoint {str(path)!r} cannot be used: {exc}") from exc
    m = settings.model
    policy = Policy(
        k=m.k,
        exclude_clicked=m.exclude_clicked,
        recent_items=m.recent_items,
        gap_s=settings.session.gap_s,
        keep_across_sessions=settings.session.keep_across_sessions,
    )
    counts = np.asarray(ckpt.item_counts, dtype=np.float32)
    if counts.shape[0] != len(ckpt.item_ids):
        counts = np.zeros(len(ckpt.item_ids), dtype=np.float32)
        for rank, i in enumerate(ckpt.popular(len(ckpt.item_ids))):
            counts[i] = len(ckpt.item_ids) - rank
    from stream_app.ranking import ranker_for

    rec = Recommender(ckpt.model, ckpt.item_ids, counts, ckpt.version, policy,
                      ranker=ranker_for(settings, ckpt.model, ckpt.version))
    return rec, ckpt


def new_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def graceful_worker(app: Any, settings: Settings) -> Any:
    """A faust Worker whose SIGTERM/SIGINT shutdown is bounded by ``worker.shutdown_grace_s``.

    Faust stops the agents, commits the offsets of processed clicks and flushes
    the producer and RocksDB on a signal; if that hangs (a broker gone mid-flush),
    a watchdog thread exits the process hard after the grace period. Nothing is
    lost then either: uncommitted clicks are redelivered and the replay guard
    absorbs those already applied.
    """
    from faust import Worker

    grace = settings.worker.shutdown_grace_s

    class GracefulWorker(Worker):  # type: ignore[misc, valid-type]
        def _setup_spinner_handler(self, logger: Any, level: int) -> None:
            # Faust's progress spinner sets the root logger to DEBUG whatever the
            # loglevel, so every debug call in aiokafka and Faust built a LogRecord
            # (6% of the worker's CPU at saturation, docs/performance.md).
            return None

        def _schedule_shutdown(self, signal: Any) -> None:
            if not self._signal_stop_time:
                watchdog = threading.Timer(grace, _hard_exit, args=(grace,))
                watchdog.daemon = True
                watchdog.start()
            super()._schedule_shutdown(signal)

    return GracefulWorker(app, loglevel=settings.worker.loglevel, quiet=True)


def _hard_exit(grace: float) -> None:
    print(f"streamrec worker: shutdown took longer than {grace:g}s (STREAMREC_WORKER__SHUTDOWN_GRACE_S); "
          "exiting without a clean stop", file=sys.stderr, flush=True)
    os._exit(3)


def run(settings: Settings) -> int:
    """Blocks until the worker stops; returns the exit code."""
    from faust.exceptions import ConsistencyError

    from stream_app.agents import attach
    from stream_app.app import build
    from stream_app.topics import changelog_topic, ensure_topics

    torch.set_num_threads(settings.worker.torch_threads)
    recommender, ckpt = load_recommender(settings)
    ensure_topics(settings)
    Path(settings.worker.data_dir).mkdir(parents=True, exist_ok=True)
    metrics = Metrics.create(new_registry())
    cfg = getattr(ckpt.model, "config", None)
    metrics.model_info.labels(
        ckpt.version,
        str(getattr(cfg, "cell", "gru")),
        str(getattr(cfg, "hidden", ckpt.model.state_size)),
        str(len(ckpt.item_ids)),
    ).set(1)
    wiring = build(settings)
    attach(wiring, recommender, metrics, settings)
    print(
        f"streamrec worker: model {ckpt.version} ({len(ckpt.item_ids)} items), "
        f"brokers {settings.kafka.bootstrap_servers}{' (embedded)' if settings.kafka.embedded else ''}, "
        f"http://{settings.worker.web_host}:{settings.worker.web_port}/metrics",
        flush=True,
    )
    worker = graceful_worker(wiring.app, settings)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        crash = getattr(worker, "crash_reason", None)
        if not isinstance(crash, ConsistencyError):
            return int(exc.code or 0)
        # Table recovery found RocksDB ahead of the changelog: the topics were
        # recreated (or the embedded broker, which keeps them in memory, restarted).
        raise StateDirError(
            f"the data dir {str(settings.worker.data_dir)!r} holds state for changelog offsets that "
            f"{changelog_topic(settings)!r} does not have (topic recreated or broker reset): delete the data "
            "dir to rebuild the state from the changelog"
        ) from crash
    return 0 if sys.exc_info()[0] is None else 1
