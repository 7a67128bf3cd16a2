"""Topic administration with kafka-python: create what is missing, refuse what has the wrong shape."""

from __future__ import annotations

import time
from typing import Any

from stream_app.errors import BrokerError, TopicError
from stream_app.settings import Settings


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """kafka-python connection arguments (bootstrap, SASL, SSL) from the settings."""
    k = settings.kafka
    kwargs: dict[str, Any] = {"bootstrap_servers": k.servers, "security_protocol": k.security_protocol}
    if k.security_protocol.startswith("SASL"):
        kwargs.update(
            sasl_mechanism=k.sasl_mechanism,
            sasl_plain_username=k.sasl_username,
            sasl_plain_password=k.sasl_password.get_secret_value(),
        )
    if k.security_protocol.endswith("SSL"):
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            if getattr(k, name):
                kwargs[name] = getattr(k, name)
    return kwargs


def changelog_topic(settings: Settings) -> str:
    """Faust's name for the state table's changelog."""
    return f"{settings.worker.app_id}-user_state-changelog"


def wanted_topics(settings: Settings) -> dict[str, dict[str, str]]:
    """Every topic the worker reads or writes, with its configs."""
    t = settings.topics
    return {
        t.clicks: {},
        t.recommendations: {"cleanup.policy": "compact"},
        t.dead_letter: {},
        changelog_topic(settings): {"cleanup.policy": "compact"},
        **({t.items: {"cleanup.policy": "compact"},  # any partition count: every worker reads it whole
            t.items_dead_letter: {"cleanup.policy": "compact"}} if t.items else {}),
        **({t.users: {"cleanup.policy": "compact"},  # read whole by every worker, as the catalogue
            t.users_dead_letter: {"cleanup.policy": "compact"}} if t.users else {}),
        **({t.user_vectors: {"cleanup.policy": "compact"}} if t.user_vectors else {}),
    }


def admin_client(settings: Settings, timeout_s: float = 15.0) -> Any:
    """A connected KafkaAdminClient, or BrokerError with the address in the message."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout_s
    while True:
        # kafka-python waits bootstrap_timeout_ms (30 s by default) per attempt:
        # bound every attempt by what is left, so an unreachable broker fails
        # within ``timeout_s``.
        left_ms = max(1000, int((deadline - time.monotonic()) * 1000))
        try:
            return KafkaAdminClient(request_timeout_ms=int(timeout_s * 1000), bootstrap_timeout_ms=left_ms,
                                    **client_kwargs(settings))
        except (KafkaError, OSError, ValueError) as exc:
            if time.monotonic() >= deadline - 0.5:
                detail = str(exc).removeprefix(f"{exc.__class__.__name__}: ") or exc.__class__.__name__
                raise BrokerError(
                    f"cannot reach Kafka at {settings.kafka.bootstrap_servers!r} within {timeout_s:.0f}s: {detail}"
                ) from exc
            time.sleep(0.5)


def partition_counts(admin: Any, names: list[str]) -> dict[str, int]:
    """Partitions of each existing topic among ``names``."""
    out: dict[str, int] = {}
    for desc in admin.describe_topics(names):
        if desc.get("error_code", 0) == 0 and desc.get("partitions"):
            out[desc.get("name") or desc.get("topic")] = len(desc["partitions"])
    return out


def ensure_topic(settings: Settings, name: str, configs: dict[str, str]) -> None:
    """Create one topic if it is missing (a job's own output topic, not the worker's)."""
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    admin = admin_client(settings)
    try:
        if name not in set(admin.list_topics()):
            admin.create_topics([NewTopic(name, settings.topics.partitions, settings.topics.replication_factor,
                                          topic_configs=configs)], timeout_ms=15000)
    except TopicAlreadyExistsError:
        pass
    except KafkaError as exc:
        raise TopicError(f"cannot create topic {name!r}: {exc}") from exc
    finally:
        admin.close()


def ensure_topics(settings: Settings) -> dict[str, int]:
    """Create missing topics with the configured partition count; fail on a mismatch.

    The table writes a user's state to the partition of the click being
    processed, so the clicks topic and the changelog must have the same count.
    """
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    wanted = wanted_topics(settings)
    n = settings.topics.partitions
    admin = admin_client(settings)
    try:
        existing = set(admin.list_topics())
        missing = [name for name in wanted if name not in existing]
        if missing and settings.topics.create_missing:
            new = [NewTopic(name, n, settings.topics.replication_factor, topic_configs=wanted[name])
                   for name in missing]
            try:
                admin.create_topics(new, timeout_ms=15000)
            except TopicAlreadyExistsError:
                pass
            except KafkaError as exc:
                raise TopicError(f"cannot create topics {missing}: {exc}") from exc
        counts: dict[str, int] = {}
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            counts = partition_counts(admin, list(wanted))
            if len(counts) == len(wanted):
                break
            time.sleep(0.2)
        for name in (settings.topics.clicks, changelog_topic(settings), settings.topics.recommendations):
            if name not in counts:
                raise TopicError(f"topic {name!r} does not exist (create it with {n} partitions)")
            if name != settings.topics.recommendations and counts[name] != n:
                raise TopicError(
                    f"topic {name!r} has {counts[name]} partitions but STREAMREC_TOPICS__PARTITIONS is {n}; "
                    "the clicks topic and the state changelog must both have exactly that many"
                )
        return counts
    finally:
        admin.close()
