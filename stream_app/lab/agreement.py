"""``streamrec agreement CKPT --sequences NAME.txt``: a sequence set replayed through a worker, scored offline.

Every user's whole sequence is replayed as clicks (one user per key, one second
apart); the list the worker published after the second-to-last click is that
user's prediction of the last item (the S3-Rec test target), scored as
``streamrec evaluate --sequences`` scores it. The worker runs with
``STREAMREC_MODEL__RECENT_ITEMS=255`` so that its exclusions are the protocol's
(the user's whole history, for histories of up to 255 items). Offline
figures are printed twice: with the protocol's inputs cut to the last 50
items, and with whole histories (what the worker's state has read).
"""

from __future__ import annotations

import argparse
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from stream_app.brokers import KINDS, start_broker
from stream_app.brokers.process import free_port
from stream_app.core.records import Click
from stream_app.lab.harness import TopicReader, WorkerProcess, dumps, recommendations
from stream_app.lab.replay import replay
from stream_app.settings import Settings
from stream_app.worker.topics import ensure_topics

EXCLUDED = 255  # the state's limit on remembered clicks (stream_app/core/state.py)


def _messages(users: list[str], item_ids: list[str], items: np.ndarray, offsets: np.ndarray):  # type: ignore[no-untyped-def]
    for u, user in enumerate(users):
        key = f"s{user}"
        for t, i in enumerate(items[offsets[u]:offsets[u + 1]]):
            yield key.encode(), Click(key, item_ids[int(i)], 1_000_000.0 + t).to_json()


def run_agreement(settings: Settings, checkpoint: str, sequences: str, work: Path, users: int = 0,
                  broker: str | None = None) -> dict[str, Any]:
    from models.checkpoint import load_checkpoint
    from models.data import Sessions
    from models.sequences import MAX_LEN, SequenceSet, evaluate_sequences, hr_ndcg, read_sequences

    ckpt = load_checkpoint(checkpoint)
    data = read_sequences(sequences)
    if users:
        data = data.subset(np.arange(min(users, len(data.users))))
    index = {s: i for i, s in enumerate(ckpt.item_ids)}
    if any(s not in index for s in data.item_ids):
        raise SystemExit(f"streamrec agreement: {sequences} has items the checkpoint does not know; train on it")
    remap = np.asarray([index[s] for s in data.item_ids], dtype=np.int64)
    data = SequenceSet(data.users, ckpt.item_ids, Sessions(remap[data.seqs.items], data.seqs.offsets))
    data = data.subset(np.flatnonzero(np.diff(data.seqs.offsets) >= 2))  # a target and a click before it
    off, items = data.seqs.offsets, data.seqs.items
    offline = evaluate_sequences(ckpt.model, data, 1, MAX_LEN)
    whole = evaluate_sequences(ckpt.model, data, 1, 10**9)
    n_clicks = int(off[-1])
    with ExitStack() as stack:
        if settings.kafka.needs_embedded:
            process, settings = start_broker(settings, broker or settings.broker.kind)
            stack.callback(process.stop)
        data_dir = work / "agreement-worker"
        tag = f"agreement-{int(time.time() * 1000)}"  # topics of its own: read from the start, nothing else's
        settings = settings.model_copy(update={
            "topics": settings.topics.model_copy(update={
                "clicks": f"{tag}-clicks", "recommendations": f"{tag}-recs", "dead_letter": f"{tag}-dlq",
                "items": f"{tag}-items", "items_dead_letter": f"{tag}-items-dlq",
                "users": f"{tag}-users", "users_dead_letter": f"{tag}-users-dlq", "user_vectors": f"{tag}-uv", "segments": f"{tag}-seg"}),
            "model": settings.model.model_copy(update={"path": Path(checkpoint), "recent_items": EXCLUDED, "k": 20,
                                                       "exclude_clicked": True}),
            "worker": settings.worker.model_copy(update={"data_dir": data_dir, "web_port": free_port(),
                                                         "app_id": f"streamrec-{tag}"}),
        })
        ensure_topics(settings)
        worker = stack.enter_context(WorkerProcess(settings, log_path=work / "agreement-worker.log"))
        worker.wait_ready(180)
        t0 = time.perf_counter()
        replay(settings, _messages(data.users, ckpt.item_ids, items, off))
        records = TopicReader(settings, settings.topics.recommendations).read_until(n_clicks, 120 + n_clicks / 200)
        elapsed = time.perf_counter() - t0
    lists: dict[str, list[Any]] = {}
    for r in recommendations(records):
        if not r.replayed:
            lists.setdefault(r.user_id, []).append(r)
    ranks = np.empty(len(data.users), dtype=np.int64)
    complete = 0
    for u, user in enumerate(data.users):
        got = sorted(lists.get(f"s{user}", []), key=lambda r: r.source.offset)
        n = int(off[u + 1] - off[u])
        target = ckpt.item_ids[int(items[off[u + 1] - 1])]
        if len(got) != n:
            ranks[u] = 10**9
            continue
        complete += 1
        served = got[n - 2].items
        ranks[u] = served.index(target) + 1 if target in served else 10**9
    stream = hr_ndcg(ranks)
    return {
        "users": len(data.users), "clicks": n_clicks, "users_with_every_list": complete,
        "replay_seconds": round(elapsed, 1), "model_version": ckpt.version,
        "offline": {k: round(v, 4) for k, v in offline.items() if k.startswith(("hr@", "ndcg@"))},
        "offline_whole_history": {k: round(v, 4) for k, v in whole.items() if k.startswith(("hr@", "ndcg@"))},
        "stream": {k: round(v, 4) for k, v in stream.items()},
        "hr@20_stream_minus_offline": round(stream["hr@20"] - offline["hr@20"], 4),
        "hr@20_stream_minus_whole_history": round(stream["hr@20"] - whole["hr@20"], 4),
    }


def cmd_agreement(args: argparse.Namespace) -> int:
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    res = run_agreement(Settings(), args.checkpoint, args.sequences, work, users=args.users, broker=args.broker)
    print(f"offline HR@20 {res['offline']['hr@20']:.4f} (inputs cut to 50; whole histories "
          f"{res['offline_whole_history']['hr@20']:.4f}), through the worker {res['stream']['hr@20']:.4f}: "
          f"{res['users']} users, {res['clicks']} clicks in {res['replay_seconds']} s", flush=True)
    if args.json:
        print(dumps(res), flush=True)
    return 0 if res["users_with_every_list"] == res["users"] else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``streamrec agreement``."""
    p = subparsers.add_parser("agreement", help="a user-sequence set replayed through a worker, its lists scored "
                                                "with the offline protocol beside the offline figures")
    p.add_argument("checkpoint")
    p.add_argument("--sequences", required=True, metavar="NAME.txt")
    p.add_argument("--users", type=int, default=0, help="the first N users only")
    p.add_argument("--broker", choices=KINDS, default=None, help="the local broker (default embedded)")
    p.add_argument("--work-dir", default="var/agreement")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_agreement)
