"""Adaptive micro-batches: Faust's ``Stream.take_events``, flushed early when clicks stop arriving.

``take_events(max_, within)`` waits until ``max_`` events are buffered or
``within`` has passed since the previous batch. A fixed ``within`` trades one
thing for another: small enough for a low latency at low load, it caps the
batch size at saturation (Faust's passive drainer fills the buffer one event at
a time, about 25 events per 5 ms here, and the timer restarts after every
batch); large enough for efficient batches, it makes every click wait for it
at low load.

Here a batch is also flushed once no event was added for ``quiet`` seconds
(2 ms): at saturation events keep coming and batches fill up to ``max_`` (or
``within`` after the first event), at low load a click waits at most
``quiet`` for company. The strict ``max_`` and the hand-over between the
drainer and the consumer are Faust's code, unchanged (faust-streaming 0.15.3,
``faust/streams.py``).

Acking is not done here: the caller acks a batch's events with
``DeliveryAcks`` once every record the batch produced (state changelog, list,
dead letter) is delivered, so no offset is committed ahead of its effects.
"""

from __future__ import annotations

import asyncio
from asyncio import CancelledError
import logging
from collections import deque
from typing import Any, AsyncIterator, Awaitable, Iterable

from mode.utils.futures import notify


log = logging.getLogger("streamrec.batching")


QUIET_S = 0.002


def keep_queue_on_resume(app: Any, stream: Any) -> bool:
    """Stop Faust from emptying the stream's input queue when flow control resumes.

    ``FlowControlEvent.resume()`` clears every queue created with
    ``clear_on_resume=True``. Recovery resumes the click partitions, awaits
    ``perform_seek()`` and only then resumes flow control: clicks fetched in
    between are already in this queue, and their offsets already count as read,
    so clearing it drops them for good; the offsets after them are acked and
    committed past the hole (faust-streaming issue #596). Measured here: 1 to 12
    clicks lost in 7 of 25 runs of the full-rebuild chaos fault, 0 of 33 with
    this exemption (docs/reliability.md).

    Without the clearing nothing is dropped. What the clearing was for is
    covered anyway: after a rebalance the stream skips events of an older
    consumer generation, and ``perform_seek`` moves the read offsets back to
    the committed ones, so the skipped clicks are fetched again.
    Returns whether the queue was managed (False on a Faust without it).
    """
    queues = getattr(getattr(app, "flow_control", None), "_queues", None)
    queue = getattr(stream.channel, "queue", None)
    if queues is None or queue is None or queue not in queues:
        return False
    queues.discard(queue)
    return True


async def take_available(stream: Any, max_: int, within: float, quiet: float = QUIET_S) -> AsyncIterator[list[Any]]:
    """Lists of at most ``max_`` events: when full, ``quiet`` s after the last event, or ``within`` s after the first."""
    events: list[Any] = []
    buffer_full = asyncio.Event()
    buffer_started = asyncio.Event()
    buffer_consumed = asyncio.Event()
    buffer_consuming: asyncio.Future | None = None
    loop = stream.loop
    first_add = last_add = 0.0
    channel_it = stream.channel.__aiter__()

    async def add_to_buffer(value: Any) -> Any:
        nonlocal buffer_consuming, first_add, last_add
        try:
            if buffer_consuming is not None:
                try:
                    await buffer_consuming
                finally:
                    buffer_consuming = None
            event = stream.current_event
            if event is None:
                raise RuntimeError("Take buffer found current_event is None")
            events.append(event)
            last_add = loop.time()
            if len(events) == 1:
                first_add = last_add
                buffer_started.set()
            if len(events) >= max_:
                buffer_full.set()
                buffer_consumed.clear()
                await stream.wait(buffer_consumed)  # strict: never more than max_ per batch
        except CancelledError:  # pragma: no cover
            raise
        except Exception as exc:  # noqa: BLE001 - as Faust: log and crash the stream
            stream.log.exception("Error adding to take buffer: %r", exc)
            await stream.crash(exc)
        return value

    stream.enable_acks = False  # the caller acks, once the batch's records are delivered (DeliveryAcks)
    stream.add_processor(add_to_buffer)
    stream._enable_passive(channel_it)
    while not stream.should_stop:
        if not events:
            await stream.wait_for_stopped(buffer_started)
        while events and not buffer_full.is_set() and not stream.should_stop:
            now = loop.time()
            left = min(quiet - (now - last_add), within - (now - first_add))
            if left <= 0:
                break
            await stream.wait_for_stopped(buffer_full, timeout=left)
        if events:
            buffer_consuming = loop.create_future()
            try:
                yield list(events)
            finally:
                events.clear()
                notify(buffer_consuming)
                buffer_full.clear()
                buffer_started.clear()
                buffer_consumed.set()


