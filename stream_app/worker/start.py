"""Start-up of one worker: checks that fail fast, then the Faust worker until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import sys
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from prometheus_client import CollectorRegistry, ProcessCollector, PlatformCollector, GCCollector

from stream_app.errors import BrokerError, ConfigError, ModelLoadError, StateDirError
from stream_app.worker.metrics import Metrics
from stream_app.core.recommender import Policy, Recommender
from stream_app.core.rerank import Strengths
from stream_app.settings import Settings

log = logging.getLogger("streamrec.worker")


def load_recommender(settings: Settings) -> tuple[Recommender, Any]:
    """The checkpoint as a Recommender; ModelLoadError with one clear line if it cannot serve."""
    from models.checkpoint import CheckpointError, load_checkpoint

    path = Path(settings.model.path)
    if not path.is_file():
        raise ModelLoadError(f"model checkpoint {str(path)!r} not found (train one: streamrec train TSV --out {path})")
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as exc:
        raise ModelLoadError(f"model checkpoint {str(path)!r} cannot be used: {exc}") from exc
    m = settings.model
    policy = Policy(
        k=m.k,
        exclude_clicked=m.exclude_clicked,
        recent_items=m.recent_items,
        gap_s=settings.session.gap_s,
        keep_across_sessions=settings.session.keep_across_sessions,
        max_per_attribute=m.max_per_attribute,
        capped_prefix=m.capped_attributes,
        rerank=Strengths(m.rerank_mmr, m.rerank_calibration, m.rerank_long_tail),
        candidates=m.candidates,
        also_k=m.also_k,
        also_temperature=m.also_temperature,
    )
    counts = np.asarray(ckpt.item_counts, dtype=np.float32)
    if counts.shape[0] != len(ckpt.item_ids):
        counts = np.zeros(len(ckpt.item_ids), dtype=np.float32)
        for rank, i in enumerate(ckpt.popular(len(ckpt.item_ids))):
            counts[i] = len(ckpt.item_ids) - rank
    from stream_app.core.catalogue import attributes_of, excluded_by
    from stream_app.core.ranking import ranker_for

    if m.rerank_calibration and attributes_of(ckpt) is None:
        raise ModelLoadError("STREAMREC_MODEL__RERANK_CALIBRATION needs a checkpoint trained with --item-attributes")
    if m.max_per_attribute and attributes_of(ckpt) is None:
        raise ModelLoadError("STREAMREC_MODEL__MAX_PER_ATTRIBUTE needs a checkpoint trained with --item-attributes")
    pipeline = None
    if m.ranker:
        from models.ranker import RankerError, load_ranker

        try:
            pipeline = load_ranker(m.ranker, ckpt)
        except RankerError as exc:
            raise ModelLoadError(f"STREAMREC_MODEL__RANKER: {exc}") from exc
    rec = Recommender(ckpt.model, ckpt.item_ids, counts, ckpt.version, policy, pipeline=pipeline,
                      ranker=ranker_for(settings, ckpt.model, ckpt.version),
                      attributes=attributes_of(ckpt, m.new_item_scale), excluded=excluded_by(ckpt, m.excluded_attributes),
                      profile_vocabulary=[str(a) for a in ckpt.meta.get("profile_attributes") or ()])
    trained_gap = ckpt.meta.get("gap_seconds")
    if rec.user_width and trained_gap and float(trained_gap) != settings.session.gap_s:
        log.warning("the session-aware model was trained with sessions cut at %.0f s, the worker cuts them at "
                    "STREAMREC_SESSION__GAP_S=%.0f s: set it to the training gap", float(trained_gap), settings.session.gap_s)
    return rec, ckpt


def new_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def graceful_worker(app: Any, settings: Settings) -> Any:
    """A faust Worker whose SIGTERM/SIGINT shutdown is bounded by ``worker.shutdown_grace_s``.

    Faust stops the agents, commits the offsets of processed clicks and flushes
    the producer and RocksDB on a signal; if that hangs (a broker gone mid-flush),
    a watchdog thread exits the process hard after the grace period. Nothing is
    lost then either: uncommitted clicks are redelivered and the replay guard
    absorbs those already applied.
    """
    from faust import Worker

    grace = settings.worker.shutdown_grace_s

    class GracefulWorker(Worker):  # type: ignore[misc, valid-type]
        def _setup_spinner_handler(self, logger: Any, level: int) -> None:
            # Faust's progress spinner sets the root logger to DEBUG whatever the
            # loglevel, so every debug call in aiokafka and Faust built a LogRecord
            # (6% of the worker's CPU at saturation, docs/performance.md).
            return None

        def _schedule_shutdown(self, signal: Any) -> None:
            if not self._signal_stop_time:
                arm_watchdog(grace, grace)
            super()._schedule_shutdown(signal)

        def _crash(self, reason: BaseException) -> None:
            # A crash stops the worker as a signal does, and that stop can hang the same way
            # (Faust waits for clicks that will never be acked after a refused write): bound it.
            if not self._crashed.is_set():
                arm_watchdog(grace, grace, access_error_line(reason, settings))
            super()._crash(reason)

    return GracefulWorker(app, loglevel=settings.worker.loglevel, quiet=True)


def arm_watchdog(after_s: float, grace: float, error_line: str | None = None) -> None:
    """Exit the process hard ``after_s`` from now (:func:`_hard_exit`) unless it has exited by then."""
    watchdog = threading.Timer(after_s, _hard_exit, args=(grace, error_line))
    watchdog.daemon = True
    watchdog.start()


def _hard_exit(grace: float, error_line: str | None = None) -> None:
    if error_line:  # the one line the worker would have printed after a clean stop
        # straight to fd 2: while Faust runs, sys.stderr is redirected into its log with a prefix
        os.write(2, f"streamrec worker: error: {error_line}\n".encode("utf-8", "replace"))
        os._exit(2)
    print(f"streamrec worker: shutdown took longer than {grace:g}s (STREAMREC_WORKER__SHUTDOWN_GRACE_S); "
          "exiting without a clean stop", file=sys.stderr, flush=True)
    os._exit(3)


# -- Kafka refusing the worker: credentials, TLS, ACLs -------------------------------------------------------

SECURITY_DOC = "docs/operations.md#security"
# Kafka error codes that a restart does not cure: TOPIC_/GROUP_/CLUSTER_AUTHORIZATION_FAILED,
# TRANSACTIONAL_ID_AUTHORIZATION_FAILED, SASL_AUTHENTICATION_FAILED, DELEGATION_TOKEN_AUTHORIZATION_FAILED
_ACCESS_ERRNOS = {29: "topic", 30: "group", 31: "cluster", 53: "transactional id", 58: "authentication",
                  65: "delegation token"}


class KafkaAccessError(BrokerError):
    """Kafka refused the worker's credentials or one of its operations (SASL, TLS, ACLs)."""


