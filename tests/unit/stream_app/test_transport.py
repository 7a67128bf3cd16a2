"""The worker's consumer: what Faust may count as done (stream_app/transport.py), on real Faust objects."""

from __future__ import annotations

import asyncio
from typing import Any

import faust
from faust.transport.drivers.aiokafka import Consumer as FaustConsumer
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from stream_app.transport import StreamrecConsumer, install

TOPIC = "clicks"
PART = TP(TOPIC, 0)


def consumer_and_message() -> tuple[Any, Any]:
    async def build() -> tuple[Any, Any]:
        app = faust.App("test-transport", broker="kafka://127.0.0.1:1", autodiscover=False, web_enabled=False)
        install(app)
        app.topics.add(app.topic(TOPIC, partitions=1))
        await app.topics._update_indices()
        return app, app.consumer

    app, consumer = asyncio.run(build())
    assert isinstance(consumer, StreamrecConsumer)
    assert app.topics.acks_enabled_for(TOPIC)

    def message(offset: int, tracked: bool = True) -> Any:
        m = ConsumerMessage(TOPIC, 0, offset, 0.0, 0, [], b"user", b"{}", None)
        m.tracked = tracked
        return m

    return consumer, message


def test_a_record_the_stream_skipped_without_tracking_is_not_acked() -> None:
    consumer, message = consumer_and_message()
    consumer._committed_offset[PART] = 10
    assert not consumer.ack(message(10, tracked=False)), "a skipped record was acked: the next commit would pass it"
    assert list(consumer._acked[PART]) == []
    assert consumer.ack(message(10))
    assert list(consumer._acked[PART]) == [10]


def test_a_commit_never_skips_the_offset_at_the_committed_position() -> None:
    consumer, message = consumer_and_message()
    consumer._committed_offset[PART] = 10
    for offset in (11, 12):
        consumer.ack(message(offset))
    assert FaustConsumer._new_offset(consumer, PART) == 13, "Faust's own rule (the off-by-one this guards against)"
    for offset in (11, 12):  # Faust's call above consumed them
        consumer._acked_index[PART].discard(offset)
        consumer.ack(message(offset))
    assert consumer._new_offset(PART) is None, "offset 10 was never processed: nothing may be committed"
    consumer.ack(message(10))
    assert consumer._new_offset(PART) == 13
