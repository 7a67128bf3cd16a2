"""What "nothing lost" means, as code: a clean reference replay, the states the changelog holds, comparisons.

Shared by the integration tests, the chaos suite (``streamrec chaos``) and the
soak run. Delivery is at least once: every valid click must have at least one
list (duplicates allowed, missing lists not), and every user's final state must
equal a fault-free, click-by-click run of the same clicks through the core.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from stream_app.lab.harness import TopicReader
from stream_app.core.recommender import Incoming
from stream_app.core.records import Click, Recommendation, Source
from stream_app.lab.replay import producer
from stream_app.settings import Settings
from stream_app.core.state import UserState, decode
from stream_app.worker.topics import changelog_topic

Message = tuple[bytes | None, bytes]
Position = tuple[int, int]  # (partition, offset) of a click on the clicks topic


def click(user: str, item: str, ts: float) -> tuple[bytes, bytes]:
    """One valid click message, keyed by its user."""
    return user.encode(), json.dumps({"user_id": user, "item_id": item, "ts": ts}).encode()


def scenario(n_users: int, clicks_per_user: int, n_items: int = 50, seed: int = 0,
             items: Sequence[str] | None = None, user_prefix: str = "user-") -> list[tuple[bytes, bytes]]:
    """Interleaved sessions, some with unknown items, all within one session gap."""
    rng = np.random.default_rng(seed)
    catalogue = list(items) if items is not None else [f"i{j}" for j in range(n_items)]
    out = []
    ts = 1_600_000_000.0
    for _ in range(clicks_per_user):
        for u in rng.permutation(n_users):
            item = catalogue[int(rng.integers(len(catalogue)))] if rng.random() > 0.05 else "unknown-item"
            ts += 1.0
            out.append(click(f"{user_prefix}{u}", item, ts))
    return out


def send_all(settings: Settings, messages: Sequence[Message]) -> list[Position]:
    """Produce in order; returns (partition, offset) of each message."""
    prod = producer(settings)
    try:
        futures = [prod.send(settings.topics.clicks, key=k, value=v) for k, v in messages]
        prod.flush()
        return [(f.get(10).partition, f.get(10).offset) for f in futures]
    finally:
        prod.close()


def read_topic(settings: Settings, topic: str, timeout_s: float = 15.0) -> list[Any]:
    """Every record of ``topic`` up to its high watermark (from Fetch, which Tansu reports right)."""
    reader = TopicReader(settings, topic)
    consumer = reader.consumer
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            out.extend(reader.poll(0.3))
            marks = {tp: consumer.highwater(tp) for tp in consumer.assignment()}
            if marks and all(h is not None and consumer.position(tp) >= h for tp, h in marks.items()):
                break
    finally:
        reader.close()
    return out


def final_states(settings: Settings, timeout_s: float = 15.0) -> dict[str, tuple[int, UserState]]:
    """Latest state per user as the changelog holds it (tombstones remove), with its partition."""
    latest: dict[str, tuple[int, UserState]] = {}
    for r in read_topic(settings, changelog_topic(settings), timeout_s):
        if r.value is None:
            latest.pop(r.key.decode(), None)
        else:
            latest[r.key.decode()] = (r.partition, decode(r.value))
    return latest


def reference_states(settings: Settings, messages: Sequence[Message], positions: Sequence[Position],
                     recommender: Any = None) -> dict[str, UserState]:
    """A clean, fault-free, click-by-click run of the same clicks through the core.

    Clicks are applied in (partition, offset) order, the order the worker reads
    them in (a user's clicks all live in one partition). Only valid clicks
    should be passed.
    """
    if recommender is None:
        from stream_app.worker.start import load_recommender

        recommender, _ = load_recommender(settings)
    store: dict[str, bytes] = {}
    for (part, off), (_, value) in sorted(zip(positions, messages), key=lambda pm: pm[0]):
        body: dict[str, Any] = json.loads(value)
        c = Click(body["user_id"], str(body["item_id"]), float(body["ts"]))
        out = recommender.process(
            [Incoming(c, Source(settings.topics.clicks, part, off, 0.0), store.get(c.user_id))], now=0.0)[0]
        if out.state_blob is not None:
            store[c.user_id] = out.state_blob
    return {u: decode(b) for u, b in store.items()}


def state_mismatches(got: dict[str, tuple[int, UserState]], want: dict[str, UserState],
                     atol: float = 1e-5) -> list[str]:
    """One line per user whose state differs (missing, extra, other last click, hidden beyond atol)."""
    out = [f"{u}: missing from the changelog" for u in sorted(set(want) - set(got))]
    out += [f"{u}: not in the reference" for u in sorted(set(got) - set(want))]
    for user in sorted(set(want) & set(got)):
        state, (_, actual) = want[user], got[user]
        if (actual.last_partition, actual.last_offset) != (state.last_partition, state.last_offset):
            out.append(f"{user}: last click {(actual.last_partition, actual.last_offset)} "
                       f"!= {(state.last_partition, state.last_offset)}")
        elif (state.hidden is None) != (actual.hidden is None):
            out.append(f"{user}: hidden state present in one and not the other")
        elif state.hidden is not None and not np.allclose(actual.hidden, state.hidden, rtol=0.0, atol=atol):
            diff = float(np.max(np.abs(actual.hidden - state.hidden)))
            out.append(f"{user}: hidden differs by {diff:.3g} (recent items {list(actual.recent)}, "
                       f"reference {list(state.recent)})")
    return out


def assert_same_states(got: dict[str, tuple[int, UserState]], want: dict[str, UserState]) -> None:
    problems = state_mismatches(got, want)
    assert not problems, f"{len(problems)} users differ: {problems[:10]}"


@dataclass
class Delivery:
    """Lists against clicks: at least once means ``lost`` must be empty; duplicates are allowed."""

    clicks: int
    lost: list[Position] = field(default_factory=list)
    duplicated: int = 0  # lists beyond the first for one click
    replayed: int = 0  # lists marked replayed (the replay guard re-sent them)
    unexpected: int = 0  # lists for positions that were not among the valid clicks
    duplicate_examples: list[Position] = field(default_factory=list)


def delivery(valid_positions: Iterable[Position], recs: Sequence[Recommendation]) -> Delivery:
    wanted = set(valid_positions)
    per_click = Counter((r.source.partition, r.source.offset) for r in recs)
    return Delivery(
        clicks=len(wanted),
        lost=sorted(wanted - set(per_click)),
        duplicated=sum(n - 1 for n in per_click.values() if n > 1),
        replayed=sum(1 for r in recs if r.replayed),
        unexpected=sum(1 for p in per_click if p not in wanted),
        duplicate_examples=sorted(p for p, n in per_click.items() if n > 1)[:5],
    )
