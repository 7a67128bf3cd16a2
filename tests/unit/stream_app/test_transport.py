"""The worker's consumer: what Faust may count as done (stream_app/worker/transport.py), on real Faust objects."""

from __future__ import annotations

import asyncio
from typing import Any

import faust
from faust.transport.drivers.aiokafka import Consumer as FaustConsumer
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from stream_app.worker.transport import StreamrecConsumer, install

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


# --- the adaptive Fetch wait (embedded broker) ---------------------------------------------

from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402

from stream_app.worker.transport import FetchWait, starved  # noqa: E402


def fetch(offsets: dict[int, int]) -> Any:
    return SimpleNamespace(topics=[(TOPIC, [(p, off, 1 << 20) for p, off in offsets.items()])])


def answer(parts: dict[int, tuple[int, bytes | None]], error: int = 0) -> Any:
    """``{partition: (high_watermark, records)}`` as aiokafka's Fetch v11 response rows."""
    return SimpleNamespace(topics=[(TOPIC, [(p, error, hw, hw, 0, [], -1, recs) for p, (hw, recs) in parts.items()])])


def test_a_fetch_answered_without_the_records_the_broker_had_is_starved() -> None:
    assert starved(fetch({0: 100, 1: 50}), answer({0: (200, None), 1: (50, None)}))
    assert starved(fetch({0: 100}), answer({0: (200, b"")}))


def test_caught_up_partial_or_failed_answers_are_not_starved() -> None:
    assert not starved(fetch({0: 200}), answer({0: (200, None)}))  # nothing to give
    assert not starved(fetch({0: 100, 1: 10}), answer({0: (200, b"records"), 1: (90, None)}))  # byte budget
    assert not starved(fetch({0: 100}), answer({0: (200, None)}, error=6))  # an error is aiokafka's to handle


def test_the_wait_doubles_on_each_starved_answer_up_to_the_ceiling() -> None:
    wait = FetchWait(10, ceiling_ms=100, relax_after=3)
    assert [wait.observe(True) for _ in range(5)] == [20, 40, 80, 100, 100]
    assert wait.highest_ms == 100


def test_the_wait_relaxes_by_half_after_a_run_of_good_answers_never_below_the_floor() -> None:
    wait = FetchWait(10, ceiling_ms=100, relax_after=3)
    wait.observe(True), wait.observe(True)  # 40
    assert [wait.observe(False) for _ in range(3)] == [40, 40, 20]
    wait.observe(False), wait.observe(True)  # a starved answer resets the run
    assert [wait.observe(False) for _ in range(3)] == [40, 40, 20]
    assert [wait.observe(False) for _ in range(9)][-1] == 10


def test_fetch_wait_bounds_are_checked() -> None:
    with pytest.raises(ValueError):
        FetchWait(0)
    with pytest.raises(ValueError):
        FetchWait(50, ceiling_ms=10)


def test_a_fetch_is_behind_when_a_partition_starts_below_its_known_high_watermark() -> None:
    from stream_app.worker.transport import behind, highwaters_of

    known = highwaters_of(answer({0: (200, None), 1: (50, b"r")}))
    assert known == {(TOPIC, 0): 200, (TOPIC, 1): 50}
    assert behind(fetch({0: 100, 1: 50}), known)
    assert not behind(fetch({0: 200, 1: 50}), known)
    assert behind(fetch({2: 0}), known)  # never seen: assume records are waiting
    assert highwaters_of(answer({0: (200, None)}, error=6)) == {}


def test_a_real_cluster_gets_a_short_fixed_fetch_wait_and_the_embedded_broker_the_adaptive_one(tmp_path: Any) -> None:
    """Faust's hard-coded 1,500 ms Fetch wait held every click partition behind a Fetch of the
    never-written leader topic (docs/performance.md); on Kafka the thread sets a fixed short wait."""
    from stream_app.settings import Settings
    from stream_app.worker.app import build

    def thread_of(settings: Settings) -> Any:
        async def make() -> Any:
            return build(settings).app.consumer._new_consumer_thread()

        return asyncio.run(make())

    base = Settings()
    base = base.model_copy(update={"worker": base.worker.model_copy(update={"data_dir": tmp_path})})
    real = thread_of(base.with_brokers("127.0.0.1:1"))
    assert (real.fixed_fetch_max_wait_ms, real.fetch_max_wait_ms) == (100, 0)
    embedded = thread_of(base.with_embedded_broker("127.0.0.1:1"))
    assert (embedded.fixed_fetch_max_wait_ms, embedded.fetch_max_wait_ms) == (0, 10)
