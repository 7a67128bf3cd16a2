"""The embedded broker's empty Fetch answers, and the adaptive wait that gets past them (real Tansu over TCP).

Tansu 0.6.0 lists every record batch of a partition on each Fetch; once that
takes longer than the request's ``max_wait`` it answers with the right high
watermark and no records. A consumer with a fixed 10 ms wait then never reads
again (the soak stall in docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from stream_app.brokers.embedded import EmbeddedBroker
from stream_app.worker.transport import adapt_fetch_wait

BATCHES = 30_000  # one record each; 12,000-16,000 starved a 10 ms Fetch here, depending on the load


async def fill(servers: str, topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=servers, linger_ms=0, max_batch_size=200)  # one 150 B record per batch
    await producer.start()
    try:
        sent = [await producer.send(topic, b"x" * 150, partition=0) for _ in range(BATCHES)]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def read_tail(servers: str, tp: TopicPartition, hang_guard_s: float = 300.0) -> tuple[int, int]:
    """The last 100 records through a consumer with the adaptive wait; the deadline only guards against a hang."""
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, fetch_max_wait_ms=10, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        wait = adapt_fetch_wait(consumer, 10)
        consumer.seek(tp, BATCHES - 100)
        got = 0
        deadline = asyncio.get_running_loop().time() + hang_guard_s
        while got < 100 and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=2000)
            got += sum(len(v) for v in batch.values())
        return got, wait.wait_ms
    finally:
        await consumer.stop()


def test_a_short_fetch_wait_adapts_to_a_long_partition(broker: EmbeddedBroker | None) -> None:
    """Behaviour, not speed: the tail of a 30,000-batch partition is read whole, and the wait never drops
    below its floor. (How long a fixed 10 ms wait starves, which depends on the machine, is in
    docs/reliability.md; the adaptation rule itself is unit-tested in tests/unit/stream_app/test_transport.py.)"""
    if broker is None:
        pytest.skip("a quirk of the embedded broker; a real cluster is configured")
    topic = f"fetchwait-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    try:
        admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        admin.close()
    tp = TopicPartition(topic, 0)

    async def scenario() -> tuple[int, int]:
        await fill(broker.bootstrap_servers, topic)
        return await read_tail(broker.bootstrap_servers, tp)

    got, wait_ms = asyncio.run(scenario())
    assert got == 100
    assert wait_ms >= 10
