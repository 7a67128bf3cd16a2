"""The worker end to end on the embedded broker: lists out, dead letters, state in its partition."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from stream_app.lab.harness import TopicReader, WorkerProcess, dead_letter_reasons, parse_metrics, recommendations
from stream_app.core.recommender import Incoming
from stream_app.core.records import Click, Source
from stream_app.settings import Settings
from stream_app.worker.start import load_recommender
from tests.integration.helpers import (
    assert_same_states, click, final_states, reference_states, scenario, send_all,
)

CHECK_LISTS = Path(__file__).resolve().parents[2] / "deploy" / "check_lists.py"

MALFORMED = [
    (b"user-x", b"not json at all", "not_json"),
    (b"user-x", b"[1, 2, 3]", "not_object"),
    (b"user-x", b'{"user_id": "user-x", "ts": 5}', "missing_field"),
    (b"user-x", b'{"user_id": "user-x", "item_id": "i1", "ts": "noon"}', "bad_type"),
    (b"user-x", b'{"user_id": "user-x", "item_id": "i1", "ts": NaN}', "non_finite_time"),
    (b"user-y", b'{"user_id": "user-x", "item_id": "i1", "ts": 5}', "key_mismatch"),
    (b"user-x", b"\xff\xfe\xfd", "not_utf8"),
    (b"user-x", b'{"user_id": "user-x", "item_id": "i1", "ts": 5, "ts": 6}', "duplicate_key"),
    (b"user-x", b"x" * 9000, "too_large"),
    (b"user-x", b'{"user_id": "user-x", "item_id": "i1", "ts": Infinity}', "non_finite_time"),
]


def test_thousand_clicks_fifty_malformed(settings: Settings) -> None:
    valid = scenario(n_users=95, clicks_per_user=10)
    messages: list[tuple[bytes | None, bytes]] = []
    expected_reasons: Counter[str] = Counter()
    for i, m in enumerate(valid):
        messages.append(m)
        if i % 19 == 0 and sum(expected_reasons.values()) < 50:
            key, value, reason = MALFORMED[len(messages) % len(MALFORMED)]
            messages.append((key, value))
            expected_reasons[reason] += 1
    assert len(messages) == 1000 and sum(expected_reasons.values()) == 50
    with WorkerProcess(settings) as worker:
        worker.wait_ready()
        positions = send_all(settings, messages)
        recs = recommendations(TopicReader(settings, settings.topics.recommendations).read_until(950, 90, idle_s=2))
        dlq = TopicReader(settings, settings.topics.dead_letter).read_until(50, 30, idle_s=1)
        metrics = parse_metrics(worker.metrics())
    dup = [k for k, n in Counter((r.source.partition, r.source.offset) for r in recs).items() if n > 1]
    valid_set = set(valid)
    missing = sorted(set(p for p, m in zip(positions, messages) if m in valid_set)
                     - {(r.source.partition, r.source.offset) for r in recs})
    assert not dup and not missing, (dup, missing, [r for r in recs if (r.source.partition, r.source.offset) in dup])
    assert len(recs) == 950, "exactly one list per valid click"
    assert len({(r.source.partition, r.source.offset) for r in recs}) == 950
    assert not any(r.replayed for r in recs)
    assert Counter(dead_letter_reasons(dlq)) == expected_reasons
    assert {r.value for r in dlq} <= {v for _, v in messages}
    assert metrics["streamrec_clicks_consumed_total"] == 1000
    assert sum(v for k, v in metrics.items() if k.startswith("streamrec_dead_letters_total")) == 50
    # the same count with another client (librdkafka), as an operator checks a fault injected by hand
    checked = subprocess.run(
        [sys.executable, str(CHECK_LISTS), "--bootstrap", settings.kafka.bootstrap_servers,
         "--clicks", settings.topics.clicks, "--recommendations", settings.topics.recommendations,
         "--dead-letter", settings.topics.dead_letter], capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    count = json.loads(checked.stdout)
    assert (count["clicks"], count["clicks_with_a_list"], count["dead_letters"], count["missing"]) == (1000, 950, 50, 0)
    assert count["dead_letter_reasons"] == dict(sorted(expected_reasons.items()))

    # every user's state is in the partition of its own clicks, and equals a clean replay
    valid_positions = [p for p, (k, v) in zip(positions, messages) if (k, v) in set(valid)]
    click_partition = {k.decode(): p for (k, _), (p, _) in zip(valid, valid_positions)}
    got = final_states(settings)
    for user, (partition, _) in got.items():
        assert partition == click_partition[user], user
    assert_same_states(got, reference_states(settings, valid, valid_positions))


def test_hand_made_scenario_exact_lists(settings: Settings) -> None:
    _exact_lists(settings)


def test_rerankers_and_also_like_exact_over_tcp(settings: Settings) -> None:
    """With MMR, the long-tail term and the sampled list on, the worker's records (stages, lists, also-like
    lists and their probabilities) are the core's on the same clicks: the draw is seeded by the click."""
    model = settings.model.model_copy(update={"rerank_mmr": 0.2, "rerank_long_tail": 0.2, "candidates": 50,
                                              "also_k": 5, "also_temperature": 0.7})
    _exact_lists(settings.model_copy(update={"model": model}), ("mmr", "long_tail"))


