"""The thin imperative shell: read state, call the core, write state, send; plus timers and pages."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Callable

from aiokafka.errors import KafkaError
from faust.exceptions import ProducerSendError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stream_app.worker import openapi
from stream_app.worker.auth import package_version, requires_token
from stream_app.worker.app import Wiring
from stream_app.worker.batching import DeliveryAcks, keep_queue_on_resume, take_available
from stream_app.worker.catalogue import attach_catalogue
from stream_app.worker.produce import Record
from stream_app.errors import InvalidClick, ModelLoadError
from stream_app.worker.metrics import Metrics
from stream_app.core.recommender import Incoming, Recommender
from stream_app.core.records import (
    DEAD_LETTER_DETAIL_HEADER,
    DEAD_LETTER_REASON_HEADER,
    DEAD_LETTER_SOURCE_HEADER,
    Source,
)
from stream_app.core.similar import encode_vector
from stream_app.settings import Settings
from stream_app.core.state import StateDecodeError, decode
from stream_app.core.validate import decode_click


log = logging.getLogger("streamrec.agents")


class Shell:
    """Owns the per-batch I/O around ``Recommender.process`` and the worker's health."""

    def __init__(self, wiring: Wiring, recommender: Recommender, metrics: Metrics, settings: Settings,
                 loader: Callable[[Settings], tuple[Recommender, Any]] | None = None) -> None:
        self.w = wiring
        self.loader = loader  # loads the checkpoint the settings name (stream_app.worker.start.load_recommender)
        self.rec = recommender
        self.m = metrics
        self.s = settings
        self.last_offsets: dict[int, int] = {}
        self.batch_since: float | None = None  # monotonic start of the batch in progress
        self._stall_logged = False
        self.last_click_ts = 0.0
        self._rebalance_started: float | None = None
        self._users_counted = 0.0
        self.acks: DeliveryAcks | None = None
        self.outbox = wiring.outbox
        self.catalogue, self.profiles, self.vectors = attach_catalogue(wiring.app, recommender, metrics, settings)
        self._model_seen = _file_signature(settings.model.path)  # hot swap: the checkpoint file as loaded

    # -- hot swap (STREAMREC_MODEL__WATCH_S) -----------------------------------

    async def check_model(self) -> None:
        """Load the checkpoint file again when it changed; swap it in between two batches, or keep the old
        model serving with one error line when it cannot be used."""
        seen = _file_signature(self.s.model.path)
        if seen is None or seen == self._model_seen:
            return
        self._model_seen = seen
        if self.loader is None:
            return
        try:
            rec, ckpt = await asyncio.get_running_loop().run_in_executor(None, self.loader, self.s)
        except ModelLoadError as exc:
            self.m.model_swaps.labels("failed").inc()
            log.error("the new checkpoint is not used, model %s keeps serving: %s", self.rec.model_version, exc)
            return
        if rec.model_version == self.rec.model_version:
            return
        old = self.rec.model_version
        try:
            self.swap(rec)
        except Exception:  # noqa: BLE001 - a bug while handing over: the old model keeps serving, whole
            self.m.model_swaps.labels("failed").inc()
            log.exception("the new checkpoint is not used, model %s keeps serving: handing the catalogue, profiles "
                          "and user vectors over failed", old)
            return
        self.m.serving(ckpt)
        self.m.model_swaps.labels("swapped").inc()
        log.info("model %s swapped in for %s: each user's state is carried over on the user's next click",
                 rec.model_version, old)

    def swap(self, rec: Recommender) -> None:
        """Serve ``rec`` from the next batch on (the core is single-threaded: no batch sees both models). It is
        prepared completely before anything switches, so a failure leaves the old model serving as it was."""
        readers = (self.catalogue, self.profiles, self.vectors)
        for reader in readers:
            reader.prepare(rec)
        rec.adopt(self.rec)
        for reader in readers:
            reader.handover(rec)
        self.rec = rec

    # -- the per-batch path --------------------------------------------------

    def check_stalled(self) -> float | None:
        """Seconds the current batch has been in progress, if beyond ``delivery_timeout_s``.

        A batch that neither finishes nor fails (the producer waiting for an answer the
        broker never sends: Faust's producer waits 1,200 s) stops the stream with a
        green health check; this makes it visible (``/healthz`` 503, one error line).
        """
        since = self.batch_since
        if since is None:
            self._stall_logged = False
            return None
        age = time.monotonic() - since
        if age <= self.s.worker.delivery_timeout_s:
            return None
        if not self._stall_logged:
            self._stall_logged = True
            log.error("a batch has been in progress for %.0f s (delivery timeout %.0f s): the producer or the "
                      "broker is stuck; the health check fails so the worker is restarted", age,
                      self.s.worker.delivery_timeout_s)
        return age

    async def dead_letter(self, event: Any, error: InvalidClick) -> Any:
        """Original bytes to the dead-letter topic, the reason in headers; never raises on input.

        Returns the record's delivery future."""
        msg = event.message
        headers = [
            (DEAD_LETTER_REASON_HEADER, error.reason.encode()),
            (DEAD_LETTER_DETAIL_HEADER, error.detail.encode("utf-8", "replace")[:512]),
            (DEAD_LETTER_SOURCE_HEADER, f"{msg.topic}/{msg.partition}/{msg.offset}".encode()),
        ]
        value = msg.value if isinstance(msg.value, (bytes, type(None))) else bytes(msg.value)
        delivered = await self.outbox.send(self.s.topics.dead_letter, msg.key, value, headers,
                                           (msg.topic, msg.partition))
        self.m.dead_letters.labels(error.reason).inc()
        return delivered

    async def handle(self, stream: Any, events: list[Any]) -> list[Any]:
        """One micro-batch: validate, one core call, write the states, send lists and changelog as producer batches.

        Returns the delivery futures of every record the batch produced (dead
        letters, state changelog, lists): the batch is acked once they are done.
        """
        started = time.perf_counter()
        now = time.time()
        w = self.s.worker
        valid: list[tuple[Any, Incoming]] = []
        delivered: list[Any] = []
        self.m.clicks.inc(len(events))
        self.m.batch_size.observe(len(events))
        for event in events:
            msg = event.message
            self.last_offsets[msg.partition] = msg.offset
            try:
                click = decode_click(event.value, event.key, max_bytes=w.max_event_bytes, now=now,
                                     max_future_skew_s=w.max_future_skew_s)
            except InvalidClick as error:
                delivered.append(await self.dead_letter(event, error))
                continue
            blob = self.w.table.read(msg.partition, event.key)  # the click partition's RocksDB database
            source = Source(msg.topic, msg.partition, msg.offset, float(msg.timestamp or now))
            valid.append((event, Incoming(click, source, blob)))
        if not valid:
            return delivered
        outcomes = await self._process_safely(valid, now, delivered)
        topic, table, vectors = self.s.topics.recommendations, self.w.table, self.s.topics.user_vectors
        lists: list[tuple[Record, tuple[str, int]]] = []
        for (event, inc), out in zip(valid, outcomes):
            if out is None:
                continue
            msg = event.message
            if out.state_blob is not None:  # the changelog partition is the click's, as Faust writes it
                table.write(msg.partition, event.key, out.state_blob)
                self.m.state_bytes.observe(len(out.state_blob))
            lists.append((Record(topic, None, event.key, out.recommendation.to_json()), (msg.topic, msg.partition)))
            if out.user_vector is not None and vectors:  # a session gap moved the long-term part: share it
                lists.append((Record(vectors, None, event.key, encode_vector(out.user_vector)), (msg.topic, msg.partition)))
            self._count(out, inc, msg.time_in)
        # one producer batch per partition (stream_app/worker/produce.py), lists then changelog records
        delivered.extend(await self.w.sender.send(lists))
        delivered.extend(await table.publish_held(self.w.sender))
        self.last_click_ts = max(self.last_click_ts, max(inc.source.timestamp for _, inc in valid))
        self.m.processing.observe(time.perf_counter() - started)
        return delivered

    async def handle_in_transaction(self, stream: Any, events: list[Any]) -> None:
        """Exactly-once: the batch's records enqueued in its partitions' transactions and the batch acked,
        with no commit in between (stream_app/worker/transactions.py).

        Delivery is the transaction's business: a record that fails makes its transaction's commit
        fail, so neither the records nor the offsets of its clicks are committed, and the clicks are
        consumed again. A send that raises (fenced, not in a transaction) stops the worker.
        """
        consumer = self.w.app.consumer
        try:
            async with consumer.commit_gate:
                if consumer.revoking:  # between the pre-rebalance commit and the new assignment
                    consumer.forget(events)  # not processed, not acked: fetched again from the committed
                    return                   # offsets after the rebalance
                generation = self.w.app.consumer_generation_id
                consumer.forget(e for e in events if e.message.generation_id != generation)  # the same
                events = [e for e in events if e.message.generation_id == generation]
                if not events:
                    return
                await self.handle(stream, events)
                for event in events:
                    await stream.ack(event)
        except (KafkaError, ProducerSendError) as exc:  # fenced, or the transaction failed: no retry here
            log.error("a transaction failed (%r): the worker stops; the clicks of its open transactions are "
                      "consumed again after the restart", exc)
            await self.w.app.crash(exc)
            raise

    async def _process_safely(self, valid: list[tuple[Any, Incoming]], now: float,
                              delivered: list[Any]) -> list[Any]:
        """The core on the whole batch; if it fails (a bug, not input), click by click, and a click
        that still fails is dead-lettered as ``internal_error``: never a crash, never a silent drop."""
        try:
            outcomes = self.rec.process([inc for _, inc in valid], now)
            for stage, seconds in self.rec.stage_seconds.items():
                self.m.stage.labels(stage).observe(seconds)
            if self.rec.carried_last:
                self.m.states_carried.inc(self.rec.carried_last)
            return outcomes
        except Exception:  # noqa: BLE001 - isolate the click that trips the bug
            log.exception("core failed on a batch of %d clicks; retrying them one by one", len(valid))
        outcomes: list[Any] = []
        for event, inc in valid:
            try:
                outcomes.append(self.rec.process([inc], now)[0])
            except Exception as exc:  # noqa: BLE001
                log.exception("core failed on %s/%s/%s", inc.source.topic, inc.source.partition, inc.source.offset)
                delivered.append(await self.dead_letter(
                    event, InvalidClick("internal_error", f"{type(exc).__name__}: {exc}"[:300])))
                outcomes.append(None)
        return outcomes

    def _count(self, out: Any, inc: Incoming, received: float | None) -> None:
        m = self.m
        m.published.labels(out.recommendation.strategy).inc()
        if len(out.recommendation.items) < self.rec.k:
            m.short_lists.inc()
        m.click_to_publish.observe(max(0.0, time.time() - inc.source.timestamp))
        if received is not None:  # Faust's monitor stamps each message (monotonic) as a stream takes it
            m.receive_to_publish.observe(max(0.0, time.monotonic() - received))
        if out.reset_reason:
            m.state_resets.labels(out.reset_reason).inc()
        if out.unknown_item:
            m.unknown_items.inc()
        if out.replayed:
            m.replayed.inc()
        if out.online_rank is not None:
            m.online_predictions.inc()
            if out.online_rank > 0:
                m.online_hits.inc()
                m.online_rr.inc(1.0 / out.online_rank)

    # -- inactive users -----------------------------------------------------------

    def active_partitions(self) -> set[int]:
        """Changelog partitions this worker owns (standby copies are not ours to expire)."""
        topic = self.w.table.changelog_topic_name
        try:
            actives = self.w.app.assignor.assigned_actives()
        except Exception:  # noqa: BLE001 - not assigned yet
            return set()
        return {tp.partition for tp in actives if tp.topic == topic}

    def _idle(self, blob: bytes | None, now: float) -> bool:
        if blob is None:
            return False
        try:
            return now - decode(blob).last_seen > self.s.session.state_ttl_s
        except StateDecodeError:
            return False  # reset (and counted) by the user's next click

    def expire_keys(self, partition: int, db: Any, keys: list[bytes], now: float) -> int:
        """Delete the still-idle ``keys`` from one owned partition and tombstone them in its changelog.

        ``del table[key]`` cannot be used here: it needs a current event and
        picks that event's partition. Instead the user is deleted from that
        partition's RocksDB database and a tombstone is sent to the same
        changelog partition, so a rebuild or a standby drops the user too.
        Synchronous: no click runs between the fresh read that finds a user
        idle and its delete.
        """
        store = self.w.table.data
        removed = 0
        for key in keys:
            if not self._idle(db.get(key), now):
                continue  # clicked since the scan
            db.delete(key)
            store._key_index.pop(key, None)
            self.w.table.hold_tombstone(partition, key)
            removed += 1
        if removed:
            self.m.state_resets.labels("ttl").inc(removed)
        return removed

    async def _publish_held(self) -> None:
        """The tombstones of a sweep to the producer (exactly-once: into their partitions' transactions)."""
        if not self.s.worker.exactly_once:
            await self.w.table.publish_held(self.w.sender)
            return
        async with self.w.app.consumer.commit_gate:
            await self.w.table.publish_held(self.w.sender)

    async def expire_idle_users(self, chunk: int = 2000) -> int:
        """One sweep over the owned partitions, ``chunk`` keys at a time so clicks keep flowing.

        Skipped while recovering or rebalancing; a partition revoked mid-sweep is left alone.
        """
        store = self.w.table.data
        removed = 0
        if not self.ready():
            return 0
        for partition in sorted(self.active_partitions()):
            db = store._dbs.get(partition)
            if db is None:
                continue
            candidates: list[bytes] = []
            now = time.time()
            for scanned, (key, blob) in enumerate(db.items(), start=1):
                if key != store.offset_key and self._idle(blob, now):
                    candidates.append(key)
                if scanned % chunk == 0:
                    removed += self.expire_keys(partition, db, candidates, now)
                    await self._publish_held()
                    candidates = []
                    await asyncio.sleep(0)
                    if not self.ready() or store._dbs.get(partition) is not db:
                        return removed
            removed += self.expire_keys(partition, db, candidates, now)
            await self._publish_held()
            await asyncio.sleep(0)
            if not self.ready():
                break
        return removed

    # -- health -----------------------------------------------------------------

    def ready(self) -> bool:
        app = self.w.app
        try:
            recovered = app.tables.recovery.completed.is_set()
        except AttributeError:
            recovered = False
        return bool(recovered and not app.rebalancing and self.catalogue.caught_up.is_set()
                    and self.profiles.caught_up.is_set())

    def update_gauges(self) -> None:
        app = self.w.app
        ready = self.ready()
        self.m.ready.set(1 if ready else 0)
        if ready and self._rebalance_started is not None:
            self.m.recovery_seconds.set(time.monotonic() - self._rebalance_started)
            self._rebalance_started = None
        if self.last_click_ts:
            self.m.lag_seconds.set(max(0.0, time.time() - self.last_click_ts))
        consumer = getattr(app, "consumer", None)
        if consumer is None:
            return
        try:
            assigned = consumer.assignment()
        except Exception:  # noqa: BLE001 - not started or mid-rebalance
            return
        self._count_users(self.active_partitions())
        for tp in assigned:
            if tp.topic != self.s.topics.clicks:
                continue
            high = consumer.highwater(tp)
            if high is None:
                continue
            done = self.last_offsets.get(tp.partition, -1) + 1
            self.m.lag_messages.labels(str(tp.partition)).set(max(0, int(high) - done))

    def _count_users(self, active: set[int]) -> None:
        """RocksDB's key estimate over this worker's active partitions (standbys excluded), every 10 s."""
        now = time.monotonic()
        if now - self._users_counted < 10.0:
            return
        self._users_counted = now
        dbs = getattr(self.w.table.data, "_dbs", {})
        total = 0
        for partition, db in list(dbs.items()):
            if partition in active:
                try:
                    total += int(db.property_int_value("rocksdb.estimate-num-keys") or 0)
                except Exception:  # noqa: BLE001 - a closing database must not break the gauges
                    continue
        self.m.users.set(total)

    def rebalance_started(self) -> None:
        self.m.rebalances.inc()
        self._rebalance_started = time.monotonic()

    def latest(self, user_key: bytes) -> dict[str, Any] | None:
        """The last list served to a user, read from this worker's table."""
        blob = self.w.table.get(user_key)
        if blob is None:
            return None
        try:
            state = decode(blob)
        except StateDecodeError:
            return None
        return {
            "user_id": user_key.decode("utf-8", "replace"),
            "items": [self.rec.item_ids[i] for i in self.rec.catalogue.from_state(state.served)
                      if i < len(self.rec.item_ids)],
            "model_version": state.model_version,
            "last_click_ts": state.last_ts,
            "in_session": state.hidden is not None,
        }


