"""Nothing committed ahead of its effects: DeliveryAcks, the click queue kept across flow-control resume (faust-streaming #596), click partitions resumed only once sought to their committed offsets."""

from __future__ import annotations

import asyncio

from stream_app.worker.batching import DeliveryAcks


class RecordingStream:
    def __init__(self) -> None:
        self.acked: list[str] = []

    async def ack(self, event: str) -> bool:
        self.acked.append(event)
        return True


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(coro)


def test_a_batch_is_acked_only_after_its_records_are_delivered() -> None:
    async def scenario() -> list[str]:
        stream = RecordingStream()
        acks = DeliveryAcks(stream)
        loop = asyncio.get_running_loop()
        record = loop.create_future()
        await acks.submit(["a", "b"], [record])
        await asyncio.sleep(0.01)
        assert stream.acked == [], "acked before its record was delivered"
        record.set_result("metadata")
        assert await acks.drain(timeout=1.0)
        return stream.acked

    assert run(scenario()) == ["a", "b"]


def test_batches_are_acked_in_order_even_when_a_later_one_is_delivered_first() -> None:
    async def scenario() -> list[str]:
        stream = RecordingStream()
        acks = DeliveryAcks(stream)
        loop = asyncio.get_running_loop()
        first, second = loop.create_future(), loop.create_future()
        await acks.submit(["a"], [first])
        await acks.submit(["b"], [second])
        await acks.submit(["c"], [])
        second.set_result(None)
        await asyncio.sleep(0.01)
        assert stream.acked == [], "a later batch was acked before an earlier, undelivered one"
        first.set_result(None)
        assert await acks.drain(timeout=1.0)
        return stream.acked

    assert run(scenario()) == ["a", "b", "c"]


def test_a_failed_delivery_stops_all_further_acks_and_is_reported() -> None:
    async def scenario() -> tuple[list[str], BaseException | None]:
        stream = RecordingStream()
        acks = DeliveryAcks(stream)
        loop = asyncio.get_running_loop()
        ok, failed = loop.create_future(), loop.create_future()
        await acks.submit(["a"], [ok])
        await acks.submit(["b"], [failed])
        await acks.submit(["c"], [])
        ok.set_result(None)
        failed.set_exception(RuntimeError("broker gone"))
        assert await acks.drain(timeout=1.0)
        return stream.acked, acks.failure

    acked, failure = run(scenario())
    assert acked == ["a"]
    assert isinstance(failure, RuntimeError)


def test_backpressure_waits_for_the_oldest_batch_beyond_max_pending() -> None:
    async def scenario() -> bool:
        stream = RecordingStream()
        acks = DeliveryAcks(stream, max_pending=2)
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(3)]
        await acks.submit(["a"], [futures[0]])
        await acks.submit(["b"], [futures[1]])
        third = asyncio.ensure_future(acks.submit(["c"], [futures[2]]))
        await asyncio.sleep(0.01)
        blocked = not third.done()
        futures[0].set_result(None)
        await asyncio.wait_for(third, 1.0)
        for f in futures[1:]:
            f.set_result(None)
        await acks.drain(timeout=1.0)
        return blocked

    assert run(scenario()) is True


def test_a_cancelled_waiter_leaves_the_producer_futures_alone() -> None:
    async def scenario() -> bool:
        stream = RecordingStream()
        acks = DeliveryAcks(stream)
        record = asyncio.get_running_loop().create_future()
        await acks.submit(["a"], [record])
        for task in acks.pending:
            task.cancel()
        await asyncio.sleep(0.01)
        return record.cancelled()

    assert run(scenario()) is False


def test_the_click_queue_survives_flow_control_resume() -> None:
    """faust-streaming #596: FlowControlEvent.resume() empties managed queues, dropping fetched clicks."""
    from types import SimpleNamespace

    from mode.utils.queues import FlowControlEvent, FlowControlQueue

    from stream_app.worker.batching import keep_queue_on_resume

    async def scenario() -> tuple[bool, int, int]:
        flow = FlowControlEvent()
        ours = FlowControlQueue(flow_control=flow, clear_on_resume=True)
        other = FlowControlQueue(flow_control=flow, clear_on_resume=True)
        app = SimpleNamespace(flow_control=flow)
        stream = SimpleNamespace(channel=SimpleNamespace(queue=ours))
        exempted = keep_queue_on_resume(app, stream)
        for q in (ours, other):
            q.put_nowait("click fetched before recovery completed")
        flow.resume()
        return exempted, ours.qsize(), other.qsize()

    exempted, kept, cleared = asyncio.run(scenario())
    assert exempted
    assert kept == 1, "the click queue was emptied by resume()"
    assert cleared == 0, "other managed queues keep Faust's behaviour"


