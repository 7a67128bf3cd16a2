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
``quiet`` for company. Acking, the strict ``max_`` and the hand-over between
the drainer and the consumer are Faust's code, unchanged (faust-streaming
0.15.3, ``faust/streams.py``).
"""

from __future__ import annotations

import asyncio
from asyncio import CancelledError
from typing import Any, AsyncIterator

from mode.utils.futures import notify


QUIET_S = 0.002


async def take_available(stream: Any, max_: int, within: float, quiet: float = QUIET_S) -> AsyncIterator[list[Any]]:
    """Lists of at most ``max_`` events: when full, ``quiet`` s after the last event, or ``within`` s after the first."""
    buffer: list[Any] = []
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
            buffer.append(value)
            event = stream.current_event
            if event is None:
                raise RuntimeError("Take buffer found current_event is None")
            events.append(event)
            last_add = loop.time()
            if len(buffer) == 1:
                first_add = last_add
                buffer_started.set()
            if len(buffer) >= max_:
                buffer_full.set()
                buffer_consumed.clear()
                await stream.wait(buffer_consumed)  # strict: never more than max_ per batch
        except CancelledError:  # pragma: no cover
            raise
        except Exception as exc:  # noqa: BLE001 - as Faust: log and crash the stream
            stream.log.exception("Error adding to take buffer: %r", exc)
            await stream.crash(exc)
        return value

    stream.enable_acks = False  # events are acked below, after the batch was handled
    stream.add_processor(add_to_buffer)
    stream._enable_passive(channel_it)
    while not stream.should_stop:
        if not buffer:
            await stream.wait_for_stopped(buffer_started)
        while buffer and not buffer_full.is_set() and not stream.should_stop:
            now = loop.time()
            left = min(quiet - (now - last_add), within - (now - first_add))
            if left <= 0:
                break
            await stream.wait_for_stopped(buffer_full, timeout=left)
        if buffer:
            buffer_consuming = loop.create_future()
            try:
                yield list(events)
            finally:
                buffer.clear()
                for event in events:
                    await stream.ack(event)
                events.clear()
                notify(buffer_consuming)
                buffer_full.clear()
                buffer_started.clear()
                buffer_consumed.set()
