"""A micro-batch's records produced as one aiokafka batch per destination partition.

``AIOKafkaProducer.send`` costs a coroutine, a metadata check, a partitioner
call, a record future and Faust's producer wrapper (its monitor hook, its
transaction lock) for every record, and the worker sends two records per click
(the list and the user's changelog record). Here the records of a micro-batch
are grouped by destination partition (and, under exactly-once, by the
transaction of the click's partition), appended to ``create_batch()`` builders
and handed over with ``send_batch``: one future per builder. The builders are
closed before they are sent, so the producer does not linger on them.

Order within a partition is the order of the batch; a user's records all go to
one partition, so a user's lists and changelog records stay in click order.
Partitions of keyed records come from the producer's own partitioner (murmur2
of the key, Kafka's default), as ``send`` would pick them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, Sequence


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int | None  # None: the producer's partitioner picks it from the key
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] | None = None


Done = Callable[[str, int, int, Any], None]  # (topic, partition, records in the batch, batch future)


class BatchSender:
    """Sends records grouped per (transaction, topic, partition) with aiokafka's batch API."""

    def __init__(self, app: Any, transactional_id: Callable[[str, int], str] | None) -> None:
        self.app = app
        self.transactional_id = transactional_id  # (source topic, partition) -> id; None: at least once

    async def send(self, records: Iterable[tuple[Record, tuple[str, int]]], on_done: Done | None = None) -> list[Any]:
        """Send ``(record, source topic-partition)`` pairs; returns one delivery future per batch sent.

        ``on_done(topic, partition, count, future)`` is attached to each batch's future (the
        changelog uses it to persist the offset of the batch's last record)."""
        faust_producer = self.app.producer
        default = faust_producer._ensure_producer()
        groups: dict[tuple[str | None, str, int], list[Record]] = {}
        partitions: dict[str, tuple[list[int], list[int]]] = {}
        for record, source in records:
            partition = record.partition
            if partition is None:
                if record.topic not in partitions:
                    partitions[record.topic] = await self._partitions(default, record.topic)
                every, available = partitions[record.topic]
                partition = default._partitioner(record.key, every, available)
            tid = self.transactional_id(*source) if self.transactional_id is not None else None
            groups.setdefault((tid, record.topic, partition), []).append(record)
        futures: list[Any] = []
        for (tid, topic, partition), group in groups.items():
            if tid is None:
                futures.extend(await self._send_group(default, None, topic, partition, group, on_done))
                continue
            producer = faust_producer._transaction_producers.get(tid)
            if producer is None:
                from faust.exceptions import ProducerSendError

                raise ProducerSendError(f"No transaction producer found for : {tid}")
            async with faust_producer._trn_locks[tid]:
                futures.extend(await self._send_group(producer, tid, topic, partition, group, on_done))
        return futures

    @staticmethod
    async def _partitions(producer: Any, topic: str) -> tuple[list[int], list[int]]:
        await producer.client._wait_on_metadata(topic)
        cluster = producer.client.cluster
        every = sorted(cluster.partitions_for_topic(topic) or ())
        available = sorted(cluster.available_partitions_for_topic(topic) or ()) or every
        return every, available

    async def _send_group(self, producer: Any, tid: str | None, topic: str, partition: int,
                          group: Sequence[Record], on_done: Done | None) -> list[Awaitable[Any]]:
        futures: list[Any] = []
        batch = producer.create_batch()
        for record in group:
            headers = list(record.headers) if record.headers else []
            if batch.append(key=record.key, value=record.value, timestamp=None, headers=headers) is not None:
                continue
            if batch.record_count():
                futures.append(await self._submit(producer, batch, topic, partition, on_done))
                batch = producer.create_batch()
                if batch.append(key=record.key, value=record.value, timestamp=None, headers=headers) is not None:
                    continue
            # larger than a whole batch: the producer's own path (and its MessageSizeTooLarge)
            futures.append(await producer.send(topic, record.value, key=record.key, partition=partition,
                                               headers=headers))
        if batch.record_count():
            futures.append(await self._submit(producer, batch, topic, partition, on_done))
        return futures

    @staticmethod
    async def _submit(producer: Any, batch: Any, topic: str, partition: int, on_done: Done | None) -> Any:
        batch.close()  # complete: no linger on it
        count = batch.record_count()
        future = await producer.send_batch(batch, topic, partition=partition)
        if on_done is not None:
            future.add_done_callback(lambda fut: on_done(topic, partition, count, fut))
        return future
