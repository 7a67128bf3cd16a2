"""The worker's Faust consumer transport: Faust's aiokafka driver with two changes.

1. **Partitions without a committed offset are rewound too** (every broker).
   Faust throws away records it fetched around a rebalance (the consumer's
   ``getmany`` stops at a generation change or a flow stop, the drain loop
   abandons a record when the flow is suspended, ...) and relies on
   ``perform_seek`` -> ``seek_to_committed`` to fetch them again. aiokafka's
   ``seek_to_committed`` only moves partitions that have a committed offset
   greater than 0: a partition whose previous owner died before its first commit
   stays wherever the dropped fetch left it, and the clicks in between are never
   processed (seen in the chaos suite's rebalance fault: a worker killed 1 s
   after it started, its partitions taken over, 100-200 lists missing). Here
   such partitions of acked (stream) topics go back to the log start, as
   ``auto_offset_reset=earliest`` would have put them; the replay guard keeps the
   state from advancing twice for clicks that were already processed.
2. **Embedded Tansu broker only** (``STREAMREC_KAFKA__EMBEDDED=true``):

   - a short Fetch long poll: Tansu holds a Fetch for about half its
     ``max_wait`` even when records arrive meanwhile, and Faust hard-codes
     1,500 ms, so a caught-up worker saw every new click 0.75 s late. The wait
     adapts (:class:`FetchWait`): Tansu 0.6.0 lists every record batch of a
     partition on each Fetch, and when that takes longer than ``max_wait`` it
     answers with the right high watermark and **no records**. With a fixed
     10 ms wait a worker stopped reading for good once a partition held about
     12,000 batches (the soak stall in docs/reliability.md); now a Fetch that comes back empty
     although records were there doubles the wait for Fetches with records
     waiting, and a long run of good ones halves it again. A Fetch of
     caught-up partitions keeps the short wait, so latency stays low;
   - changelog ends (table recovery's highwaters) from Fetch high watermarks,
     because Tansu 0.6.0 answers ``ListOffsets(latest)`` with the base offset of
     the newest record batch plus one: with batching producers a restart raised
     ``ConsistencyError`` and a rebuild stopped before the newest updates. One
     small Fetch per leader (``min_bytes 0``, 1 byte per partition; a broker
     returns at most one batch) at the offset ListOffsets gave, which is at or
     below the true end, and the high watermark from its answer.

3. **A real cluster**: a fixed Fetch wait (``kafka.fetch_max_wait_ms``, 100 ms)
   instead of Faust's hard-coded 1,500 ms. aiokafka sends one Fetch per broker
   at a time and leaves out every partition whose fetched records were not
   taken yet (after its 100 ms prefetch backoff it no longer waits for them).
   When a batch of clicks kept the worker busy longer than that, the next Fetch
   asked only for partitions that had nothing to give (Faust's
   ``<app>-__assignor-__leader`` topic never has a record), the broker held it
   for the whole wait, and the click partitions, free again meanwhile, were not
   fetched until it came back: 1.5 s of clicks per Fetch, which then kept the
   worker busy long enough for the next Fetch to do the same. The soak at
   940 clicks/s saw every click ~1.3 s late with the worker half idle
   (docs/performance.md). With 100 ms that hold is at most 100 ms.

4. **Exactly-once** (``worker.processing_guarantee``, Kafka only): changelog ends
   from ``ListOffsets`` with ``read_committed`` (Faust reads a last stable
   offset that is None before the first Fetch, and recovery then skipped the
   changelog), the log ends each fetch reached (for
   :class:`stream_app.worker.transactions.EosRecovery`), commits that wait for
   the batch in progress (``commit_gate``), a commit of every processed click
   when partitions are revoked (``commit_before_rebalance``), and Faust's
   transaction manager replaced by
   :class:`stream_app.worker.transactions.StreamrecTransactionManager`.

The producers themselves are Faust's.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any, Iterable, Mapping

from aiokafka.errors import KafkaTimeoutError, for_code
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.structs import TopicPartition
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Consumer, Transport
from faust.types import TP

from stream_app.worker.transactions import LogEnds, StreamrecTransactionManager

log = logging.getLogger("streamrec.transport")

READ_UNCOMMITTED = 0
FETCH_WAITS_MS = (10, 100, 500)
FETCH_WAIT_CEILING_MS = 10_000  # well inside aiokafka's 40 s request timeout
FETCH_WAIT_RELAX_AFTER = 200  # good Fetch responses before the wait is halved again


class FetchWait:
    """The consumer's Fetch ``max_wait``, raised when the broker runs out of time.

    Pure state: :meth:`observe` takes whether a Fetch response was *starved*
    (see :func:`starved`) and returns the wait for the next request. A starved
    response doubles the wait, up to ``ceiling_ms``; ``relax_after`` responses
    in a row that were not starved halve it, down to ``floor_ms``.
    """

    def __init__(self, floor_ms: int, ceiling_ms: int = FETCH_WAIT_CEILING_MS,
                 relax_after: int = FETCH_WAIT_RELAX_AFTER) -> None:
        if floor_ms <= 0 or ceiling_ms < floor_ms or relax_after < 1:
            raise ValueError(f"bad Fetch wait bounds: {floor_ms}, {ceiling_ms}, {relax_after}")
        self.floor_ms, self.ceiling_ms, self.relax_after = floor_ms, ceiling_ms, relax_after
        self.wait_ms = floor_ms
        self.highest_ms = floor_ms
        self._calm = 0

    def observe(self, was_starved: bool) -> int:
        if was_starved:
            self._calm = 0
            self.wait_ms = min(self.ceiling_ms, self.wait_ms * 2)
            self.highest_ms = max(self.highest_ms, self.wait_ms)
        else:
            self._calm += 1
            if self._calm >= self.relax_after and self.wait_ms > self.floor_ms:
                self.wait_ms = max(self.floor_ms, self.wait_ms // 2)
                self._calm = 0
        return self.wait_ms


def starved(request: Any, response: Any) -> bool:
    """True when a Fetch response carries no record at all although some partition had records to give.

    ``request.topics``: ``(topic, [(partition, fetch_offset, max_bytes), ...])``;
    ``response.topics``: ``(topic, [(partition, error_code, high_watermark, ..., records), ...])``.
    A broker that honours the protocol never does this (it answers as soon as it
    has ``min_bytes``); Tansu 0.6.0 does when listing the partition's batches
    takes longer than ``max_wait``. Only the whole response counts: a partition
    left empty because earlier ones used the response's byte budget is normal.
    """
    offsets = {(topic, part[0]): part[1] for topic, parts in request.topics for part in parts}
    behind = False
    for topic, parts in response.topics:
        for partition, error_code, highwater, *rest in parts:
            if rest and rest[-1]:
                return False
            offset = offsets.get((topic, partition))
            if error_code == 0 and offset is not None and highwater is not None and offset < highwater:
                behind = True
    return behind


def behind(request: Any, highwaters: Mapping[tuple[str, int], int]) -> bool:
    """True when some partition of a Fetch request starts below its last known high watermark (or has none yet)."""
    return any(part[1] < highwaters.get((topic, part[0]), part[1] + 1)
               for topic, parts in request.topics for part in parts)


def highwaters_of(response: Any) -> dict[tuple[str, int], int]:
    """``{(topic, partition): high watermark}`` of a Fetch response's partitions without an error."""
    return {(topic, partition): highwater for topic, parts in response.topics
            for partition, error_code, highwater, *_ in parts if error_code == 0 and highwater is not None}


