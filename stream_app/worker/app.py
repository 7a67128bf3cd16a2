"""Builds the faust.App, its topics and the user-state table from Settings (nothing runs on import)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

import faust

from stream_app.settings import Settings
from stream_app.worker.topics import changelog_topic


@dataclass
class Wiring:
    """The Faust objects the agents and pages are attached to."""

    app: faust.App
    clicks: Any
    recommendations: Any
    table: Any
    outbox: Any  # stream_app.worker.transactions.Outbox: the dead letters, record by record
    sender: Any  # stream_app.worker.produce.BatchSender: the agent's lists and changelog records


class DeliveryTrackedTable(faust.Table):
    """A Faust table whose changelog records the agent publishes itself, keeping their delivery futures.

    Faust hands changelog records to a ``ProducerBuffer`` that a background task
    drains one record at a time, and its commit flushes that buffer for at most
    0.1 s without progress (``ProducerBuffer.flush_atmost``): under load an offset
    could be committed while the state written for it was still in the buffer, and
    a SIGKILL then lost it (the faust-streaming #606 class of bug). Under
    exactly-once the background task could also hand a record to the producer after
    the commit that should have covered it. Here the records are held and
    published by the agent with its batch (:meth:`publish_held`); at least once, the
    batch's clicks are acked once these futures are done
    (``stream_app.worker.batching.DeliveryAcks``). The agent reads and writes the
    store of the click's partition directly (:meth:`read`, :meth:`write`: what
    ``table.get`` and ``table[key] = value`` do for an event of that partition) and
    its changelog records leave as one producer batch per partition; both cost less
    CPU than Faust's per-call path (docs/performance.md).
    """

    def send_changelog(self, partition: Any, key: Any, value: Any, key_serializer: Any = None,
                       value_serializer: Any = None) -> Any:
        """Faust's own callers (``table[key] = value``): a held FutureMessage, published one by one."""
        fut = self.changelog_topic.as_future_message(
            key=key, value=value, partition=partition,
            key_serializer=key_serializer or self.key_serializer,
            value_serializer=value_serializer or self.value_serializer,
            callback=self._on_changelog_sent, eager_partitioning=True)
        self.__dict__.setdefault("_held", []).append(fut)
        return fut

    def read(self, partition: int, key: bytes) -> bytes | None:
        """The stored bytes of ``key`` from the RocksDB database of the click's ``partition``.

        What ``table.get(key)`` finds for an event of that partition, without Faust's
        per-call lookups (and without its search of every other partition's
        database when the user is new: a user's state only ever lives in its click
        partition, the changelog partition Faust writes it to)."""
        return self.data._db_for_partition(partition).get(key)

    def write(self, partition: int, key: bytes, value: bytes) -> None:
        """What ``table[key] = value`` does for an event of ``partition``: the RocksDB put, and the
        changelog record held for :meth:`publish_held`."""
        store = self.data
        store._key_index[key] = partition
        store._db_for_partition(partition).put(key, value)
        self.__dict__.setdefault("_raw_held", []).append((partition, key, value))

    def hold_tombstone(self, partition: int, key: bytes) -> None:
        """A deleted user's changelog tombstone, held for :meth:`publish_held`."""
        self.__dict__.setdefault("_raw_held", []).append((partition, key, None))

    async def publish_held(self, sender: Any = None) -> list[Any]:
        """Hand the held changelog records to the producer (under exactly-once, to their partition's
        transactional one); returns their delivery futures. The agent's records go as one batch per
        partition through ``sender`` (stream_app/worker/produce.py); after each batch is written the
        offset of its last record is persisted as Faust's ``_on_changelog_sent`` does per record."""
        held, self.__dict__["_held"] = self.__dict__.get("_held", []), []
        for fut in held:
            await self.changelog_topic.publish_message(fut, wait=False)
        raw, self.__dict__["_raw_held"] = self.__dict__.get("_raw_held", []), []
        if not raw:
            return held
        from stream_app.worker.produce import Record

        topic = self.changelog_topic.get_topic_name()
        futures = await sender.send(((Record(topic, p, k, v), (topic, p)) for p, k, v in raw), self._on_batch_sent)
        return held + futures

    def _on_batch_sent(self, topic: str, partition: int, count: int, fut: Any) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return  # the batch's clicks are not acked (at least once) or not committed (exactly once)
        res = fut.result()
        if res is None:
            return
        last = res.offset + count - 1
        if self.app.in_transaction:
            self.app.tables.persist_offset_on_commit(self.data, res.topic_partition, last)
        else:
            self.data.set_persisted_offset(res.topic_partition, last)


