"""The naive baseline for ``streamrec bench`` (c): one click at a time through a plain Faust agent.

Same topics, table, state codec, output records and settings as the worker,
without its engineering: per click, validate, read the table, one unbatched
``model.step`` with full scoring of every item, mask the recent items, top k,
write the table, send the list. Run as a child process:
``python -m stream_app.lab.naive`` (settings from the STREAMREC_ variables).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch

from stream_app.core.recommender import load_prior
from stream_app.core.records import Recommendation, Source
from stream_app.settings import Settings
from stream_app.core.state import UserState, encode
from stream_app.core.validate import decode_click


def attach_naive(wiring: Any, settings: Settings) -> None:
    """The one-event-at-a-time agent and a /readyz page, on an app from ``stream_app.worker.app.build``."""
    from models.checkpoint import load_checkpoint

    ckpt = load_checkpoint(settings.model.path)
    model, item_index, item_ids = ckpt.model, ckpt.item_index, ckpt.item_ids
    popular = ckpt.popular(settings.model.k)
    k, w, recent_n = settings.model.k, settings.worker, settings.model.recent_items
    app = wiring.app

    @app.agent(wiring.clicks, name="streamrec.naive")
    async def process(stream: Any) -> None:
        async for event in stream.events():
            now = time.time()
            msg = event.message
            try:
                click = decode_click(event.value, event.key, max_bytes=w.max_event_bytes, now=now,
                                     max_future_skew_s=w.max_future_skew_s)
            except Exception:  # noqa: BLE001 - the baseline drops bad input
                continue
            prior, _ = load_prior(wiring.table.get(event.key), ckpt.version)
            if prior is not None and click.ts - prior.last_ts > settings.session.gap_s:
                prior = None
            item = item_index.get(click.item_id)
            hidden = prior.hidden if prior is not None else None
            recent = prior.recent if prior is not None else ()
            if item is None and hidden is None:
                items, scores = popular, [0.0] * len(popular)
            else:
                with torch.inference_mode():
                    h = torch.from_numpy(hidden[None, :]) if hidden is not None else model.zero_state(1)  # (1, S)
                    if item is not None:
                        h, s = model.step(h, torch.tensor([item]))  # (1, S), (1, N)
                        recent = (recent + (item,))[-recent_n:] if recent_n else ()
                    else:
                        s = model.score(h)  # (1, N)
                    s = s[0].clone()  # (N,)
                    if settings.model.exclude_clicked and recent:
                        s[list(recent)] = float("-inf")
                    top = torch.topk(s, k)
                    items, scores = top.indices.tolist(), top.values.tolist()
                    hidden = h[0].numpy().copy()
            state = UserState(ckpt.version, hidden, click.ts, msg.partition, msg.offset, now, recent,
                              tuple(items[:20]))
            wiring.table[event.key] = encode(state)
            await wiring.table.publish_held()  # the app's table holds its changelog records for the caller
            rec = Recommendation(click.user_id, tuple(item_ids[i] for i in items), tuple(scores), ckpt.version,
                                 "model" if hidden is not None else "popularity",
                                 Source(msg.topic, msg.partition, msg.offset, float(msg.timestamp or now)),
                                 click.ts, now)
            await wiring.recommendations.send(key=event.key, value=rec.to_json())

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        try:
            ok = app.tables.recovery.completed.is_set() and not app.rebalancing
        except AttributeError:
            ok = False
        return web.json({"ready": ok}, status=200 if ok else 503)

    del process, readyz


def main() -> int:
    from faust import Worker

    from stream_app.worker.app import build
    from stream_app.worker.topics import ensure_topics

    settings = Settings()
    torch.set_num_threads(settings.worker.torch_threads)
    ensure_topics(settings)
    wiring = build(settings)
    attach_naive(wiring, settings)
    print("streamrec naive worker starting", flush=True)
    class QuietWorker(Worker):  # type: ignore[misc, valid-type]
        def _setup_spinner_handler(self, logger: Any, level: int) -> None:
            return None  # as the worker: no root logger at DEBUG (the spinner's side effect)

    worker = QuietWorker(wiring.app, loglevel=settings.worker.loglevel, quiet=True)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
