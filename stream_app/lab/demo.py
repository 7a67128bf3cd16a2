"""``streamrec demo``: broker, model, worker and a replay of real test sessions, with a live view.

Ends with a summary and one JSON line: events, events_per_s, latency_p50_ms,
latency_p99_ms, online_recall_at_20, online_mrr_at_20, dead_lettered, and catalogue_change
(the lists produced after the halfway catalogue change, and how many hold the switched-off
and the new item).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from stream_app.brokers.embedded import EmbeddedBroker
from stream_app.brokers.process import free_port
from stream_app.lab.harness import TopicReader, WorkerProcess, dumps, http_get, parse_metrics
from stream_app.core.records import Recommendation
from stream_app.errors import DatasetError
from stream_app.lab.datasets import ATTRIBUTES_FILE, demo_data
from stream_app.lab.replay import catalogue_messages, click_messages, publish_catalogue, read_log, replay
from stream_app.settings import Settings
from stream_app.worker.topics import ensure_topics


def ensure_model(data: Path, work: Path, retrain: bool) -> Path:
    """Train once on train_full.tsv (and the folder's item attributes, if any) with the defaults of `streamrec
    train`; reuse the cached file."""
    attrs = data / ATTRIBUTES_FILE
    path = work / f"model-{data.name}{'-attributes' if attrs.is_file() else ''}.pt"
    if path.is_file() and not retrain:
        print(f"[demo] reusing the cached model {path} (--retrain to train again)", flush=True)
        return path
    print(f"[demo] training a model on {data / 'train_full.tsv'}{' with ' + attrs.name if attrs.is_file() else ''} "
          "(streamrec train, defaults) ...", flush=True)
    cmd = [sys.executable, "-m", "stream_app.cli", "train", str(data / "train_full.tsv"), "--out", str(path)]
    if attrs.is_file():
        cmd += ["--item-attributes", str(attrs)]
    if subprocess.run(cmd).returncode != 0 or not path.is_file():
        raise DatasetError(f"training on {data / 'train_full.tsv'} failed (its error is above)")
    return path


class Collector:
    """Reads the output topics in a thread and keeps what the summary and live view need."""

    def __init__(self, settings: Settings, item_index: set[str], per_user: dict[str, list[str]] | None = None) -> None:
        self.settings = settings
        self.known = item_index
        self.recs: list[Recommendation] = []
        self.dead = 0
        self.latest: dict[str, Recommendation] = {}
        self.last_click: dict[str, str] = {}  # user -> item of the click the latest list answers
        self._per_user = per_user or {}
        self._answered: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "Collector":
        self._thread.start()
        return self

    def _run(self) -> None:
        recs = TopicReader(self.settings, self.settings.topics.recommendations)
        dlq = TopicReader(self.settings, self.settings.topics.dead_letter)
        while not self._stop.is_set():
            for r in recs.poll(0.2):
                rec = Recommendation.from_json(r.value)
                self.recs.append(rec)
                self.latest[rec.user_id] = rec
                if not rec.replayed:  # the n-th list of a user answers its n-th click (one partition, in order)
                    n = self._answered[rec.user_id] = self._answered.get(rec.user_id, 0) + 1
                    clicks = self._per_user.get(rec.user_id, [])
                    if n <= len(clicks):
                        self.last_click[rec.user_id] = clicks[n - 1]
            self.dead += len(dlq.poll(0.0))
        recs.close()
        dlq.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def online_quality(recs: list[Recommendation], clicks: dict[str, list[str]], known: set[str]) -> tuple[float, float, int]:
    """Recall@20 and MRR@20 of each served list against that user's next click (known items only)."""
    by_user: dict[str, list[Recommendation]] = {}
    for r in sorted(recs, key=lambda r: (r.source.partition, r.source.offset)):
        if not r.replayed:
            by_user.setdefault(r.user_id, []).append(r)
    hits = rr = 0.0
    n = 0
    for user, lists in by_user.items():
        items = clicks.get(user, [])
        for i, rec in enumerate(lists[:-1]):
            nxt = items[i + 1] if i + 1 < len(items) else None
            if nxt is None or nxt not in known:
                continue
            n += 1
            top = list(rec.items[:20])
            if nxt in top:
                hits += 1
                rr += 1.0 / (top.index(nxt) + 1)
    return (hits / n if n else 0.0), (rr / n if n else 0.0), n


def run_demo(settings: Settings, args: argparse.Namespace) -> int:
    from models.checkpoint import load_checkpoint

    data, titles = demo_data(args.data, settings)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    model_path = ensure_model(data, work, args.retrain)
    ckpt = load_checkpoint(model_path)
    known = set(ckpt.item_ids)

    with ExitStack() as stack:
        if settings.kafka.needs_embedded:
            broker = stack.enter_context(EmbeddedBroker())
            settings = settings.with_embedded_broker(broker.bootstrap_servers)
            print(f"[demo] embedded broker (Tansu, in memory) at {broker.bootstrap_servers}", flush=True)
        data_dir = work / "worker-data"
        shutil.rmtree(data_dir, ignore_errors=True)
        served = work / "serving.pt"  # the file the worker watches: a checkpoint renamed over it is hot-swapped in
        shutil.copyfile(model_path, served)
        settings = settings.model_copy(update={
            "model": settings.model.model_copy(update={"path": served, "watch_s": settings.model.watch_s or 2.0}),
            "worker": settings.worker.model_copy(update={"data_dir": data_dir, "web_port": free_port(),
                                                         "app_id": f"streamrec-demo-{int(time.time())}"}),
        })
        ensure_topics(settings)
        if (data / ATTRIBUTES_FILE).is_file():  # the shop's catalogue, read by the worker before its first list
            n = publish_catalogue(settings, catalogue_messages(data / ATTRIBUTES_FILE))
            print(f"[demo] published {n} catalogue records ({data.name}/{ATTRIBUTES_FILE}) to "
                  f"{settings.topics.items!r}", flush=True)
        worker = stack.enter_context(WorkerProcess(settings, log_path=work / "worker.log"))
        print(f"[demo] worker starting (log: {work / 'worker.log'}) ...", flush=True)
        ready_s = worker.wait_ready(120)
        print(f"[demo] worker ready in {ready_s:.1f}s; metrics at {worker.base_url}/metrics, catalogue at "
              f"{worker.base_url}/catalogue", flush=True)
        print(f"[demo] by hand, from another shell: STREAMREC_KAFKA__BOOTSTRAP_SERVERS="
              f"{settings.kafka.bootstrap_servers} STREAMREC_TOPICS__ITEMS={settings.topics.items} .venv/bin/streamrec "
              "replay --catalogue FILE (docs/input.md#catalogue; --rate 20 gives you minutes)", flush=True)
        print(f"[demo] hot swap by hand: cp NEW.pt {served}.tmp && mv {served}.tmp {served} (checked every "
              f"{settings.model.watch_s:g} s; docs/learning.md#hot-swap-a-new-model-without-losing-users)", flush=True)

        clicks = read_log(data / "test.tsv", limit=args.limit or None)
        per_user: dict[str, list[str]] = {}
        for c in clicks:
            per_user.setdefault(f"u{c.session}", []).append(c.item)
        collector = stack.enter_context(_closing(Collector(settings, known, per_user).start()))
        print(f"[demo] replaying {len(clicks)} clicks of {len(per_user)} test sessions "
              f"({data.name}/test.tsv, each session one user)", flush=True)
        start = time.perf_counter()
        sender = threading.Thread(target=replay, args=(settings, click_messages(clicks)),
                                  kwargs={"rate": args.rate}, daemon=True)
        sender.start()
        deadline = start + max(240.0, len(clicks) / args.rate + 60.0 if args.rate > 0 else 0.0)
        last_view = 0.0
        change = CatalogueChange(settings, worker, titles, data / ATTRIBUTES_FILE)
        while len(collector.recs) < len(clicks) and time.perf_counter() < deadline:
            time.sleep(0.25)
            if len(collector.recs) >= len(clicks) // 2:
                change.step(collector)
            if time.perf_counter() - last_view >= 3:
                last_view = time.perf_counter()
                _live_view(collector, len(clicks), last_view - start, titles)
        elapsed = max(r.produced_ts for r in collector.recs) - min(r.source.timestamp for r in collector.recs) \
            if collector.recs else time.perf_counter() - start
        time.sleep(0.5)
        metrics = parse_metrics(worker.metrics())
        collector.stop()

    recs = collector.recs
    latencies = np.array([max(0.0, r.produced_ts - r.source.timestamp) for r in recs]) * 1000.0
    recall, mrr, n_pred = online_quality(recs, per_user, known)
    summary = {
        "events": len(recs),
        "events_per_s": round(len(recs) / elapsed, 1) if elapsed > 0 else 0.0,
        "latency_p50_ms": round(float(np.percentile(latencies, 50)), 2) if len(recs) else None,
        "latency_p99_ms": round(float(np.percentile(latencies, 99)), 2) if len(recs) else None,
        "online_recall_at_20": round(recall, 4),
        "online_mrr_at_20": round(mrr, 4),
        "online_predictions": n_pred,
        "dead_lettered": collector.dead,
        "clicks_sent": len(clicks),
        "model_version": ckpt.version,
        "worker_clicks_consumed": metrics.get("streamrec_clicks_consumed_total"),
        **change.summary(recs),
    }
    print("\n[demo] summary")
    print(f"  clicks replayed      {len(clicks)}  ->  lists published {len(recs)}  "
          f"(dead-lettered {collector.dead})")
    print(f"  throughput           {summary['events_per_s']} clicks/s (first click in -> last list out)")
    print(f"  click-to-publish     p50 {summary['latency_p50_ms']} ms, p99 {summary['latency_p99_ms']} ms")
    print(f"  online quality       Recall@20 {recall:.4f}, MRR@20 {mrr:.4f} over {n_pred} next clicks")
    print(f"  metrics were served  at {worker.base_url}/metrics (worker and broker now stopped)")
    print(dumps(summary), flush=True)
    return 0 if len(recs) == len(clicks) else 1


def _live_view(collector: Collector, total: int, elapsed: float, titles: dict[str, str]) -> None:
    """Progress, then the latest lists of three users: item names where the data has them, else ids."""
    done = len(collector.recs)
    print(f"[demo] {done}/{total} lists ({done / max(elapsed, 1e-9):.0f}/s)", flush=True)
    for rec in list(collector.latest.values())[-3:]:
        shown = [titles.get(i, i) for i in rec.items[:5]]
        if titles:
            clicked = collector.last_click.get(rec.user_id)
            print(f"         {rec.user_id:>10} clicked {titles.get(clicked, clicked)!s:.40}", flush=True)
            print(f"         {'':>10} -> " + " | ".join(t[:28] for t in shown) + f" ... ({rec.strategy})", flush=True)
        else:
            print(f"         {rec.user_id:>10} -> {', '.join(shown)} ... ({rec.strategy})", flush=True)


class CatalogueChange:
    """Halfway through the replay: the item most often at the top of the lists is switched off, and a new
    item with its attributes is added; the summary counts the lists after the worker applied the change."""

    def __init__(self, settings: Settings, worker: WorkerProcess, titles: dict[str, str], attributes: Path) -> None:
        self.settings, self.worker, self.titles = settings, worker, titles
        self.attributes = json.loads(attributes.read_text()) if attributes.is_file() else {}
        self.off: str | None = None
        self.new_id = "new-arrival"
        self.applied_at: float | None = None
        self._target = 0

    def step(self, collector: Collector) -> None:
        if self.off is None:
            self._publish(collector)
        elif self.applied_at is None:
            status, body = http_get(self.worker.base_url + "/catalogue")
            if status == 200 and json.loads(body).get("records_applied", 0) >= self._target:
                self.applied_at = time.time()

    def _publish(self, collector: Collector) -> None:
        tops = Counter(r.items[0] for r in collector.recs if r.items)
        if not tops:
            return
        self.off = tops.most_common(1)[0][0]
        status, body = http_get(self.worker.base_url + "/catalogue")
        self._target = (json.loads(body).get("records_applied", 0) if status == 200 else 0) + 2
        attrs = [str(a) for a in self.attributes.get(self.off, [])]
        publish_catalogue(self.settings, [(self.off.encode(), orjson.dumps({"available": False})),
                                          (self.new_id.encode(), orjson.dumps({"attributes": attrs}))])
        print(f"[demo] catalogue: {self.titles.get(self.off, self.off)!r} switched off, {self.new_id!r} added "
              f"with its attributes {attrs}", flush=True)

    def summary(self, recs: list[Recommendation]) -> dict[str, Any]:
        if self.off is None or self.applied_at is None:
            return {"catalogue_change": None}
        after = [r for r in recs if r.produced_ts > self.applied_at]
        return {"catalogue_change": {
            "switched_off": self.off, "lists_after": len(after),
            "lists_after_with_switched_off": sum(self.off in r.items for r in after),
            "lists_after_with_new_item": sum(self.new_id in r.items for r in after)}}


class _closing:
    """Context manager that stops a Collector."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector

    def __enter__(self) -> Collector:
        return self.collector

    def __exit__(self, *exc: Any) -> None:
        self.collector.stop()
