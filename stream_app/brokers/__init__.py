"""Starting and stopping brokers: the embedded Tansu broker (``embedded``) and Apache Kafka (``kafka``).

:func:`local_broker` is what commands and tests use: it starts the broker that
``STREAMREC_BROKER__KIND`` (or ``kind``) names when no bootstrap servers are
configured, and hands back settings that point at it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from stream_app.settings import Settings

KINDS = ("embedded", "kafka")


def start_broker(settings: Settings, kind: str | None = None, nodes: int | None = None,
                 config: dict[str, str] | None = None) -> tuple[Any, Settings]:
    """Start a local broker of ``kind``; returns it (call ``.stop()``) and settings pointing at it."""
    kind = kind or settings.broker.kind
    if kind == "embedded":
        from stream_app.brokers.embedded import EmbeddedBroker

        broker = EmbeddedBroker().start()
        return broker, settings.with_embedded_broker(broker.bootstrap_servers)
    from stream_app.brokers.kafka import KafkaCluster

    b = settings.broker
    cluster = KafkaCluster(nodes=nodes or b.kafka_nodes, version=b.kafka_version, heap_mb=b.kafka_heap_mb,
                           cache=b.kafka_cache_dir, config=config).start()
    return cluster, settings.with_brokers(cluster.bootstrap_servers)


@contextmanager
def local_broker(settings: Settings, kind: str | None = None, nodes: int | None = None,
                 config: dict[str, str] | None = None) -> Iterator[tuple[Any, Settings]]:
    """(broker, settings): the configured cluster as is (broker None), else a local broker for the block."""
    if not settings.kafka.needs_embedded:
        yield None, settings
        return
    broker, configured = start_broker(settings, kind, nodes, config)
    try:
        yield broker, configured
    finally:
        broker.stop()