def test_a_record_never_acknowledged_fails_the_batch_after_the_timeout() -> None:
    """A broker that takes a write and never answers must not stall the worker behind a green health check."""

    async def scenario() -> tuple[list[str], BaseException | None]:
        stream = RecordingStream()
        acks = DeliveryAcks(stream, timeout_s=0.05)
        never = asyncio.get_running_loop().create_future()
        await acks.submit(["a"], [never])
        await acks.submit(["b"], [])
        assert await acks.drain(timeout=1.0)
        never.cancel()
        return stream.acked, acks.failure

    acked, failure = run(scenario())
    assert acked == [], "a batch was acked although one of its records was never acknowledged"
    assert isinstance(failure, TimeoutError)


def test_a_batch_stuck_beyond_the_delivery_timeout_is_reported_once() -> None:
    """The worker's health check fails when a batch neither finishes nor fails (a producer waiting forever)."""
    import logging
    import time
    from types import SimpleNamespace

    from stream_app.worker.agents import Shell
    from stream_app.settings import Settings

    settings = Settings()
    shell = SimpleNamespace(batch_since=None, s=settings, _stall_logged=False)
    assert Shell.check_stalled(shell) is None, "no batch in progress"
    shell.batch_since = time.monotonic()
    assert Shell.check_stalled(shell) is None, "a batch just started is not stuck"
    shell.batch_since = time.monotonic() - settings.worker.delivery_timeout_s - 1
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("streamrec.agents").addHandler(handler)
    try:
        assert Shell.check_stalled(shell) > settings.worker.delivery_timeout_s
        assert Shell.check_stalled(shell) is not None
    finally:
        logging.getLogger("streamrec.agents").removeHandler(handler)
    assert [r.levelno for r in records] == [logging.ERROR], "the stall is logged once, as an error"


# -- stream partitions stay paused until sought to their committed offsets ---------------------------------

def _consumer():  # noqa: ANN202
    """A StreamrecConsumer with only what resume_partitions, perform_seek and on_partitions_assigned touch."""
    from types import SimpleNamespace

    from stream_app.worker.transport import StreamrecConsumer

    consumer = StreamrecConsumer.__new__(StreamrecConsumer)
    consumer._held = set()
    consumer._active_partitions = set()
    consumer._paused_partitions = set()
    consumer.in_transaction = False
    consumer.app = SimpleNamespace(topics=SimpleNamespace(acking_topics={"clicks"}))
    return consumer


def _faust_plays(method: str, fake):  # noqa: ANN001, ANN202
    """Patch Faust's own ``Consumer.<method>``, which the StreamrecConsumer override calls."""
    from unittest import mock

    from faust.transport.consumer import Consumer as FaustConsumer

    return mock.patch.object(FaustConsumer, method, fake)


def test_resumed_click_partitions_wait_for_the_seek_to_committed() -> None:
    from faust.types import TP

    clicks, changelog = TP("clicks", 0), TP("app-user_state-changelog", 0)
    seen_during_seek: list[set] = []

    async def seek(self) -> None:  # noqa: ANN001
        seen_during_seek.append(set(self._active_partitions))

    consumer = _consumer()
    with _faust_plays("perform_seek", seek):
        consumer.resume_partitions({clicks, changelog})
        assert consumer._active_partitions == {changelog}, "a click partition was fetched before the seek"
        run(consumer.perform_seek())
    assert seen_during_seek == [{changelog}]
    assert consumer._active_partitions == {clicks, changelog}


def test_a_failed_seek_still_resumes_the_click_partitions() -> None:
    from faust.types import TP

    async def seek(self) -> None:  # noqa: ANN001
        raise TimeoutError("broker gone")

    consumer = _consumer()
    with _faust_plays("perform_seek", seek):
        consumer.resume_partitions([TP("clicks", 1)])
        try:
            run(consumer.perform_seek())
        except TimeoutError:
            pass
    assert consumer._active_partitions == {TP("clicks", 1)}, "left paused: the partition would stall silently"


def test_assigned_click_partitions_start_paused() -> None:
    from faust.types import TP

    clicks, changelog = TP("clicks", 0), TP("app-user_state-changelog", 0)
    active_after_assignment: list[set] = []

    async def assigned(self, tps, generation_id=0) -> None:  # noqa: ANN001
        self._paused_partitions.intersection_update(tps)  # what Faust's does first
        self._set_active_tps(tps)
        active_after_assignment.append(set(self._active_partitions))

    consumer = _consumer()
    with _faust_plays("on_partitions_assigned", assigned):
        run(consumer.on_partitions_assigned({clicks, changelog}))
    assert active_after_assignment == [{changelog}]
