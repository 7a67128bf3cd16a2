"""Integration tier: every test on both brokers, over TCP: the embedded Tansu broker, then Apache Kafka.

One broker of each kind per session (the tests run grouped by broker, so only one
is up at a time), fresh topics, group and data dir per test. With
STREAMREC_KAFKA__BOOTSTRAP_SERVERS set, the tests run once, on that cluster.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from stream_app.brokers import KINDS, start_broker
from stream_app.brokers.embedded import EmbeddedBroker
from stream_app.settings import Settings
from stream_app.worker.topics import ensure_topics
from tests.support import skip_unless_broker

pytestmark = pytest.mark.integration


@dataclass
class LocalBroker:
    kind: str  # "embedded", "kafka", or "configured" (STREAMREC_KAFKA__BOOTSTRAP_SERVERS)
    process: Any  # EmbeddedBroker | KafkaCluster | None
    settings: Settings


@pytest.fixture(scope="session", params=KINDS)
def local(request: pytest.FixtureRequest) -> Iterator[LocalBroker]:
    """A local broker of each kind in turn, unless STREAMREC_KAFKA__BOOTSTRAP_SERVERS names a cluster."""
    configured = Settings()
    if not configured.kafka.needs_embedded:
        if request.param != "kafka":
            pytest.skip("a cluster is configured: the tests run once, on it")
        yield LocalBroker("configured", None, configured)
        return
    skip_unless_broker(request.param)
    process, settings = start_broker(configured, request.param)
    try:
        yield LocalBroker(request.param, process, settings)
    finally:
        process.stop()


@pytest.fixture(scope="session")
def broker(local: LocalBroker) -> EmbeddedBroker | None:
    """The embedded broker when it is the one under test, else None (for tests of its quirks)."""
    return local.process if local.kind == "embedded" else None


@pytest.fixture(scope="session")
def base_settings(local: LocalBroker) -> Settings:
    return local.settings


@pytest.fixture()
def settings(base_settings: Settings, small_checkpoint: Path, tmp_path: Path) -> Settings:
    """Settings for one test: its own topics, group and data dir on the shared broker."""
    tag = uuid.uuid4().hex[:8]
    base = base_settings
    s = base.model_copy(update={
        "topics": base.topics.model_copy(update={
            "clicks": f"clicks-{tag}", "recommendations": f"recs-{tag}", "dead_letter": f"dlq-{tag}",
            "items": f"items-{tag}", "items_dead_letter": f"items-dlq-{tag}", "partitions": 4,
            "users": f"users-{tag}", "users_dead_letter": f"users-dlq-{tag}", "user_vectors": f"uv-{tag}", "segments": f"seg-{tag}",
        }),
        "model": base.model.model_copy(update={"path": small_checkpoint}),
        "worker": base.worker.model_copy(update={"app_id": f"streamrec-{tag}", "data_dir": tmp_path / "data",
                                                 "loglevel": "INFO"}),
    })
    ensure_topics(s)
    return s
