"""Test helpers: produce clicks, read back state and lists, and the fault-free reference."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from stream_app.harness import TopicReader
from stream_app.recommender import Incoming
from stream_app.records import Click, Source
from stream_app.replay import producer
from stream_app.settings import Settings
from stream_app.state import UserState, decode
from stream_app.topics import changelog_topic
from stream_app.worker import load_recommender


def click(user: str, item: str, ts: float) -> tuple[bytes, bytes]:
    return user.encode(), json.dumps({"user_id": user, "item_id": item, "ts": ts}).encode()


def send_all(settings: Settings, messages: list[tuple[bytes | None, bytes]]) -> list[tuple[int, int]]:
    """Produce in order; returns (partition, offset) of each message."""
    prod = producer(settings)
    futures = [prod.send(settings.topics.clicks, key=k, value=v) for k, v in messages]
    prod.flush()
    out = [(f.get(10).partition, f.get(10).offset) for f in futures]
    prod.close()
    return out


def scenario(n_users: int, clicks_per_user: int, n_items: int = 50, seed: int = 0) -> list[tuple[bytes, bytes]]:
    """Interleaved sessions, some with unknown items, all within one session gap."""
    rng = np.random.default_rng(seed)
    out = []
    ts = 1_600_000_000.0
    for step in range(clicks_per_user):
        for u in rng.permutation(n_users):
            item = f"i{rng.integers(n_items)}" if rng.random() > 0.05 else "unknown-item"
            ts += 1.0
            out.append(click(f"user-{u}", item, ts))
    return out


def final_states(settings: Settings, timeout_s: float = 15.0) -> dict[str, tuple[int, UserState]]:
    """Latest state per user as the changelog holds it, with the partition it was written to."""
    reader = TopicReader(settings, changelog_topic(settings))
    latest: dict[str, tuple[int, UserState]] = {}
    for r in reader.read_until(10**9, timeout_s=timeout_s):
        if r.value is not None:
            latest[r.key.decode()] = (r.partition, decode(r.value))
    reader.close()
    return latest


def reference_states(settings: Settings, messages: list[tuple[bytes, bytes]],
                     positions: list[tuple[int, int]]) -> dict[str, UserState]:
    """A clean, fault-free, click-by-click run of the same clicks through the core."""
    rec, _ = load_recommender(settings)
    store: dict[str, bytes] = {}
    for (key, value), (part, off) in zip(messages, positions):
        body: dict[str, Any] = json.loads(value)
        c = Click(body["user_id"], str(body["item_id"]), float(body["ts"]))
        out = rec.process([Incoming(c, Source(settings.topics.clicks, part, off, 0.0), store.get(c.user_id))],
                          now=0.0)[0]
        if out.state_blob is not None:
            store[c.user_id] = out.state_blob
    return {u: decode(b) for u, b in store.items()}


def assert_same_states(got: dict[str, tuple[int, UserState]], want: dict[str, UserState]) -> None:
    assert set(got) == set(want), f"users differ: {set(got) ^ set(want)}"
    for user, state in want.items():
        _, actual = got[user]
        assert (actual.last_partition, actual.last_offset) == (state.last_partition, state.last_offset), user
        if state.hidden is None:
            assert actual.hidden is None, user
        else:
            np.testing.assert_allclose(actual.hidden, state.hidden, atol=1e-5, err_msg=user)
