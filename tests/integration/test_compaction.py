"""Compaction on Apache Kafka: a user's older lists and states are cleaned away, the newest kept; a rebuild
from the compacted changelog continues every state exactly. (Tansu, the embedded broker, does not compact.)

The recommendations topic and the changelog are created before the worker with the
configs the worker asks for (``cleanup.policy=compact``) plus small segments, so that
the cleaner runs within seconds: a segment rolls when a record arrives after
``segment.ms``, and the active segment is never cleaned.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter

import pytest
from kafka.admin import NewTopic

from stream_app.lab.harness import TopicReader, WorkerProcess, recommendations
from stream_app.lab.verify import read_topic
from stream_app.settings import Settings
from stream_app.worker.topics import admin_client, changelog_topic, wanted_topics
from tests.integration.helpers import assert_same_states, click, final_states, reference_states, scenario, send_all

FAST_COMPACTION = {"segment.ms": "200", "min.cleanable.dirty.ratio": "0.01", "min.compaction.lag.ms": "0",
                   "delete.retention.ms": "100", "segment.bytes": "16384"}


@pytest.fixture()
def compacting(local, base_settings: Settings, small_checkpoint, tmp_path) -> Settings:  # noqa: ANN001
    if local.kind != "kafka":
        pytest.skip("compaction is tested on Apache Kafka (the embedded broker does not compact)")
    import uuid

    tag = uuid.uuid4().hex[:8]
    s = base_settings.model_copy(update={
        "topics": base_settings.topics.model_copy(update={
            "clicks": f"clicks-{tag}", "recommendations": f"recs-{tag}", "dead_letter": f"dlq-{tag}", "partitions": 2}),
        "model": base_settings.model.model_copy(update={"path": small_checkpoint}),
        "worker": base_settings.worker.model_copy(update={"app_id": f"compact-{tag}", "data_dir": tmp_path / "data",
                                                          "loglevel": "INFO"}),
    })
    admin = admin_client(s)
    try:
        admin.create_topics([NewTopic(name, 2, 1, topic_configs={**cfg, **FAST_COMPACTION})
                             for name, cfg in wanted_topics(s).items() if cfg.get("cleanup.policy") == "compact"])
    finally:
        admin.close()
    return s


def _phase(settings: Settings, messages: list) -> list:
    """Run a worker until every click of ``messages`` has its list (compaction may have removed older ones)."""
    worker = WorkerProcess(settings).start()
    try:
        worker.wait_ready()
        ordered = send_all(settings, messages)
        positions = set(ordered)
        reader = TopicReader(settings, settings.topics.recommendations)
        seen: set = set()
        deadline = time.monotonic() + 120  # a hang guard only
        while not positions <= seen and time.monotonic() < deadline:
            seen |= {(r.source.partition, r.source.offset) for r in recommendations(reader.poll())}
        reader.close()
        assert positions <= seen
    finally:
        worker.stop()
    return ordered


def _per_key(settings: Settings, topic: str) -> Counter:
    return Counter(r.key for r in read_topic(settings, topic))


def _wait_compacted(settings: Settings, topic: str, keys: set[bytes], timeout_s: float = 90.0) -> Counter:
    """Until each of ``keys`` has one record left in ``topic``; a record of another key rolls the segment."""
    deadline = time.monotonic() + timeout_s
    counts = _per_key(settings, topic)
    while time.monotonic() < deadline:
        if all(counts[k] == 1 for k in keys):
            return counts
        time.sleep(1.0)
        counts = _per_key(settings, topic)
    return counts


def test_compaction_keeps_the_newest_and_a_rebuild_continues_exactly(compacting: Settings) -> None:
    s = compacting
    clicks = scenario(n_users=10, clicks_per_user=8, seed=5)
    first, second = clicks[:60], clicks[60:]
    users = {key for key, _ in clicks}
    positions = _phase(s, first)
    assert max(_per_key(s, s.topics.recommendations).values()) > 1  # several lists per user before cleaning

    # Clicks of users outside the scenario, after segment.ms, on every partition: the segments
    # holding the scenario's records are closed now, and the cleaner (every 1 s here) compacts them.
    time.sleep(0.5)
    roller = [click(f"roller-{i}", "i1", 1_700_000_000.0) for i in range(8)]
    positions_roller = _phase(s, roller)
    assert {part for part, _ in positions_roller} == {0, 1}, "a roller click on each partition"
    lists = _wait_compacted(s, s.topics.recommendations, users)
    assert all(lists[u] == 1 for u in users), f"lists per user after compaction: {dict(lists)}"
    newest = {r.user_id: r for r in recommendations(read_topic(s, s.topics.recommendations))}
    last_click = {}
    for (key, _), pos in zip(first, positions):
        last_click[key.decode()] = max(last_click.get(key.decode(), pos), pos)
    assert {u: (r.source.partition, r.source.offset) for u, r in newest.items()
            if not u.startswith("roller")} == last_click

    states = _wait_compacted(s, changelog_topic(s), users)
    assert all(states[u] == 1 for u in users), f"states per user after compaction: {dict(states)}"

    shutil.rmtree(s.worker.data_dir)  # the rebuild reads only what compaction left
    positions += positions_roller + _phase(s, second)
    assert_same_states(final_states(s), reference_states(s, first + roller + second, positions))