def test_recall_and_ranker_exact_over_tcp(settings: Settings, tmp_path: Path) -> None:
    """With a ranker file (and MMR after it), the worker's model lists are the core's: the network's candidates
    plus the click's co-visitation neighbours, in the learned ranker's order, with its scores."""
    from models.checkpoint import load_checkpoint
    from tests.unit.stream_app.tiny_ranker import tiny_ranker

    ck = load_checkpoint(settings.model.path)
    tiny_ranker(ck, ck.model, np.asarray(ck.item_counts), tmp_path / "ranker.pt", size=40)
    model = settings.model.model_copy(update={"ranker": str(tmp_path / "ranker.pt"), "rerank_mmr": 0.2,
                                              "candidates": 40})
    _exact_lists(settings.model_copy(update={"model": model}), ("recall", "ranker", "mmr"))


def _exact_lists(settings: Settings, rerankers: tuple[str, ...] = ()) -> None:
    clicks = [click("alice", "i1", 100.0), click("bob", "i7", 101.0), click("alice", "i2", 102.0),
              click("carol", "nope", 103.0), click("alice", "i3", 5000.0)]  # last one: after the 30 min gap
    with WorkerProcess(settings) as worker:
        worker.wait_ready()
        positions = send_all(settings, clicks)
        recs = recommendations(TopicReader(settings, settings.topics.recommendations).read_until(5, 60, idle_s=1))
    by_source = {(r.source.partition, r.source.offset): r for r in recs}
    rec, _ = load_recommender(settings)
    store: dict[str, bytes] = {}
    for (key, value), (part, off) in zip(clicks, positions):
        b = json.loads(value)
        c = Click(b["user_id"], b["item_id"], b["ts"])
        out = rec.process([Incoming(c, Source(settings.topics.clicks, part, off), store.get(c.user_id))], 0.0)[0]
        store[c.user_id] = out.state_blob or store[c.user_id]
        got = by_source[(part, off)]
        assert got.user_id == c.user_id and got.items == out.recommendation.items
        assert got.strategy == out.recommendation.strategy
        assert got.stages == out.recommendation.stages
        assert got.stages[1:] == tuple(st for st in rerankers if got.strategy == "model" or st not in ("recall", "ranker"))
        assert all(abs(a - b) < 1e-5 for a, b in zip(got.scores, out.recommendation.scores))
        assert got.sources == out.recommendation.sources and got.policy_id == out.recommendation.policy_id != ""
        assert bool(got.sources) == (got.strategy == "model" and "recall" in rerankers)
        assert got.also == out.recommendation.also and len(got.also) == settings.model.also_k
        assert all(abs(a - b) < 1e-6 for a, b in zip(got.also_p, out.recommendation.also_p))
        assert len(got.items) == 20 and b["item_id"] not in got.items
    assert by_source[positions[3]].strategy == "popularity"