class DeliveryAcks:
    """Acks each batch's events once every record the batch produced is delivered, in batch order.

    Faust commits the highest offset below which every message was acked, and
    commits flush its producer buffer only briefly (see
    ``stream_app.worker.app.DeliveryTrackedTable``). Acking a click only after its state
    change and its list reached the broker means a committed offset never runs
    ahead of its effects: after a crash, a click either left everything behind
    or is consumed again (and the replay guard keeps its state from advancing
    twice).

    Pipelined: the next batch is processed while this one's records are in
    flight; when more than ``max_pending`` batches wait, ``submit`` waits for the
    oldest (backpressure). Acks stay in order, because Faust's
    ``Consumer._new_offset`` commits the first run of consecutive acked
    offsets and only refuses when that run starts more than one past the
    committed offset: a later batch acked before an earlier one would stall the
    commits, or skip the earlier batch when it holds a single click of that
    partition. For the same reason a failed delivery, or one not acknowledged
    within ``timeout_s``, stops all further acks:
    ``failure`` is set (the health page then fails, so the pod is restarted and
    the unacked clicks are consumed again), and nothing after it is committed.
    """

    def __init__(self, stream: Any, max_pending: int = 8, timeout_s: float | None = None) -> None:
        self.stream = stream
        self.max_pending = max_pending
        self.timeout_s = timeout_s
        self.pending: deque[asyncio.Task] = deque()
        self.failure: BaseException | None = None

    async def submit(self, events: Iterable[Any], delivered: Iterable[Awaitable[Any]]) -> None:
        previous = self.pending[-1] if self.pending else None
        task = asyncio.ensure_future(self._ack_when_delivered(list(events), list(delivered), previous))
        self.pending.append(task)
        while self.pending and self.pending[0].done():
            self.pending.popleft()
        if len(self.pending) > self.max_pending:
            await asyncio.wait([self.pending[0]])

    async def _ack_when_delivered(self, events: list[Any], delivered: list[Awaitable[Any]],
                                  previous: asyncio.Task | None) -> None:
        # asyncio.wait, not gather: a cancelled waiter must not cancel the producer's futures
        futures = [asyncio.ensure_future(d) for d in delivered]
        late: set[Any] = set()
        if futures:
            _, late = await asyncio.wait(futures, timeout=self.timeout_s)
        if late and self.failure is None:
            # a broker that takes a write and never answers would otherwise stall the
            # worker (backpressure) behind a green health check
            self.failure = TimeoutError(f"{len(late)} of {len(futures)} records of a batch not acknowledged "
                                        f"by the broker within {self.timeout_s:g} s")
            log.error("%s: no further offsets are committed and the health check fails", self.failure)
        if previous is not None:
            await asyncio.wait([previous])
        if self.failure is None:
            for fut in futures:
                result = fut.exception() if not fut.cancelled() else asyncio.CancelledError("send cancelled")
                if result is not None:
                    self.failure = result
                    log.error("a record of a batch of %d clicks was not delivered (%r): no further offsets "
                              "are committed and the health check fails; a restart consumes them again",
                              len(events), result)
                    break
        if self.failure is not None:
            return
        for event in events:
            await self.stream.ack(event)

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait for the batches in flight to be delivered and acked; False if ``timeout`` passed first."""
        tasks = [t for t in self.pending if not t.done()]
        if not tasks:
            return True
        _, not_done = await asyncio.wait(tasks, timeout=timeout)
        return not not_done
