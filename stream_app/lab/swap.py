"""``streamrec swap OLD.pt NEW.pt TEST_TSV``: a replay with a hot swap in the middle, counted and scored.

A worker serves OLD with ``STREAMREC_MODEL__WATCH_S`` on; the test clicks are replayed in time order (one
session per user key) at ``--rate``; when half of them are sent, NEW is renamed over the served file. Then:

- every click has exactly one list (0 lost), and every list names the model that made it;
- per user the switch is atomic: the versions of a user's lists, in click order, are OLD ... OLD NEW ... NEW;
- online Recall@20 (the user's next click inside the list served one click before) of OLD's lists, of
  NEW's first list for each user carried over (made from a carried state), and of NEW's later lists.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from stream_app.brokers import KINDS, start_broker
from stream_app.brokers.process import free_port
from stream_app.lab.harness import TopicReader, WorkerProcess, dumps, http_get, parse_metrics, recommendations
from stream_app.lab.replay import click_messages, read_log, replay
from stream_app.settings import Settings
from stream_app.worker.topics import ensure_topics


def _recall(pairs: list[tuple[Any, str]]) -> dict[str, float | int]:
    """Recall@20 of (list, next clicked item) pairs."""
    hits = sum(1 for r, nxt in pairs if nxt in r.items[:20])
    return {"lists": len(pairs), "recall@20": round(hits / len(pairs), 4) if pairs else 0.0}


def run_swap(settings: Settings, old: str, new: str, test: str, work: Path, clicks: int = 0, rate: float = 500.0,
             broker: str | None = None) -> dict[str, Any]:
    from models.checkpoint import load_checkpoint

    old_v, new_v = load_checkpoint(old).version, load_checkpoint(new).version
    if old_v == new_v:
        raise SystemExit("streamrec swap: the two checkpoints are the same model")
    log = read_log(Path(test), limit=clicks or None)
    work.mkdir(parents=True, exist_ok=True)
    served = work / "model.pt"
    shutil.copyfile(old, served)
    with ExitStack() as stack:
        if settings.kafka.needs_embedded:
            process, settings = start_broker(settings, broker or settings.broker.kind)
            stack.callback(process.stop)
        tag = f"swap-{int(time.time() * 1000)}"
        settings = settings.model_copy(update={
            "topics": settings.topics.model_copy(update={
                "clicks": f"{tag}-clicks", "recommendations": f"{tag}-recs", "dead_letter": f"{tag}-dlq",
                "items": f"{tag}-items", "items_dead_letter": f"{tag}-items-dlq", "users": f"{tag}-users",
                "users_dead_letter": f"{tag}-users-dlq", "user_vectors": f"{tag}-uv", "segments": f"{tag}-seg"}),
            "model": settings.model.model_copy(update={"path": served, "watch_s": 0.5}),
            "worker": settings.worker.model_copy(update={"data_dir": work / "swap-worker", "web_port": free_port(),
                                                         "app_id": f"streamrec-{tag}"}),
        })
        ensure_topics(settings)
        worker = stack.enter_context(WorkerProcess(settings, log_path=work / "swap-worker.log"))
        worker.wait_ready(180)
        half = len(log) // 2
        swapped_at: list[float] = []

        def on_sent(n: int) -> None:
            if n >= half and not swapped_at:
                tmp = work / "model.pt.next"
                shutil.copyfile(new, tmp)
                os.replace(tmp, served)  # one rename: the watcher sees the old file or the new one
                swapped_at.append(time.time())

        t0 = time.perf_counter()
        replay(settings, click_messages(log, user_prefix="s"), rate=rate, on_sent=on_sent)
        records = recommendations(TopicReader(settings, settings.topics.recommendations).read_until(
            len(log), 120 + len(log) / 200, idle_s=2))
        elapsed = time.perf_counter() - t0
        ready = json.loads(http_get(worker.base_url + "/readyz")[1])
        metrics = parse_metrics(worker.metrics())
    clicked = {(f"s{c.session}", c.ts): c.item for c in log}  # what each list's click was on
    res = score(records, old_v, new_v, clicked)
    versions = {r.model_version for r in records}
    res.update({
        "clicks": len(log), "lists": len(records),
        "lost_lists": len(log) - len({(r.source.partition, r.source.offset) for r in records}),
        "lists_naming_a_model": sum(1 for r in records if r.model_version in (old_v, new_v)),
        "models": sorted(versions), "old_version": old_v, "new_version": new_v,
        "serving_at_the_end": ready.get("model_version"),
        "swaps": metrics.get('streamrec_model_swaps_total{outcome="swapped"}', 0.0),
        "states_carried": metrics.get("streamrec_states_carried_total", 0.0),
        "resets_model_version": metrics.get('streamrec_state_resets_total{reason="model_version"}', 0.0),
        "replay_seconds": round(elapsed, 1), "rate": rate,
    })
    return res


def score(records: list[Any], old: str, new: str, clicked: dict[tuple[str, float], str]) -> dict[str, Any]:
    """The per-user atomicity and online figures of a swap replay (module docstring); each list is scored
    against the item of the user's next click, looked up by (user, click time) in the replayed log. Pure."""
    by_user: dict[str, list[Any]] = {}
    for r in records:
        if not r.replayed:
            by_user.setdefault(r.user_id, []).append(r)
    atomic, old_pairs, first_new, later_new, carried_users = True, [], [], [], 0
    for lists in by_user.values():
        lists.sort(key=lambda r: (r.source.partition, r.source.offset))
        versions = [r.model_version for r in lists]
        k = versions.index(new) if new in versions else len(versions)
        atomic &= all(v == old for v in versions[:k]) and all(v == new for v in versions[k:])
        carried = 0 < k < len(lists)
        carried_users += carried
        for j, (r, nxt) in enumerate(zip(lists, lists[1:])):
            pair = (r, clicked.get((nxt.user_id, nxt.click_ts), ""))
            if r.model_version == old:
                old_pairs.append(pair)
            elif carried and j == k:
                first_new.append(pair)
            else:
                later_new.append(pair)
    return {"atomic_per_user": atomic, "users": len(by_user), "users_across_the_swap": carried_users,
            "old_model": _recall(old_pairs), "new_model_first_list_after_carry": _recall(first_new),
            "new_model_later": _recall(later_new)}