def _who(settings: Settings) -> str:
    k = settings.kafka
    if k.security_protocol.startswith("SASL"):
        return f"SASL user {k.sasl_username!r} ({k.sasl_mechanism})"
    if k.ssl_certfile:
        return f"the TLS client certificate {k.ssl_certfile!r}"
    return f"the anonymous {k.security_protocol} client"


def _redact(line: str, settings: Settings) -> str:
    password = settings.kafka.sasl_password.get_secret_value()
    return line.replace(password, "***") if password else line


def _what_the_worker_needs(settings: Settings) -> str:
    t, app_id = settings.topics, settings.worker.app_id
    return (f"the worker needs READ on topic {t.clicks!r}, WRITE on {t.recommendations!r} and {t.dead_letter!r}, "
            f"READ+WRITE+CREATE on topics prefixed {app_id + '-'!r} (state changelog, Faust's leader topic) "
            f"and READ on group {app_id!r} ({SECURITY_DOC})")


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def access_error_line(exc: BaseException | None, settings: Settings) -> str | None:
    """One line for an authentication or authorization refusal (aiokafka's or kafka-python's), else None."""
    for e in _chain(exc):
        if isinstance(e, KafkaAccessError):
            return str(e)
        errno = getattr(type(e), "errno", None)
        kind = _ACCESS_ERRNOS.get(errno) if isinstance(errno, int) else None
        if kind is None and type(e).__name__ == "AuthenticationFailedError":  # aiokafka, outside the broker codes
            kind = "authentication"
        if kind is None:
            continue
        detail = ", ".join(", ".join(sorted(map(str, a))) if isinstance(a, (set, frozenset, list, tuple)) else str(a)
                           for a in e.args) or type(e).__name__
        if kind == "authentication":
            return _redact(f"Kafka rejected the credentials of {_who(settings)} at {settings.kafka.bootstrap_servers}: "
                           f"{type(e).__name__}: {detail}; check STREAMREC_KAFKA__SASL_USERNAME and "
                           f"STREAMREC_KAFKA__SASL_PASSWORD ({SECURITY_DOC})", settings)
        return _redact(f"Kafka denied {_who(settings)} access ({type(e).__name__}: {kind} {detail}): "
                       f"{_what_the_worker_needs(settings)}", settings)
    return None