class _WaitAdjustingClient:
    """The Fetcher's view of the aiokafka client: it picks each Fetch's wait and learns from the answer.

    A Fetch for partitions that are all caught up gets the floor wait: the broker
    has nothing to list, and a short wait means a new click is seen soon. A Fetch
    for a partition with records waiting gets :class:`FetchWait`'s current wait,
    which the broker only uses up when listing its batches takes that long;
    only such Fetches teach it.
    """

    def __init__(self, client: Any, wait: FetchWait) -> None:
        self._client, self._wait = client, wait
        self._highwaters: dict[tuple[str, int], int] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def send(self, node_id: int, request: Any, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(request, FetchRequest):
            return await self._client.send(node_id, request, *args, **kwargs)
        wait = self._wait
        was_behind = behind(request, self._highwaters)
        request._max_wait_ms = wait.wait_ms if was_behind else wait.floor_ms
        response = await self._client.send(node_id, request, *args, **kwargs)
        self._highwaters.update(highwaters_of(response))
        was_starved = starved(request, response)
        if was_behind or was_starved:
            before, highest = wait.wait_ms, wait.highest_ms
            after = wait.observe(was_starved)
            if after > highest and after >= 200:
                log.warning("the embedded broker answered a Fetch without the records it had: Fetch wait "
                            "raised %d -> %d ms (its Fetch cost grows with the number of record batches "
                            "per partition; see docs/reliability.md)", before, after)
        return response


def adapt_fetch_wait(consumer: Any, floor_ms: int) -> FetchWait:
    """Make a *started* ``AIOKafkaConsumer`` adapt its Fetch wait from ``floor_ms`` up (embedded broker)."""
    fetcher = consumer._fetcher
    if fetcher is None:
        raise RuntimeError("start the consumer first")
    wait = FetchWait(floor_ms)
    fetcher._fetch_max_wait_ms = floor_ms  # each request's wait is set in _WaitAdjustingClient.send
    fetcher._client = _WaitAdjustingClient(fetcher._client, wait)
    return wait


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


class StreamrecConsumerThread(AIOKafkaConsumerThread):
    """Consumer thread: uncommitted partitions rewound on ``seek_to_committed``; Tansu options."""

    fetch_max_wait_ms: int = 0  # 0 = Faust's; else the floor of the adaptive wait
    fixed_fetch_max_wait_ms: int = 0  # > 0 (and no adaptive wait): this Fetch wait instead of Faust's 1,500 ms
    highwaters_from_fetch: bool = False

    async def on_start(self) -> None:
        await super().on_start()
        if self.fetch_max_wait_ms > 0:
            adapt_fetch_wait(self._consumer, self.fetch_max_wait_ms)
        elif self.fixed_fetch_max_wait_ms > 0:
            # read by the Fetcher for every request it builds; none is sent before the assignment
            self._consumer._fetcher._fetch_max_wait_ms = self.fixed_fetch_max_wait_ms

    async def seek_to_committed(self) -> Mapping[TP, int]:
        return await self.call_thread(self._seek_to_committed_or_start)

    async def _seek_to_committed_or_start(self) -> Mapping[TP, int]:
        consumer = self._ensure_consumer()
        committed = await consumer.seek_to_committed()
        acking = self.app.topics.acking_topics
        log.info("seek to committed offsets: %s", {f"{tp.topic}/{tp.partition}": offset
                                                     for tp, offset in sorted(committed.items())})
        uncommitted = [tp for tp, offset in committed.items() if not offset and tp.topic in acking]
        if uncommitted:
            log.info("no committed offset for %s: reading them from the start", sorted(map(tuple, uncommitted)))
            await consumer.seek_to_beginning(*uncommitted)
        return committed

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        if self.consumer.in_transaction:
            # Faust reads last_stable_offset(), None before a partition's first Fetch: recovery
            # then took an unread changelog for empty (-1) and skipped it. ListOffsets with
            # read_committed answers the last stable offset.
            return await self._ensure_consumer().end_offsets(partitions)
        if not self.highwaters_from_fetch:
            return await super()._highwaters(partitions)
        return await fetch_highwaters(self._ensure_consumer(), partitions)

    async def _fetch_records(self, consumer: Any, active_partitions: Any, timeout: float | None = None,
                             max_records: int | None = None) -> Any:
        records = await super()._fetch_records(consumer, active_partitions, timeout=timeout, max_records=max_records)
        if self.consumer.in_transaction:
            self.consumer.log_ends.observe(consumer, records, set(self.app.tables.changelog_topics))
        return records


class StreamrecConsumer(Consumer):
    """Faust's aiokafka consumer; commits never run past a click that was not processed, and a
    partition's clicks reach the streams in offset order from its committed offset.

    Two changes to what Faust counts as done: records a stream skipped without
    processing are not acked, and a commit never skips the offset at the
    committed position.

    And one to the order of things after a rebalance or a recovery: Faust
    resumes the stream partitions and only *then* seeks them to their committed
    offsets (``Recovery.on_recovery_completed``, ``_resume_streams``). Records
    fetched in between come from wherever the fetch position was, which can be
    far *ahead* of the committed offset. Seen after a full rebuild from the
    changelog (2 to 3 runs in 100 of the chaos suite's "data dir deleted"): a
    batch of clicks near the log end was processed first, then the seek went
    back and the clicks before them came after them; the replay guard took
    those for redeliveries, so the users' states skipped them (no list was
    lost: a redelivery is answered). Here the stream partitions being resumed
    stay paused until the seek is done.
    """

    fetch_max_wait_ms: int = 0
    fixed_fetch_max_wait_ms: int = 0
    highwaters_from_fetch: bool = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held: set[TP] = set()  # stream partitions to resume once sought to their committed offsets
        # exactly-once (stream_app/worker/transactions.py): held by the agent around a batch and by
        # every commit, so a transaction covers whole batches with their offsets
        self.commit_gate = asyncio.Lock()
        self.revoking = False  # True from the pre-rebalance commit to the next assignment
        self.log_ends = LogEnds()

    async def force_commit(self, topics: Any = None, start_new_transaction: bool = True) -> bool:
        if not self.in_transaction:
            return await super().force_commit(topics, start_new_transaction=start_new_transaction)
        async with self.commit_gate:  # the offsets to commit are read inside, after the batch in progress
            return await super().force_commit(topics, start_new_transaction=start_new_transaction)

    async def wait_empty(self) -> None:
        if self.in_transaction and self.revoking:
            # commit_before_rebalance committed every processed click; the agent drops the rest
            # (fetched again after the rebalance), so Faust would wait for their acks forever
            return
        await super().wait_empty()
        if self.in_transaction:
            # Faust ends it with a commit that is skipped when its commit timer is committing at
            # that moment (maybe_wait_for_commit_to_finish). This one is never skipped.
            await self.force_commit(start_new_transaction=False)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        if self.in_transaction:
            await self.commit_before_rebalance()
        await super().on_partitions_revoked(revoked)

    async def commit_before_rebalance(self) -> None:
        """Exactly-once: commit every processed click now, and process none until the new assignment.

        Faust commits at a revocation only while the consumer still reports an assignment,
        and aiokafka has cleared it by then: processed clicks stayed in open transactions,
        and a partition kept over the rebalance was sought back to its committed offset,
        processed again into the same transaction, and both lists were committed. Here
        the acked offsets are committed with their transactions (the group coordinator
        takes them: the member has not rejoined yet), and :attr:`revoking` makes
        the agent drop batches (unacked: they are fetched again) until the assignment.
        This is the tail of Faust's ``_commit_offsets`` without its assignment filter,
        which would discard every offset at this point.
        """
        async with self.commit_gate:
            self.revoking = True
            offsets = self._filter_committable_offsets(self._filter_tps_with_pending_acks())
            if offsets:
                await self.transactions.commit(offsets, start_new_transaction=True)
                self._committed_offset.update(offsets)
                self.app.tables.on_commit(offsets)
                self.app.monitor.on_tp_commit(offsets)

    def forget(self, events: Iterable[Any]) -> None:
        """Exactly-once: events the agent dropped unprocessed; no stop or revocation waits for their acks."""
        for event in events:
            self._unacked_messages.discard(event.message)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        if self.in_transaction:
            self.log_ends.clear()
            self.revoking = False
        # Faust makes every assigned partition active, then pauses them all a few awaits
        # later (App._on_partitions_assigned); stream partitions are paused from the start
        # here, so no click is fetched for a stream before its table is recovered and the
        # partition sought.
        acking = self.app.topics.acking_topics
        self._paused_partitions.update(tp for tp in assigned if tp.topic in acking)
        await super().on_partitions_assigned(assigned, generation_id)

    def resume_partitions(self, tps: Iterable[TP]) -> None:
        tps = list(tps)
        acking = self.app.topics.acking_topics
        held = {tp for tp in tps if tp.topic in acking}
        self._held |= held
        super().resume_partitions([tp for tp in tps if tp not in held])

    async def perform_seek(self) -> None:
        held = set(self._held)
        try:
            await super().perform_seek()
        finally:  # resumed even if the seek failed: a partition left paused would stall silently
            self._held -= held
            if held:
                super().resume_partitions(held)

    def ack(self, message: Any) -> bool:
        # A stream skips (and acks) a record that reaches it while the flow is
        # stopped or from an older consumer generation (a rebalance), before it
        # tracks it; Faust counts on the seek back to the committed offset to fetch
        # it again, but the ack let the next commit run past it. Such records are
        # never tracked: they are not acked here, so they are fetched again.
        if not message.tracked and self.app.topics.acks_enabled_for(message.topic):
            return False
        return super().ack(message)

    def _new_offset(self, tp: TP) -> int | None:
        # Faust commits the first run of consecutive acked offsets and refuses
        # only when that run starts *more than one* past the committed offset
        # (``min(acked) - committed > 1``): a single missing offset right at the
        # committed position was committed past. The committed offset is the next
        # one to read, so any run starting above it waits. Gaps Faust recorded
        # itself (compacted or transaction-marker offsets) keep Faust's rule.
        acked, committed = self._acked[tp], self._committed_offset[tp]
        if acked and committed and not self._gap[tp] and min(acked) > committed:
            return None
        return super()._new_offset(tp)

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        thread = StreamrecConsumerThread(self, loop=self.loop, beacon=self.beacon)
        thread.fetch_max_wait_ms = self.fetch_max_wait_ms
        thread.fixed_fetch_max_wait_ms = self.fixed_fetch_max_wait_ms
        thread.highwaters_from_fetch = self.highwaters_from_fetch
        return thread


class StreamrecTransport(Transport):
    """Faust's aiokafka transport with :class:`StreamrecConsumer` (and, under exactly-once, the producers of
    the active partitions only); producers are otherwise untouched."""

    Consumer = StreamrecConsumer
    TransactionManager = StreamrecTransactionManager


def install(app: Any, fetch_max_wait_ms: int = 0, highwaters_from_fetch: bool = False,
            fixed_fetch_max_wait_ms: int = 0) -> None:
    """Make ``app`` consume through :class:`StreamrecTransport`; call before the app creates topics.

    ``fetch_max_wait_ms`` (the floor of the adaptive wait; 0 = none) and
    ``highwaters_from_fetch`` are for the embedded Tansu broker only;
    ``fixed_fetch_max_wait_ms`` (0 = Faust's 1,500 ms) is the Fetch wait on a
    real cluster, used when there is no adaptive wait.
    """
    consumer_cls = type("StreamrecConsumer", (StreamrecConsumer,), {"fetch_max_wait_ms": fetch_max_wait_ms,
                                                                    "fixed_fetch_max_wait_ms": fixed_fetch_max_wait_ms,
                                                                    "highwaters_from_fetch": highwaters_from_fetch})
    transport_cls = type("StreamrecTransport", (StreamrecTransport,), {"Consumer": consumer_cls})
    app.transport = transport_cls(app.conf.broker_consumer, app)