def cmd_swap(args: argparse.Namespace) -> int:
    res = run_swap(Settings(), args.old, args.new, args.test, Path(args.work_dir), clicks=args.clicks,
                   rate=args.rate, broker=args.broker)
    print(f"{res['clicks']} clicks, {res['lists']} lists, {res['lost_lists']} lost; swapped {res['old_version']} -> "
          f"{res['new_version']} ({res['states_carried']:.0f} states carried, per-user switch atomic: "
          f"{res['atomic_per_user']}); online Recall@20: old {res['old_model']['recall@20']:.4f}, new right after "
          f"the carry {res['new_model_first_list_after_carry']['recall@20']:.4f}, new later "
          f"{res['new_model_later']['recall@20']:.4f}", flush=True)
    if args.json:
        print(dumps(res), flush=True)
    ok = res["lost_lists"] == 0 and res["atomic_per_user"] and res["serving_at_the_end"] == res["new_version"]
    return 0 if ok else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``streamrec swap``."""
    p = subparsers.add_parser("swap", help="a replay with a hot swap of the model in the middle: lost lists, "
                                           "per-user atomicity and the online Recall@20 around the swap")
    p.add_argument("old", metavar="OLD_CKPT")
    p.add_argument("new", metavar="NEW_CKPT")
    p.add_argument("test", metavar="TEST_TSV", help="GRU4Rec TSV replayed in time order, one session per user")
    p.add_argument("--clicks", type=int, default=0, help="the first N clicks in time order (default all)")
    p.add_argument("--rate", type=float, default=500.0, help="clicks per second (default %(default)s)")
    p.add_argument("--broker", choices=KINDS, default=None, help="the local broker (default embedded)")
    p.add_argument("--work-dir", default="var/swap")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_swap)
