"""Exactly-once on Apache Kafka: Faust's ``processing_guarantee="exactly_once"``, and where it falls short.

With ``STREAMREC_WORKER__PROCESSING_GUARANTEE=exactly_once`` Faust gives every
active click partition a transactional producer (``transactional.id`` =
``<app id>-<topic group>-<partition>``, so the worker that takes a partition
over fences the one that had it and aborts its open transaction), commits the
consumed offsets with ``send_offsets_to_transaction`` and reads with
``read_committed``. What it gets right is used as is. What it does not is handled
here and in ``stream_app/worker/transport.py`` (faust-streaming 0.15.3; each was
seen failing in the fault suite, docs/reliability.md#exactly-once-on-apache-kafka):

1. **Where records go.** ``TransactionManager.send`` picks the transaction from
   the *destination* topic's partition group, and the recommendations and
   dead-letter topics are in no group (``KeyError``). :class:`Outbox` sends a
   click's list and dead letter in the transaction of the *click's* partition,
   the one its offset is committed in.
2. **What a commit covers.** Faust commits from a timer while the agent runs, so
   a transaction could take a batch's records and not its offsets (a crash then
   publishes the batch twice), or its offsets before its changelog records left
   Faust's producer buffer. Here the agent holds :attr:`StreamrecConsumer.commit_gate`
   while it processes a batch, hands its changelog records to the transactional
   producers (:meth:`DeliveryTrackedTable.publish_held`) and acks it; a commit
   takes the same lock, so it always falls between two batches.
3. **Recovery that ends by timeout, or skips.** A transactional changelog ends
   with a commit marker, an offset no record has, so Faust's recovery never sees
   the end offset and finishes only after two idle 5-second polls, and never while
   standby partitions keep receiving records. :class:`EosRecovery` counts a
   partition as recovered once the consumer's position is past the log end and
   every record it handed out was applied. (The changelog ends themselves come
   from ``ListOffsets`` with ``read_committed``: Faust's ``last_stable_offset()``
   is None before the first Fetch, and recovery then skipped an unread changelog.)
4. **Producers after a rebalance.** :class:`StreamrecTransactionManager` keeps a
   transactional producer for exactly the active partitions.
5. **Nothing committed at a revocation.**
   ``StreamrecConsumer.commit_before_rebalance`` commits every processed click
   when partitions are revoked, and no batch is processed until the new
   assignment.
6. **RocksDB is not transactional.** A crash leaves local writes whose
   transaction was aborted. As Kafka Streams does under exactly-once, the local
   state is dropped after an unclean stop (:func:`prepare_state_dir`) and
   rebuilt from the committed changelog.

The embedded broker has no transactions: the worker refuses the setting there.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Awaitable

from faust.tables.recovery import Recovery
from faust.transport.consumer import TransactionManager


log = logging.getLogger("streamrec.transactions")

CLEAN_STOP_MARKER = ".streamrec-clean-stop"


class Outbox:
    """Sends a click's records: straight to the producer, or into the transaction of the click's partition."""

    def __init__(self, app: Any, exactly_once: bool) -> None:
        self.app = app
        self.exactly_once = exactly_once
        self._tids: dict[tuple[str, int], str] = {}

    def transactional_id(self, topic: str, partition: int) -> str:
        """Faust's id for the transaction that commits ``topic``/``partition`` (its TransactionManager format;
        the topic groups are fixed by the app's topics, so the ids are cached)."""
        tid = self._tids.get((topic, partition))
        if tid is None:
            group = self.app.assignor.group_for_topic(topic)
            tid = self._tids[(topic, partition)] = f"{self.app.conf.id}-{group}-{partition}"
        return tid

    async def send(self, topic: str, key: bytes | None, value: bytes | None, headers: Any,
                   source: tuple[str, int]) -> Awaitable[Any]:
        """Enqueue one record; returns its delivery future. ``source`` is the click's (topic, partition)."""
        producer = self.app.producer
        if not self.exactly_once:
            return await producer.send(topic, key, value, None, None, headers)
        return await producer.send(topic, key, value, None, None, headers,
                                   transactional_id=self.transactional_id(*source))


