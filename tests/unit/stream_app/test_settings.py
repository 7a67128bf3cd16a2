"""One settings class: nested env variables, secrets, and the embedded broker's quirks only when it is used."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from stream_app.worker.app import faust_config, rocksdb_options
from stream_app.settings import Settings
from stream_app.worker.topics import client_kwargs


def test_nested_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_KAFKA__BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("STREAMREC_TOPICS__PARTITIONS", "12")
    monkeypatch.setenv("STREAMREC_MODEL__K", "50")
    monkeypatch.setenv("STREAMREC_SESSION__GAP_S", "600")
    s = Settings()
    assert s.kafka.servers == ["k1:9092", "k2:9092"] and not s.kafka.needs_embedded
    assert (s.topics.partitions, s.model.k, s.session.gap_s) == (12, 50, 600.0)


def test_bad_value_fails_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_TOPICS__PARTITIONS", "0")
    with pytest.raises(ValidationError):
        Settings()


def test_sasl_password_is_secret_and_reaches_the_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_KAFKA__BOOTSTRAP_SERVERS", "k1:9093")
    monkeypatch.setenv("STREAMREC_KAFKA__SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("STREAMREC_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("STREAMREC_KAFKA__SASL_USERNAME", "svc")
    monkeypatch.setenv("STREAMREC_KAFKA__SASL_PASSWORD", "hunter2")
    s = Settings()
    assert "hunter2" not in repr(s)
    kw = client_kwargs(s)
    assert (kw["sasl_mechanism"], kw["sasl_plain_username"], kw["sasl_plain_password"]) == (
        "SCRAM-SHA-512", "svc", "hunter2")
    creds = faust_config(s)["broker_credentials"]
    assert creds is not None and creds.username == "svc"


def test_embedded_quirks_only_for_the_embedded_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_KAFKA__BOOTSTRAP_SERVERS", "kafka:9092")
    real = faust_config(Settings())
    assert "producer_max_batch_size" not in real
    assert real["broker_session_timeout"] == 10.0 and real["broker_heartbeat_interval"] == 3.0  # the Kafka settings
    embedded = faust_config(Settings().with_embedded_broker("127.0.0.1:1234"))
    assert embedded["broker_session_timeout"] == 6.0 and embedded["broker_heartbeat_interval"] == 1.0
    assert embedded["broker"] == "kafka://127.0.0.1:1234"


def test_rocksdb_memory_is_explicit() -> None:
    opts = rocksdb_options(Settings())
    assert opts["driver"] == "rocksdict"
    assert opts["block_cache_size"] < 2 * 1024**3  # Faust's default is 2 GiB per partition


def test_to_env_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings().with_embedded_broker("127.0.0.1:9")
    for k, v in s.to_env().items():
        monkeypatch.setenv(k, v)
    assert Settings() == s
