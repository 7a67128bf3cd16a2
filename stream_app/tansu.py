"""Faust's aiokafka transport with log ends taken from Fetch high watermarks (for the embedded Tansu broker).

Tansu 0.6.0 answers ``ListOffsets(latest)`` with the base offset of the newest
record batch plus one, so every multi-record batch makes the log end look
shorter than it is. Faust's table recovery reads a changelog's end from there
(``AIOKafkaConsumerThread._highwaters`` -> ``AIOKafkaConsumer.end_offsets``):
with batching producers a restart raised ``ConsistencyError`` (persisted offset
> highwater) and a rebuild silently stopped before the newest updates. The
high watermark in a Fetch response is right, so this transport asks for it:
one small Fetch per leader (``max_wait 0``, ``min_bytes 0``, 1 byte per
partition; a broker returns at most one batch) at the offset ListOffsets gave,
which is at or below the true end. The Fetch long poll is shortened too (see
:class:`TansuConsumerThread`). Everything else is Faust's aiokafka driver,
selected only when
``STREAMREC_KAFKA__EMBEDDED=true`` (``stream_app.app.build``), so producers
keep their batching and a real Kafka cluster never sees this code.
"""

from __future__ import annotations

import collections
from typing import Any, Iterable, Mapping

from aiokafka.errors import KafkaTimeoutError, for_code
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.structs import TopicPartition
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Consumer, Transport
from faust.types import TP

READ_UNCOMMITTED = 0
FETCH_WAITS_MS = (10, 100, 500)


async def fetch_highwaters(consumer: Any, partitions: Iterable[TP]) -> dict[TP, int]:
    """Log end offsets of ``partitions`` from Fetch responses; ``consumer`` is a started AIOKafkaConsumer.

    Never below what ListOffsets reports (it under-reports, never over-reports).
    """
    tps = list(partitions)
    if not tps:
        return {}
    listed: Mapping[Any, int] = await consumer.end_offsets(tps)  # also waits for metadata
    client = consumer._client
    by_node: dict[int, dict[str, list[tuple[int, int, int]]]] = collections.defaultdict(
        lambda: collections.defaultdict(list)
    )
    for tp in tps:
        node = client.cluster.leader_for_partition(TopicPartition(tp.topic, tp.partition))
        if node is None or node < 0:
            raise RuntimeError(f"no leader known for {tp.topic}/{tp.partition}")
        by_node[node][tp.topic].append((tp.partition, int(listed.get(tp, 0) or 0), 1))
    out: dict[TP, int] = {tp: int(listed.get(tp, 0) or 0) for tp in tps}
    wanted = {(tp.topic, tp.partition): tp for tp in tps}
    for node, topics in by_node.items():
        missing = {(t, p[0]) for t, parts in topics.items() for p in parts}
        # Tansu answers max_wait=0 with no partitions at all; a short wait with
        # min_bytes=0 gets the high watermark (and at most one batch) at once.
        for wait_ms in FETCH_WAITS_MS:
            request = FetchRequest(wait_ms, 0, 1, READ_UNCOMMITTED, list(topics.items()))
            response = await client.send(node, request)
            for topic, parts in response.topics:
                for partition, error_code, highwater, *_ in parts:
                    tp = wanted.get((topic, partition))
                    if tp is None:
                        continue
                    if error_code != 0 or highwater is None or highwater < 0:
                        error = for_code(error_code)
                        raise error(f"Fetch high watermark of {topic}/{partition} failed: {error.__name__}")
                    out[tp] = max(out[tp], int(highwater))
                    missing.discard((topic, partition))
            if not missing:
                break
        if missing:
            raise KafkaTimeoutError(f"no Fetch high watermark for {sorted(missing)} from node {node}")
    return out


class TansuConsumerThread(AIOKafkaConsumerThread):
    """Consumer thread whose ``highwaters`` (table recovery's changelog ends) come from Fetch.

    Also shortens the Fetch long poll: Tansu holds a Fetch for about half its
    ``max_wait`` even when records arrive meanwhile, and Faust hard-codes 1,500 ms,
    so a caught-up worker saw every new click 0.75 s late (p50 1.3 s at half load).
    """

    fetch_max_wait_ms: int = 10
    highwaters_from_fetch: bool = False

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = self.fetch_max_wait_ms  # read by the Fetcher built in start()
        return consumer

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        if not self.highwaters_from_fetch or self.consumer.in_transaction:
            return await super()._highwaters(partitions)
        return await fetch_highwaters(self._ensure_consumer(), partitions)


class TansuConsumer(Consumer):
    fetch_max_wait_ms: int = TansuConsumerThread.fetch_max_wait_ms
    highwaters_from_fetch: bool = False

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        thread = TansuConsumerThread(self, loop=self.loop, beacon=self.beacon)
        thread.fetch_max_wait_ms = self.fetch_max_wait_ms
        thread.highwaters_from_fetch = self.highwaters_from_fetch
        return thread


class TansuTransport(Transport):
    """Faust's aiokafka transport with :class:`TansuConsumer`; producers are untouched."""

    Consumer = TansuConsumer


def install(app: Any, fetch_max_wait_ms: int = TansuConsumerThread.fetch_max_wait_ms,
            highwaters_from_fetch: bool = False) -> None:
    """Make ``app`` consume through :class:`TansuTransport`; call before the app creates topics.

    ``highwaters_from_fetch`` is off by default: with it on, the chaos suite lost
    lists after a rebalance (5 of 20 runs) and one click after a full rebuild, so
    the embedded broker keeps one record per producer batch instead.
    """
    consumer_cls = type("TansuConsumer", (TansuConsumer,), {"fetch_max_wait_ms": fetch_max_wait_ms,
                                                            "highwaters_from_fetch": highwaters_from_fetch})
    transport_cls = type("TansuTransport", (TansuTransport,), {"Consumer": consumer_cls})
    app.transport = transport_cls(app.conf.broker_consumer, app)
