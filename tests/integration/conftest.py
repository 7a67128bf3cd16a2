"""Integration tier: one real embedded broker (Tansu over TCP) per session, fresh topics per test."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Iterator

import pytest

from stream_app.broker import EmbeddedBroker
from stream_app.settings import Settings
from stream_app.topics import ensure_topics

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker | None]:
    """The embedded broker, unless STREAMREC_KAFKA__BOOTSTRAP_SERVERS points the tests at a real cluster."""
    if not Settings().kafka.needs_embedded:
        yield None
        return
    with EmbeddedBroker() as b:
        yield b


@pytest.fixture(scope="session")
def base_settings(broker: EmbeddedBroker | None) -> Settings:
    configured = Settings()
    return configured if broker is None else configured.with_embedded_broker(broker.bootstrap_servers)


@pytest.fixture()
def settings(base_settings: Settings, small_checkpoint: Path, tmp_path: Path) -> Settings:
    """Settings for one test: its own topics, group and data dir on the shared broker."""
    tag = uuid.uuid4().hex[:8]
    base = base_settings
    s = base.model_copy(update={
        "topics": base.topics.model_copy(update={
            "clicks": f"clicks-{tag}", "recommendations": f"recs-{tag}", "dead_letter": f"dlq-{tag}",
            "partitions": 4,
        }),
        "model": base.model.model_copy(update={"path": small_checkpoint}),
        "worker": base.worker.model_copy(update={"app_id": f"streamrec-{tag}", "data_dir": tmp_path / "data",
                                                 "loglevel": "INFO"}),
    })
    ensure_topics(s)
    return s