class StreamrecTransactionManager(TransactionManager):
    """Faust's, with the transactional producers kept to exactly the active partitions after a rebalance.

    Faust stops the producers of revoked partitions that are not standbys *after* the
    new assignment, and its standby set holds every topic of the partition group: a
    click partition moved to another worker and kept here as a standby kept its
    producer. The new owner fenced it, and when the partition came back, Faust's
    ``begin_transaction`` found the fenced producer (``IN_TRANSACTION``) and kept
    it: the first send failed with ``ProducerFenced`` and the agent crashed with
    ``Can't send messages while not in transaction``. Here every producer whose
    partition is not active now is stopped (its open transaction, if any, is
    aborted by the next owner's ``InitProducerId``); a transaction is begun on
    the others unless one is open. A kept producer's transaction holds no
    processed click here: the revocation committed them all
    (``StreamrecConsumer.commit_before_rebalance``), since a kept partition is
    sought back to its committed offset after a rebalance, and a click processed
    but not committed would be processed again into the same open transaction,
    both lists committed.
    """

    async def on_rebalance(self, assigned: Any, revoked: Any, newly_assigned: Any) -> None:
        producer = self.producer
        wanted = self._tps_to_transactional_ids(assigned)
        producers = producer._transaction_producers
        stale = sorted(set(producers) - wanted)
        if stale:
            log.info("stopping the transactional producers of %d partitions no longer active here", len(stale))
            for tid in stale:
                await producer.stop_transaction(tid)
        for tid in sorted(wanted):
            kept = producers.get(tid)
            # kept ones normally have a transaction open (the pre-rebalance commit began one);
            # one ended by a commit with start_new_transaction=False is begun again
            if kept is None or not kept._txn_manager.is_in_transaction():
                await producer.maybe_begin_transaction(tid)


class LogEnds:
    """Per changelog partition: the last offset the consumer handed out and its position after that fetch.

    Written by the consumer thread after every fetch, read by :class:`EosRecovery`.
    """

    def __init__(self) -> None:
        self.ends: dict[Any, tuple[int | None, int | None]] = {}

    def clear(self) -> None:
        self.ends = {}

    def observe(self, consumer: Any, records: dict[Any, list[Any]], topics: set[str]) -> None:
        subscription = consumer._subscription.subscription
        assignment = subscription.assignment if subscription is not None else None
        if assignment is None:
            return
        ends = self.ends
        for tp in consumer.assignment():
            if tp.topic not in topics:
                continue
            state = assignment.state_value(tp)
            position = state.position if state is not None and state.has_valid_position else None
            got = records.get(tp)
            last = got[-1].offset if got else ends.get(tp, (None, None))[0]
            ends[tp] = (last, position)


class EosRecovery(Recovery):
    """Faust's recovery; under exactly-once a partition whose log ends in transaction markers is done."""

    def need_recovery(self) -> bool:
        log_ends = getattr(self.app.consumer, "log_ends", None)
        if not self.app.in_transaction or log_ends is None:
            return super().need_recovery()
        ends = log_ends.ends
        offsets, highwaters = self.active_offsets, self.active_highwaters
        for tp, highwater in list(highwaters.items()):
            seen = offsets[tp]
            if highwater is None or seen is None or highwater - seen <= 0:
                continue
            last, position = ends.get(tp, (None, None))
            # position > highwater: everything up to the log end was fetched; the offsets
            # after the last record handed out are markers (or aborted records)
            if position is not None and position > highwater and (last is None or seen >= last):
                offsets[tp] = highwater
                continue
            return True
        return False


def install_recovery(app: Any) -> None:
    """Make ``app.tables`` use :class:`EosRecovery` (before the app starts)."""
    tables = app.tables
    tables._recovery = EosRecovery(app, tables, beacon=tables.beacon, loop=tables.loop)


def prepare_state_dir(tabledir: Path) -> bool:
    """Under exactly-once: drop the local tables unless the last stop was clean; True if they were dropped.

    The marker is removed here and written by :func:`mark_clean_stop`, so a worker
    killed at any point after this call rebuilds from the changelog next time.
    """
    marker = tabledir.parent / CLEAN_STOP_MARKER
    clean = marker.exists()
    marker.unlink(missing_ok=True)
    if clean or not tabledir.exists() or not any(tabledir.iterdir()):
        return False
    log.warning("exactly-once: the last stop was not clean; the local state in %s is dropped and rebuilt from "
                "the committed changelog", tabledir)
    shutil.rmtree(tabledir)
    return True


def mark_clean_stop(tabledir: Path) -> None:
    """After a clean stop: every local write belongs to a committed transaction."""
    tabledir.parent.mkdir(parents=True, exist_ok=True)
    (tabledir.parent / CLEAN_STOP_MARKER).touch()