def _credentials(settings: Settings) -> Any:
    k = settings.kafka
    context = None
    if k.security_protocol.endswith("SSL"):
        context = ssl.create_default_context(cafile=k.ssl_cafile or None)
        if k.ssl_certfile:
            context.load_cert_chain(k.ssl_certfile, k.ssl_keyfile or None)
    if k.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=k.sasl_username,
            password=k.sasl_password.get_secret_value(),
            ssl_context=context,
            mechanism=k.sasl_mechanism,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def aiokafka_kwargs(settings: Settings) -> dict[str, Any]:
    """Connection arguments for a plain aiokafka client beside Faust's (the same brokers and credentials)."""
    k = settings.kafka
    credentials = _credentials(settings)
    return dict(
        bootstrap_servers=k.servers, security_protocol=k.security_protocol,
        ssl_context=getattr(credentials, "ssl_context", None) or getattr(credentials, "context", None),
        sasl_mechanism=k.sasl_mechanism,
        sasl_plain_username=k.sasl_username or None, sasl_plain_password=k.sasl_password.get_secret_value() or None)


def faust_config(settings: Settings) -> dict[str, Any]:
    """faust.App keyword arguments; the embedded broker's quirks only when it is in use."""
    w, k = settings.worker, settings.kafka
    config: dict[str, Any] = dict(
        broker=";".join(f"kafka://{s}" for s in k.servers),
        broker_credentials=_credentials(settings),
        store="rocksdb://",
        datadir=str(w.data_dir),
        web_enabled=True,
        web_bind=w.web_bind or w.web_host,
        web_host=w.web_host,
        web_port=w.web_port,
        topic_partitions=settings.topics.partitions,
        topic_replication_factor=settings.topics.replication_factor,
        table_standby_replicas=w.standby_replicas,
        consumer_auto_offset_reset="earliest",
        autodiscover=False,
        web_in_thread=False,
    )
    config.update(processing_guarantee=w.processing_guarantee, broker_commit_interval=w.commit_every_s)
    if not k.embedded:
        config.update(broker_session_timeout=k.session_timeout_s, broker_heartbeat_interval=k.heartbeat_interval_s)
    else:
        # Tansu: group joins wait half the session timeout. Its ListOffsets(latest)
        # under-reports multi-record batches: build() installs a transport that
        # reads changelog ends from Fetch high watermarks, so producers may batch
        # (max batch size 1 is the older workaround).
        config.update(
            broker_session_timeout=k.embedded_session_timeout_s,
            broker_heartbeat_interval=k.embedded_heartbeat_interval_s,
        )
        if k.embedded_producer_max_batch_size > 0:
            config.update(producer_max_batch_size=k.embedded_producer_max_batch_size)
    return config


def rocksdb_options(settings: Settings) -> dict[str, Any]:
    """Explicit memory limits: Faust's default block cache is 2 GiB per partition database."""
    w = settings.worker
    return {
        "driver": "rocksdict",
        "block_cache_size": w.rocksdb_block_cache_bytes,
        "block_cache_compressed_size": w.rocksdb_block_cache_bytes // 4,
        "write_buffer_size": w.rocksdb_write_buffer_bytes,
        "max_write_buffer_number": 2,
        "max_open_files": 256,
    }


def build(settings: Settings) -> Wiring:
    """The app with raw-bytes topics (the worker validates input itself) and the state table."""
    app = faust.App(settings.worker.app_id, **faust_config(settings))
    k = settings.kafka
    from stream_app.worker.transport import install

    # before any topic (stream_app/worker/transport.py): partitions without a commit are
    # rewound after a rebalance too; the adaptive Fetch wait and the Fetch high watermarks
    # on the embedded broker, a fixed short Fetch wait on a real cluster
    from stream_app.worker.transactions import install_recovery

    install(app, k.embedded_fetch_max_wait_ms if k.embedded else 0, k.embedded and k.embedded_fetch_highwaters,
            fixed_fetch_max_wait_ms=0 if k.embedded else k.fetch_max_wait_ms)
    t = settings.topics
    raw = dict(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    clicks = app.topic(t.clicks, partitions=t.partitions, **raw)
    recommendations = app.topic(t.recommendations, **raw)
    # Tables pick "json" unless the value type is a Record; the state is opaque
    # versioned bytes, so the changelog, the RocksDB store and recovery carry it raw.
    changelog = app.topic(
        changelog_topic(settings), partitions=t.partitions, compacting=True, deleting=False,
        acks=False, internal=True, **raw,
    )
    table = app.tables.add(DeliveryTrackedTable(  # app.Table(...), with the subclass
        app,
        name="user_state",
        beacon=app.tables.beacon,
        changelog_topic=changelog,
        partitions=t.partitions,
        options=rocksdb_options(settings),
        help="user id -> versioned UserState bytes",
        schema=faust.Schema(**raw),
    ))
    table.key_serializer = "raw"
    table.value_serializer = "raw"
    if settings.worker.exactly_once:
        install_recovery(app)
    from stream_app.worker.produce import BatchSender
    from stream_app.worker.transactions import Outbox

    outbox = Outbox(app, settings.worker.exactly_once)
    sender = BatchSender(app, outbox.transactional_id if outbox.exactly_once else None)
    return Wiring(app, clicks, recommendations, table, outbox, sender)
