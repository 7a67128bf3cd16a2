"""The live catalogue's and profiles' shell: every worker reads the compacted ``items`` and ``users``
topics whole into the core.

Why not a Faust ``GlobalTable``: a global table is fed through its changelog,
and workers holding a changelog partition as active do not see records written
to it from outside (robinhood/faust #541); the catalogue is written by the
shop's backend, not by an agent. The compacted topic already is the durable
store (as in Kafka Streams' GlobalKTable, which reads its source topic
directly), so each worker runs one group-less consumer over every partition
from the start, applies the records to the core between click batches (the
core is single-threaded on the event loop, so every list produced after a
record was applied reflects it), and holds the first click batch until it has
read up to the end offsets it found at start: a restarted worker never serves
an item that was switched off before it stopped.

Bad records get a reason and go to ``items_dead_letter`` (``users_dead_letter``;
compacted, keyed by ``topic/partition/offset``, so the copies every worker
sends collapse into one), with the same headers as the clicks' dead letters.

Profiles are read the same way, whole, by every worker: simple and exact (a
profile record is applied before the next batch, whatever partition its user's
clicks are on), at the cost of every worker holding every profile in memory
(about 100 bytes a user: 100 MB per worker at a million users; a table
co-partitioned with the clicks would hold a worker's share only).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from stream_app.core.catalogue import REASONS, ItemRecord, decode_item
from stream_app.core.profiles import decode_profile
from stream_app.core.similar import decode_vector
from stream_app.core.recommender import Recommender
from stream_app.core.records import (
    DEAD_LETTER_DETAIL_HEADER,
    DEAD_LETTER_REASON_HEADER,
    DEAD_LETTER_SOURCE_HEADER,
)
from stream_app.errors import InvalidRecord
from stream_app.settings import Settings
from stream_app.worker.app import aiokafka_kwargs
from stream_app.worker.metrics import Metrics

log = logging.getLogger("streamrec.catalogue")
DEAD_LETTER_KEY_HEADER = "streamrec-key"


class CatalogueReader:
    """Runs as a Faust task; ``caught_up`` is set once the records present at start are applied."""

    what = "catalogue"

    def __init__(self, recommender: Recommender, metrics: Metrics, settings: Settings) -> None:
        self.rec = recommender
        self.latest: dict[str, Any] = {}  # key -> its latest valid record
        self.m = metrics
        self.s = settings
        self.topic = settings.topics.items
        self.dead_letter_topic = settings.topics.items_dead_letter
        self.records_metric, self.dead_letters_metric = metrics.catalogue_records, metrics.catalogue_dead_letters
        self.caught_up = asyncio.Event()
        self.applied = 0  # records applied since start (the /catalogue page shows it)
        self.setup()
        if not self.topic:
            self.caught_up.set()
        for reason in REASONS:  # every series exported from the start, at zero
            self.dead_letters_metric.labels(reason)

    def setup(self) -> None:
        """What differs per topic, in a subclass (profiles)."""

    def decode(self, r: Any) -> Any:
        return decode_item(r.key, r.value, max_bytes=self.s.worker.max_event_bytes)

    def apply(self, records: list[Any]) -> Any:
        return self.rec.apply_catalogue(records)

    def key_of(self, record: Any) -> str:
        return str(record.item_id)

    def prepare(self, recommender: Recommender) -> None:
        """Apply every record read so far to a model about to be swapped in (it does not serve yet)."""
        serving, self.rec = self.rec, recommender
        try:
            if self.latest:
                self.apply(list(self.latest.values()))
        finally:
            self.rec = serving

    def handover(self, recommender: Recommender) -> None:
        """The prepared model serves from now on."""
        self.rec = recommender
        self.update_gauge()

    def applied_log(self) -> str:
        return str(self.rec.catalogue.counts())

    async def run(self) -> None:
        """Read forever; a broker error is logged and the read resumes (the worker keeps serving)."""
        if not self.topic:
            return
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        kwargs = aiokafka_kwargs(self.s)
        consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, auto_offset_reset="earliest", **kwargs)
        producer = AIOKafkaProducer(acks="all", **kwargs)  # copies collapse by key: no idempotence needed
        await consumer.start()
        await producer.start()
        try:
            ends = await self._assign(consumer)
            self.update_gauge()
            while True:
                try:
                    batch = await consumer.getmany(timeout_ms=500, max_records=5000)
                except Exception as exc:  # noqa: BLE001 - a broker hiccup: keep the catalogue as it is, retry
                    log.warning("reading the %s topic %r failed (%r); retrying", self.what, self.topic, exc)
                    await asyncio.sleep(1.0)
                    continue
                for records in batch.values():
                    await self._apply(records, producer)
                if not self.caught_up.is_set() and await self._reached(consumer, ends):
                    log.info("%s read: %d records applied (%s)", self.what, self.applied, self.applied_log())
                    self.caught_up.set()
        finally:
            await consumer.stop()
            await producer.stop()

    @staticmethod
    async def _reached(consumer: Any, ends: dict[Any, int]) -> bool:
        for tp, end in ends.items():
            if await consumer.position(tp) < end:
                return False
        return True

    async def _assign(self, consumer: Any) -> dict[Any, int]:
        """Every partition of the topic, from the start; the end offsets to catch up with."""
        from aiokafka.structs import TopicPartition

        parts: set[int] = set()
        for _ in range(100):
            parts = (await consumer._client.fetch_all_metadata()).partitions_for_topic(self.topic) or set()
            if parts:
                break
            await asyncio.sleep(0.1)
        if not parts:
            log.warning("the %s topic %r does not exist: not read until the worker restarts with it "
                        "(create it compacted; docs/input.md)", self.what, self.topic)
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        if self.s.kafka.embedded:  # the embedded broker's ListOffsets under-reports (docs/brokers.md)
            from stream_app.worker.transport import fetch_highwaters

            return dict(await fetch_highwaters(consumer, tps))
        return dict(await consumer.end_offsets(tps))

    async def _apply(self, records: list[Any], producer: Any) -> None:
        good: list[tuple[Any, ItemRecord]] = []
        for r in records:
            try:
                good.append((r, self.decode(r)))
            except InvalidRecord as error:
                await self._dead_letter(r, error, producer)
        if not good:
            return
        for _, item in good:  # the latest record per key: what a model swapped in later is handed (handover)
            self.latest[self.key_of(item)] = item
        try:
            done = [self.apply([item for _, item in good])]
            applied = len(good)
        except Exception:  # noqa: BLE001 - a bug, not input: isolate the record that trips it, as for clicks
            log.exception("the core failed on %d %s records; applying them one by one", len(good), self.what)
            done, applied = [], 0
            for r, item in good:
                try:
                    done.append(self.apply([item]))
                    applied += 1
                except Exception as exc:  # noqa: BLE001
                    log.exception("the core failed on %s record %s/%s/%s", self.what, r.topic, r.partition, r.offset)
                    await self._dead_letter(r, InvalidRecord("internal_error", f"{type(exc).__name__}: {exc}"[:300]),
                                            producer)
        self.applied += applied
        self.records_metric.inc(applied)
        no_vector = sum(getattr(d, "no_vector", 0) for d in done)
        if no_vector:
            log.warning("%d new catalogue items have no attribute the model knows: not recommendable until "
                        "the next training", no_vector)
        self.update_gauge()

    async def _dead_letter(self, r: Any, error: InvalidRecord, producer: Any) -> None:
        source = f"{r.topic}/{r.partition}/{r.offset}"
        headers = [
            (DEAD_LETTER_REASON_HEADER, error.reason.encode()),
            (DEAD_LETTER_DETAIL_HEADER, error.detail.encode("utf-8", "replace")[:512]),
            (DEAD_LETTER_SOURCE_HEADER, source.encode()),
            (DEAD_LETTER_KEY_HEADER, (r.key or b"")[:512]),
        ]
        await producer.send_and_wait(self.dead_letter_topic, r.value if r.value is not None else b"",
                                     key=source.encode(), headers=headers)
        self.dead_letters_metric.labels(error.reason).inc()
        log.warning("%s record %s dead-lettered: %s", self.what, source, error)

    def update_gauge(self) -> None:
        for state, n in self.rec.catalogue.counts().items():
            self.m.catalogue_items.labels(state).set(n)


class ProfileReader(CatalogueReader):
    """The ``users`` topic: profile records into the core, bad ones to ``users_dead_letter``."""

    what = "profiles"

    def setup(self) -> None:
        self.topic = self.s.topics.users
        self.dead_letter_topic = self.s.topics.users_dead_letter
        self.records_metric, self.dead_letters_metric = self.m.profile_records, self.m.profile_dead_letters

    def decode(self, r: Any) -> Any:
        return decode_profile(r.key, r.value, max_bytes=self.s.worker.max_event_bytes)

    def apply(self, records: list[Any]) -> Any:
        return self.rec.apply_profiles(records)

    def key_of(self, record: Any) -> str:
        return str(record.user_id)

    def applied_log(self) -> str:
        return f"{len(self.rec.profiles.codes)} users with a profile"

    def update_gauge(self) -> None:
        self.m.profiles.set(len(self.rec.profiles.codes))


class VectorReader(ProfileReader):
    """The ``user-vectors`` topic (written by the workers themselves) into the similar-users index; a
    record that does not decode is a bug, dead-lettered to ``users_dead_letter`` all the same."""

    what = "user vectors"

    def setup(self) -> None:
        super().setup()
        self.topic = self.s.topics.user_vectors
        self.records_metric = self.m.user_vector_records

    def decode(self, r: Any) -> Any:
        return decode_vector(r.key, r.value, max_bytes=self.s.worker.max_event_bytes)

    def apply(self, records: list[Any]) -> Any:
        return self.rec.apply_vectors(records)

    def applied_log(self) -> str:
        return f"{len(self.rec.user_index)} user vectors"

    def update_gauge(self) -> None:
        self.m.user_vectors.set(len(self.rec.user_index))


def attach_catalogue(app: Any, recommender: Recommender, metrics: Metrics,
                     settings: Settings) -> tuple[CatalogueReader, ProfileReader, VectorReader]:
    """The readers as tasks of the app (every worker runs them), ``GET /catalogue`` (counts by state)
    and ``GET /profiles``."""
    reader = CatalogueReader(recommender, metrics, settings)
    profiles = ProfileReader(recommender, metrics, settings)
    vectors = VectorReader(recommender, metrics, settings)

    @app.task
    async def read_catalogue() -> None:
        await reader.run()

    @app.task
    async def read_profiles() -> None:
        await profiles.run()

    @app.task
    async def read_vectors() -> None:
        await vectors.run()

    @app.page("/profiles")
    async def profiles_page(web: Any, request: Any) -> Any:
        return web.json({"topic": profiles.topic, "caught_up": profiles.caught_up.is_set(),
                         "records_applied": profiles.applied, "users": len(profiles.rec.profiles.codes),
                         "unknown_attributes": profiles.rec.profiles.unknown,
                         "used_by_the_model": profiles.rec.fuses_profiles})

    @app.page("/catalogue")
    async def catalogue_page(web: Any, request: Any) -> Any:
        return web.json({"topic": reader.topic, "caught_up": reader.caught_up.is_set(),
                         "records_applied": reader.applied, "items": reader.rec.catalogue.counts()})

    del read_catalogue, catalogue_page, read_profiles, profiles_page, read_vectors
    return reader, profiles, vectors