class _ClientFailures(logging.Handler):
    """Collects what aiokafka and kafka-python log and then retry away: SASL refusals, TLS handshake failures.

    Both give up with "Unable to bootstrap" and nothing else; the reason is only in their logs.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.auth: BaseException | None = None
        self.tls: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else (record.args,)
        for arg in args:
            if not isinstance(arg, BaseException):
                continue
            if self.auth is None and getattr(type(arg), "errno", None) in _ACCESS_ERRNOS:
                self.auth = arg
            elif self.tls is None and (isinstance(arg, ssl.SSLError) or "Handshake failed" in str(arg)):
                self.tls = str(arg)

    def tls_line(self, settings: Settings) -> str | None:
        if self.tls is None:
            return None
        return (f"TLS handshake with Kafka at {settings.kafka.bootstrap_servers} failed ({self.tls}); check "
                f"STREAMREC_KAFKA__SSL_CAFILE (the CA that signed the brokers' certificates) ({SECURITY_DOC})")


def probe_credentials(settings: Settings, timeout_s: float = 10.0) -> None:
    """Connect once as Faust will (aiokafka, the same SSL context and SASL settings); KafkaAccessError if refused.

    aiokafka reports a refused password or an unknown CA as "Unable to bootstrap" and logs the reason;
    this turns that into one line, within a second instead of after the admin client's 15 s of retries.
    Anything else (brokers not reachable yet) is left to the admin client's own retries and message.
    PLAINTEXT and the embedded broker are not probed.
    """
    k = settings.kafka
    if k.security_protocol == "PLAINTEXT" or k.embedded or not k.servers:
        return
    from aiokafka.client import AIOKafkaClient

    from stream_app.worker.app import aiokafka_kwargs

    seen = _ClientFailures()

    async def connect() -> None:
        client = AIOKafkaClient(**aiokafka_kwargs(settings), request_timeout_ms=int(timeout_s * 1000))
        try:
            await asyncio.wait_for(client.bootstrap(), timeout_s)
        finally:
            await client.close()

    def in_thread() -> None:  # its own event loop, leaving the main thread's to Faust
        try:
            asyncio.run(connect())
        except Exception:  # noqa: BLE001 - the reason, if it is a refusal, is in ``seen``
            pass

    logger = logging.getLogger("aiokafka")
    logger.addHandler(seen)
    try:
        probe = threading.Thread(target=in_thread, name="streamrec-kafka-probe", daemon=True)
        probe.start()
        probe.join(timeout_s + 5)
    finally:
        logger.removeHandler(seen)
    line = access_error_line(seen.auth, settings) if seen.auth is not None else seen.tls_line(settings)
    if line is not None:
        raise KafkaAccessError(_redact(line, settings))


@contextmanager
def _explained_access_errors(settings: Settings) -> Iterator[None]:
    """Turn a kafka-python failure whose cause is a refusal (credentials, TLS, ACLs) into one KafkaAccessError line."""
    seen = _ClientFailures()
    logger = logging.getLogger("kafka")
    logger.addHandler(seen)
    try:
        yield
    except KafkaAccessError:
        raise
    except Exception as exc:
        line = access_error_line(exc, settings) or access_error_line(seen.auth, settings) or seen.tls_line(settings)
        if line is None:
            raise
        raise KafkaAccessError(_redact(line, settings)) from None
    finally:
        logger.removeHandler(seen)


def check_access(settings: Settings) -> None:
    """KafkaAccessError, one line, when the brokers report that the worker may not do what it must.

    Asks for the operations the brokers allow this principal on each topic and on the
    group (KIP-430: Metadata and DescribeGroups report them), before Faust starts: without
    READ on the clicks topic Faust's fetcher crashes with tracebacks, and without WRITE
    on the recommendations topic every list fails to deliver while ``/readyz`` stays 200.
    Brokers that report nothing (the embedded one) are not checked.
    """
    from kafka.errors import GroupAuthorizationFailedError, KafkaError

    from stream_app.worker.topics import admin_client, changelog_topic

    if settings.kafka.embedded:
        return
    t, app_id = settings.topics, settings.worker.app_id
    leader = f"{app_id}-__assignor-__leader"
    needs = {t.clicks: {"READ"}, t.recommendations: {"WRITE"}, t.dead_letter: {"WRITE"},
             changelog_topic(settings): {"READ", "WRITE"}, leader: {"READ"}}
    missing: list[str] = []
    admin = admin_client(settings)
    try:
        for desc in admin.describe_topics(list(needs)):
            name, code = desc.get("name"), desc.get("error_code", 0)
            if name not in needs:
                continue
            if code == 29:
                missing.append(f"DESCRIBE topic {name!r}")
                continue
            ops = set(desc.get("authorized_operations") or ())
            if not ops:
                continue  # not reported
            want = needs[name] | ({"CREATE"} if code == 3 else set())  # Faust creates its leader topic
            missing += [f"{op} topic {name!r}" for op in sorted(want - ops)]
        try:
            group = admin.describe_groups([app_id]).get(app_id) or {}
        except GroupAuthorizationFailedError:
            missing.append(f"READ group {app_id!r}")
        except (KafkaError, ValueError):
            pass  # not reported (kafka-python cannot decode some brokers' answers)
        else:
            ops = set(group.get("authorized_operations") or ())
            if ops and "READ" not in ops:
                missing.append(f"READ group {app_id!r}")
    finally:
        admin.close()
    if missing:
        raise KafkaAccessError(_redact(f"Kafka ACLs do not let {_who(settings)} {', '.join(missing)}: "
                                       f"{_what_the_worker_needs(settings)}", settings))


class _Refusal:
    """A refusal seen while running: its line, and the worker to stop for it (set once it exists)."""

    def __init__(self) -> None:
        self.line: str | None = None
        self.worker: Any = None


# A stop after a refused write does not need the full grace period: nothing more can be delivered
# and the clicks after the failure are not acked (they are consumed again after the fix).
REFUSAL_STOP_S = 10.0


def _stop_on_refused_delivery(wiring: Any, shell: Any, settings: Settings) -> _Refusal:
    """A timer: a delivery that Kafka refused (an ACL revoked while running) stops the worker with one line.

    ``DeliveryAcks`` stops acking after a failed delivery and ``/healthz`` fails, which is the
    cure for a broker that lost a write; a refusal is not cured by a restart, so the worker stops
    instead and ``run`` raises the line, without waiting for clicks that will never be acked.
    """
    app = wiring.app
    refusal = _Refusal()

    @app.timer(interval=0.5)
    async def stop_on_refused_delivery() -> None:
        failure = shell.acks.failure if shell.acks is not None else None
        line = access_error_line(failure, settings) if failure is not None else None
        if line is None or refusal.line is not None or refusal.worker is None:
            return
        refusal.line = line
        with warnings.catch_warnings():  # read at stop time only, so setting it late is fine
            warnings.simplefilter("ignore")
            app.conf.stream_wait_empty = False
        arm_watchdog(min(settings.worker.shutdown_grace_s, REFUSAL_STOP_S), settings.worker.shutdown_grace_s, line)
        asyncio.ensure_future(refusal.worker.stop())  # as a signal would, without the crash tracebacks

    del stop_on_refused_delivery
    return refusal


def run(settings: Settings) -> int:
    """Blocks until the worker stops; returns the exit code."""
    from faust.exceptions import ConsistencyError

    from stream_app.worker.agents import attach
    from stream_app.worker.app import build
    from stream_app.worker.topics import changelog_topic, ensure_topics
    from stream_app.worker.transactions import mark_clean_stop, prepare_state_dir

    if settings.worker.exactly_once and settings.kafka.embedded:
        raise ConfigError("STREAMREC_WORKER__PROCESSING_GUARANTEE=exactly_once needs Apache Kafka: the embedded "
                          "broker has no transactions (use at_least_once there, or STREAMREC_BROKER__KIND=kafka)")
    torch.set_num_threads(settings.worker.torch_threads)
    recommender, ckpt = load_recommender(settings)
    probe_credentials(settings)
    with _explained_access_errors(settings):
        ensure_topics(settings)
        check_access(settings)
    Path(settings.worker.data_dir).mkdir(parents=True, exist_ok=True)
    metrics = Metrics.create(new_registry())
    metrics.serving(ckpt)
    wiring = build(settings)
    tabledir = Path(wiring.app.conf.tabledir)
    if settings.worker.exactly_once:
        prepare_state_dir(tabledir)
    shell = attach(wiring, recommender, metrics, settings, loader=load_recommender)
    refusal = _stop_on_refused_delivery(wiring, shell, settings)
    print(
        f"streamrec worker: model {ckpt.version} ({len(ckpt.item_ids)} items), "
        f"brokers {settings.kafka.bootstrap_servers}{' (embedded)' if settings.kafka.embedded else ''}, "
        f"http://{settings.worker.web_host}:{settings.worker.web_port}/metrics",
        flush=True,
    )
    worker = refusal.worker = graceful_worker(wiring.app, settings)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        if settings.worker.exactly_once and not exc.code and getattr(worker, "crash_reason", None) is None:
            mark_clean_stop(tabledir)
        if refusal.line is not None:
            raise KafkaAccessError(refusal.line) from None
        crash = getattr(worker, "crash_reason", None)
        refused = access_error_line(crash, settings) if crash is not None else None
        if refused is not None:  # a refusal inside Faust (an ACL revoked, or missed by check_access)
            raise KafkaAccessError(refused) from None
        if not isinstance(crash, ConsistencyError):
            return int(exc.code or 0)
        # Table recovery found RocksDB ahead of the changelog: the topics were
        # recreated (or the embedded broker, which keeps them in memory, restarted).
        raise StateDirError(
            f"the data dir {str(settings.worker.data_dir)!r} holds state for changelog offsets that "
            f"{changelog_topic(settings)!r} does not have (topic recreated or broker reset): delete the data "
            "dir to rebuild the state from the changelog"
        ) from crash
    return 0 if sys.exc_info()[0] is None else 1
