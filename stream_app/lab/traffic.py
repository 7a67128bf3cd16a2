"""Steady click traffic for fault injection and soak runs: a paced producer thread that remembers every message.

The chaos suite injects each fault while this thread keeps producing at a fixed
rate; afterwards the (partition, offset) of every message tells which lists
must exist and the valid clicks give the fault-free reference.
"""

from __future__ import annotations

import gc
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from stream_app.lab.replay import producer
from stream_app.settings import Settings
from stream_app.lab.verify import Position, click

# Messages the worker must dead-letter, mixed into the traffic (key = a real user).
BAD_INPUT: tuple[bytes, ...] = (
    b"not json",
    b"[1, 2]",
    b'{"item_id": "i1", "ts": 1}',
    b'{"user_id": "%s", "item_id": "i1", "ts": NaN}',
    b"\xff\xfe",
    b'{"user_id": "%s", "item_id": "i1", "ts": 1, "ts": 2}',
)


@dataclass
class Sent:
    """One produced message and where it landed (None: the send failed, the message does not exist)."""

    key: bytes
    value: bytes
    valid: bool
    sent_at: float
    future: Any = None
    position: Position | None = None


def clicks_stream(items: Sequence[str], n_users: int, seed: int = 0, bad_every: int = 0,
                  user_prefix: str = "user-") -> Iterator[tuple[bytes, bytes, bool]]:
    """Endless interleaved sessions of ``n_users`` users (about 5% unknown items), one second apart.

    With ``bad_every`` > 0, every ``bad_every``-th message is malformed input.
    """
    rng = np.random.default_rng(seed)
    ts = 1_600_000_000.0
    n = 0
    while True:
        for u in rng.permutation(n_users):
            n += 1
            user = f"{user_prefix}{u}"
            if bad_every and n % bad_every == 0:
                template = BAD_INPUT[(n // bad_every) % len(BAD_INPUT)]
                value = template.replace(b"%s", user.encode()) if b"%s" in template else template
                yield user.encode(), value, False
                continue
            item = items[int(rng.integers(len(items)))] if rng.random() > 0.05 else "unknown-item"
            ts += 1.0
            key, value = click(user, item, ts)
            yield key, value, True


# Every message sent is kept (with its delivery future) until stop(). Python's full
# collections scan all of them, so in a 10-minute soak (500k messages) a collection
# paused this process for hundreds of ms: the producer had stamped the clicks'
# CreateTime and its I/O thread could not send them, which showed as a click-to-publish
# p99 growing with the run while the worker's own share stayed flat. Moving what
# exists to the permanent generation every few thousand sends bounds the pauses.
FREEZE_EVERY = 2000


class Traffic:
    """Produces ``messages`` at ``rate`` per second from a thread until ``stop()``; ``burst(n)`` adds n at once."""

    def __init__(self, settings: Settings, messages: Iterator[tuple[bytes, bytes, bool]], rate: float,
                 linger_ms: int = 5) -> None:
        self.settings = settings
        self.messages = messages
        self.rate = rate
        self.sent: list[Sent] = []
        self._stop = threading.Event()
        self._burst = 0
        self._lock = threading.Lock()
        self._burst_done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="traffic")
        self._producer = producer(settings, linger_ms=linger_ms, request_timeout_ms=60000, retries=20)
        self.error: BaseException | None = None

    def start(self) -> "Traffic":
        self._thread.start()
        return self

    def _send_one(self) -> None:
        key, value, valid = next(self.messages)
        future = self._producer.send(self.settings.topics.clicks, key=key, value=value)
        self.sent.append(Sent(key, value, valid, time.time(), future))

    def _run(self) -> None:
        try:
            start = time.perf_counter()
            paced = 0
            while not self._stop.is_set():
                with self._lock:
                    burst, self._burst = self._burst, 0
                for _ in range(burst):
                    self._send_one()
                if burst:
                    self._producer.flush()
                    self._burst_done.set()
                self._send_one()
                paced += 1
                if paced % FREEZE_EVERY == 0:
                    gc.freeze()
                ahead = paced / self.rate - (time.perf_counter() - start)
                if ahead > 0:
                    self._stop.wait(ahead)
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc
            self._burst_done.set()

    def burst(self, n: int, timeout_s: float = 30.0) -> None:
        """Send ``n`` messages at once (and flush them) on top of the paced ones; returns once sent."""
        self._burst_done.clear()
        with self._lock:
            self._burst += n
        self._burst_done.wait(timeout_s)

    @property
    def count(self) -> int:
        return len(self.sent)

    def abort(self) -> None:
        """Stop without waiting for deliveries (a fault run that failed); closes the producer."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)
        self._producer.close(timeout=1)

    def stop(self) -> list[Sent]:
        """Stop, flush, and resolve every message's (partition, offset)."""
        self._stop.set()
        self._thread.join(30)
        self._producer.flush()
        for s in self.sent:
            try:
                md = s.future.get(60)
                s.position = (md.partition, md.offset)
            except Exception:  # noqa: BLE001 - the message was never written: nothing to expect
                s.position = None
            s.future = None
        self._producer.close()
        if self.error is not None:
            raise RuntimeError(f"traffic thread failed: {self.error!r}") from self.error
        return self.sent


def small_checkpoint(path: Path, n_items: int = 50, hidden: int = 16) -> Path:
    """A random-weight GRU over items i0..i{n-1}: enough to check state bookkeeping, fast on a laptop."""
    import torch

    from models.checkpoint import save_checkpoint
    from models.rnn import ModelConfig, build_model

    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_items=n_items, hidden=hidden), seed=0).eval()
    save_checkpoint(path, model, [f"i{j}" for j in range(n_items)], list(range(n_items, 0, -1)),
                    {"purpose": "streamrec chaos"})
    return path


def json_line(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))