def _file_signature(path: str) -> tuple[int, int] | None:
    """(modification time in ns, size) of a file, None when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def attach(wiring: Wiring, recommender: Recommender, metrics: Metrics, settings: Settings,
           loader: Callable[[Settings], tuple[Recommender, Any]] | None = None) -> Shell:
    """Register the agent, the timers and the HTTP pages on the app; ``loader`` loads a new checkpoint for the
    hot swap (STREAMREC_MODEL__WATCH_S)."""
    app = wiring.app
    shell = Shell(wiring, recommender, metrics, settings, loader)
    w = settings.worker

    @app.agent(wiring.clicks, name="streamrec.process_clicks")
    async def process_clicks(stream: Any) -> None:
        # take_events, flushed early when no click is waiting (stream_app/worker/batching.py)
        if not keep_queue_on_resume(app, stream):
            log.warning("could not exempt the click queue from Faust's clear-on-resume (faust-streaming #596)")
        acks = shell.acks = DeliveryAcks(stream, timeout_s=w.delivery_timeout_s)
        await shell.catalogue.caught_up.wait()  # no list before the catalogue present at start is applied
        await shell.profiles.caught_up.wait()  # ... nor before the profiles are
        try:
            async for events in take_available(stream, w.batch_max, within=w.batch_ms / 1000.0,
                                               quiet=w.batch_quiet_ms / 1000.0):
                batch = list(events)
                shell.batch_since = time.monotonic()
                if w.exactly_once:
                    await shell.handle_in_transaction(stream, batch)
                else:
                    await acks.submit(batch, await shell.handle(stream, batch))
                shell.batch_since = None
        finally:
            # stopping: let the batches in flight be acked so the final commit covers them
            await acks.drain(timeout=min(5.0, settings.worker.shutdown_grace_s / 4))

    @app.timer(interval=1.0)
    async def refresh_gauges() -> None:
        shell.update_gauges()
        shell.check_stalled()

    if settings.model.watch_s > 0:
        @app.timer(interval=settings.model.watch_s)
        async def watch_model() -> None:
            await shell.check_model()

    ttl = settings.session.state_ttl_s
    if ttl > 0:
        @app.timer(interval=max(1.0, min(ttl / 4.0, 300.0)), on_leader=False)
        async def expire_idle_users() -> None:
            await shell.expire_idle_users()

    @app.on_partitions_revoked.connect
    async def on_revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
        shell.rebalance_started()
        metrics.lag_messages.clear()  # partitions may move: no stale per-partition series

    @app.on_partitions_assigned.connect
    async def on_assigned(sender: Any, assigned: Any, **kwargs: Any) -> None:
        if shell._rebalance_started is None:
            shell.rebalance_started()

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        shell.update_gauges()
        return web.bytes(generate_latest(metrics.registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/openapi.json")
    async def openapi_page(web: Any, request: Any) -> Any:
        return web.json(openapi.spec(package_version()))

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        failure = shell.acks.failure if shell.acks is not None else None
        if failure is not None:  # offsets no longer advance: restart and consume them again
            return web.json({"status": "delivery_failed", "error": repr(failure)[:300]}, status=503)
        stalled = shell.check_stalled()
        if stalled is not None:  # a batch blocked on the producer: restart and consume it again
            return web.json({"status": "stalled", "batch_in_progress_s": round(stalled, 1)}, status=503)
        return web.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        ok = shell.ready()
        return web.json({"ready": ok, "model_version": shell.rec.model_version}, status=200 if ok else 503)

    @app.page("/users/{user_id}/similar")
    @requires_token(w.api_token.get_secret_value())  # user data: behind the token when one is set
    async def similar_users(web: Any, request: Any, user_id: str) -> Any:
        try:
            k = int(request.query.get("k", "10"))
        except ValueError:
            k = 0
        if not 1 <= k <= 1000:
            return web.json({"error": "k must be an integer from 1 to 1000"}, status=400)
        found = shell.rec.user_index.similar(user_id, k)  # every partition's users: the topic is read whole
        if found is None:
            return web.json({"error": "no vector for this user (a session-aware model writes one at the user's "
                                      "first session gap)", "user_id": user_id}, status=404)
        return web.json({"user_id": user_id, "users": [{"user_id": u, "score": round(v, 6)} for u, v in found]})

    @app.page("/users/{user_id}/recommendations")
    @requires_token(w.api_token.get_secret_value())  # user data: behind the token when one is set
    @app.table_route(table=wiring.table, match_info="user_id")
    async def user_recommendations(web: Any, request: Any, user_id: str) -> Any:
        body = shell.latest(user_id.encode("utf-8"))
        if body is None:
            return web.json({"error": "unknown user", "user_id": user_id}, status=404)
        return web.json(body)

    del openapi_page, process_clicks, refresh_gauges, on_revoked, on_assigned, metrics_page, healthz, readyz, user_recommendations
    return shell
