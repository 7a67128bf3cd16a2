"""The SASL/SSL settings against a real Apache Kafka: TLS, SCRAM-SHA-512 and ACLs (stream_app/brokers/kafka_security.py).

One secured single-node cluster for the module (CLIENT listener SASL_SSL, INTERNAL
listener for the super user ``admin``, CONTROLLER over mutual TLS, StandardAuthorizer
with ``allow.everyone.if.no.acl.found=false``). Each test gets its own topics and app
id, pre-created by the admin, and the ACLs of ``stream_app.brokers.kafka_security.worker_acls``
for the worker's principal ``User:streamrec`` (some left out or revoked on purpose).

What the worker must do when Kafka refuses it: exit non-zero within a bounded time with
one ``streamrec worker: error: ...`` line that says why, never a retry loop behind a
green ``/readyz``; and never print the password.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest

from stream_app.lab.harness import TopicReader, WorkerProcess, dead_letter_reasons, http_get, recommendations
from stream_app.settings import Settings
from stream_app.worker.auth import bearer_ok
from tests.integration.helpers import click, scenario, send_all

ERROR_PREFIX = "streamrec worker: error:"
pytestmark = pytest.mark.integration


# -- the bearer token, without a broker ---------------------------------------------------------------------


def _request(**headers: str) -> Any:
    return SimpleNamespace(headers=headers)


def test_bearer_token_check() -> None:
    assert bearer_ok(_request(), "")  # no token configured: open
    assert bearer_ok(_request(Authorization="Bearer s3cret"), "s3cret")
    assert bearer_ok(_request(Authorization="bearer  s3cret "), "s3cret")
    assert not bearer_ok(_request(), "s3cret")
    assert not bearer_ok(_request(Authorization="Bearer wrong"), "s3cret")
    assert not bearer_ok(_request(Authorization="Basic s3cret"), "s3cret")
    assert not bearer_ok(_request(Authorization="s3cret"), "s3cret")
    assert not bearer_ok(_request(Authorization="Bearer s3cre\u00e9"), "s3cret")  # non-ASCII: False, no raise


# -- the secured cluster ------------------------------------------------------------------------------------


def _unavailable() -> str | None:
    from stream_app.brokers.kafka import cache_dir, unavailable_reason
    from stream_app.brokers.kafka_security import unavailable_reason as no_tls

    if not shutil.which("java"):
        return "Apache Kafka needs Java 17 or newer (java not on PATH)"
    b = Settings().broker
    return unavailable_reason(b.kafka_version, cache_dir(b.kafka_cache_dir)) or no_tls()


_WHY_NOT = _unavailable()
needs_kafka = pytest.mark.skipif(_WHY_NOT is not None, reason=f"{_WHY_NOT} (deploy/install-ci-deps.sh)")


@pytest.fixture(scope="module")
def secured() -> Iterator[SimpleNamespace]:
    from stream_app.brokers.kafka import KafkaCluster
    from stream_app.brokers.kafka_security import KafkaSecurity

    b = Settings().broker
    security = KafkaSecurity.create(users=("streamrec",))
    cluster = KafkaCluster(version=b.kafka_version, heap_mb=b.kafka_heap_mb, cache=b.kafka_cache_dir,
                           security=security)
    try:
        cluster.start()
        yield SimpleNamespace(cluster=cluster, security=security)
    finally:
        cluster.stop()
        security.cleanup()


def _resource(settings: Settings, what: str) -> tuple[str, str]:
    """("topic" or "group", its name) for "clicks", "recommendations" or "group"."""
    if what == "group":
        return "group", settings.worker.app_id
    return "topic", getattr(settings.topics, what)


def _prepare(secured: SimpleNamespace, checkpoint: Path, tmp_path: Path, without: str = "",
             password: str | None = None, **worker: Any) -> tuple[Settings, Settings, list[Any]]:
    """(the worker's settings, the admin's settings, the ACLs granted) for fresh topics and app id.

    ``without``: one ACL not granted, e.g. "WRITE recommendations", "READ clicks", "READ group".
    """
    from stream_app.brokers.kafka_security import create_acls, worker_acls
    from stream_app.worker.topics import ensure_topics

    tag = uuid.uuid4().hex[:8]
    base = Settings()
    base = base.model_copy(update={
        "kafka": base.kafka.model_copy(update={"session_timeout_s": 6.0, "heartbeat_interval_s": 1.0}),
        "topics": base.topics.model_copy(update={
            "clicks": f"clicks-{tag}", "recommendations": f"recs-{tag}", "dead_letter": f"dlq-{tag}", "partitions": 2,
            "items": f"items-{tag}", "items_dead_letter": f"items-dlq-{tag}",
            "users": f"users-{tag}", "users_dead_letter": f"users-dlq-{tag}", "user_vectors": f"uv-{tag}",
            "segments": f"seg-{tag}",
        }),
        "model": base.model.model_copy(update={"path": checkpoint}),
        "worker": base.worker.model_copy(update={"app_id": f"streamrec-{tag}", "data_dir": tmp_path / "data",
                                                 "loglevel": "INFO", "shutdown_grace_s": 10.0, **worker}),
    })
    sec, cluster = secured.security, secured.cluster
    admin = sec.admin_settings(base, cluster)
    ensure_topics(admin)  # as the super user: the worker's user may not create the input and output topics
    leave_out = []
    if without:
        op, what = without.split()
        leave_out.append((_resource(base, what)[1], op))
    acls = worker_acls(base, leave_out=leave_out)
    create_acls(cluster, acls)
    return sec.client_settings(base, cluster, password=password), admin, acls


def _error_lines(log: Path, wait_s: float = 3.0) -> list[str]:
    """The worker's ``streamrec worker: error:`` lines (waiting a little for the log to be drained)."""
    deadline = time.monotonic() + wait_s
    while True:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith(ERROR_PREFIX)]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def _wait_exit(worker: WorkerProcess, timeout_s: float) -> tuple[int | None, float, bool]:
    """(exit code or None, seconds waited, whether /readyz ever said 200 meanwhile)."""
    assert worker.proc is not None
    start = time.monotonic()
    ready = False
    while time.monotonic() - start < timeout_s:
        if worker.proc.poll() is not None:
            break
        try:
            ready = ready or http_get(worker.base_url + "/readyz", timeout=0.5)[0] == 200
        except OSError:
            pass
        time.sleep(0.3)
    try:
        code: int | None = worker.proc.wait(1.0)
    except subprocess.TimeoutExpired:
        code = None
    return code, time.monotonic() - start, ready


def _assert_no_secret(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret and secret not in text, "a secret appears in the worker's output"


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=3) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# -- (a) the worker over SASL_SSL + SCRAM-SHA-512, with the bearer token ------------------------------------


@needs_kafka
def test_worker_over_sasl_ssl_with_acls(secured: SimpleNamespace, small_checkpoint: Path, tmp_path: Path) -> None:
    token = uuid.uuid4().hex
    ws, admin, _ = _prepare(secured, small_checkpoint, tmp_path, api_token=token)
    password = ws.kafka.sasl_password.get_secret_value()
    assert ws.kafka.security_protocol == "SASL_SSL" and ws.kafka.sasl_mechanism == "SCRAM-SHA-512"
    assert ws.kafka.ssl_cafile and Path(ws.kafka.ssl_cafile).is_file()

    # the ACLs are enforced: the worker's user may not read what it writes, nor touch another app's group
    from stream_app.worker.topics import admin_client

    client = admin_client(ws)
    try:
        ops = {d["name"]: set(d.get("authorized_operations") or ()) for d in
               client.describe_topics([ws.topics.clicks, ws.topics.recommendations])}
    finally:
        client.close()
    assert "READ" in ops[ws.topics.clicks] and "WRITE" not in ops[ws.topics.clicks]
    assert "WRITE" in ops[ws.topics.recommendations] and "READ" not in ops[ws.topics.recommendations]

    log = tmp_path / "worker.log"
    clicks = scenario(n_users=10, clicks_per_user=3)
    bad = [(b"user-x", b"not json at all"), (b"user-x", b'{"user_id": "user-x", "ts": 5}')]
    with WorkerProcess(ws, log_path=log) as worker:
        worker.wait_ready(120)
        send_all(admin, clicks + bad)
        reader = TopicReader(admin, ws.topics.recommendations)  # the super user, over TLS
        recs = recommendations(reader.read_until(len(clicks), 60, idle_s=1))
        reader.close()
        dlq_reader = TopicReader(admin, ws.topics.dead_letter)
        dlq = dlq_reader.read_until(len(bad), 30, idle_s=1)
        dlq_reader.close()
        metrics = worker.metrics()

        # (3) the user pages behind the bearer token; metrics and probes open
        user_url = worker.base_url + "/users/user-1/recommendations"
        assert _get(user_url)[0] == 401
        assert _get(user_url, "wrong")[0] == 401
        status, body = _get(user_url, token)
        assert status == 200 and b'"user_id"' in body
        assert _get(worker.base_url + "/users/nobody/recommendations", token)[0] == 404
        for page in ("/metrics", "/healthz", "/readyz"):
            assert _get(worker.base_url + page)[0] == 200, page
        code = worker.stop()

    assert len(recs) == len(clicks)
    assert {r.user_id for r in recs} == {k.decode() for k, _ in clicks}
    assert sorted(dead_letter_reasons(dlq)) == ["missing_field", "not_json"]
    assert code == 0
    text = log.read_text(errors="replace")
    assert "streamrec worker: model" in text and not _error_lines(log, wait_s=0)
    # (d) the password (and the token) never in the log nor in /metrics
    _assert_no_secret(text, password, token)
    _assert_no_secret(metrics, password, token)


# -- (b) a wrong password -----------------------------------------------------------------------------------


@needs_kafka
def test_wrong_password_exits_with_one_line(secured: SimpleNamespace, small_checkpoint: Path, tmp_path: Path) -> None:
    wrong = "wrong-" + uuid.uuid4().hex
    ws, _, _ = _prepare(secured, small_checkpoint, tmp_path, password=wrong)
    log = tmp_path / "worker.log"
    with WorkerProcess(ws, log_path=log) as worker:
        code, waited, ready = _wait_exit(worker, 60)
    assert code not in (None, 0), f"still running after {waited:.0f}s:\n" + "\n".join(worker.tail)
    assert waited < 30, f"{waited:.0f}s to give up on a wrong password"
    assert not ready, "/readyz answered 200 with a wrong password"
    lines = _error_lines(log)
    assert len(lines) == 1, lines
    assert "rejected the credentials" in lines[0] and "authentication" in lines[0].lower(), lines[0]
    assert "'streamrec'" in lines[0] and "SCRAM-SHA-512" in lines[0]
    _assert_no_secret(log.read_text(errors="replace"), wrong, secured.security.password("streamrec"))


@needs_kafka
def test_wrong_ca_exits_with_one_line(secured: SimpleNamespace, small_checkpoint: Path, tmp_path: Path) -> None:
    from stream_app.brokers.kafka_security import make_tls

    other = make_tls(tmp_path / "other-ca")  # a CA that did not sign the brokers' certificate
    ws, _, _ = _prepare(secured, small_checkpoint, tmp_path)
    ws = ws.model_copy(update={"kafka": ws.kafka.model_copy(update={"ssl_cafile": str(other.ca_cert)})})
    log = tmp_path / "worker.log"
    with WorkerProcess(ws, log_path=log) as worker:
        code, waited, ready = _wait_exit(worker, 60)
    assert code not in (None, 0) and not ready, "\n".join(worker.tail)
    lines = _error_lines(log)
    assert len(lines) == 1 and "TLS handshake" in lines[0] and "SSL_CAFILE" in lines[0], lines


# -- (c) a missing ACL, at start and revoked while running --------------------------------------------------


@needs_kafka
@pytest.mark.parametrize("missing", ["WRITE recommendations", "READ clicks", "READ group"])
def test_missing_acl_exits_with_one_line(secured: SimpleNamespace, small_checkpoint: Path, tmp_path: Path,
                                         missing: str) -> None:
    ws, _, _ = _prepare(secured, small_checkpoint, tmp_path, without=missing)
    log = tmp_path / "worker.log"
    with WorkerProcess(ws, log_path=log) as worker:
        code, waited, ready = _wait_exit(worker, 90)
    assert code not in (None, 0), f"still running after {waited:.0f}s:\n" + "\n".join(worker.tail)
    assert not ready, "/readyz answered 200 without the ACL"
    lines = _error_lines(log)
    assert len(lines) == 1, lines
    op, what = missing.split()
    kind, name = _resource(ws, what)
    assert f"{op} {kind} {name!r}" in lines[0], lines[0]
    assert "ACLs do not let SASL user 'streamrec'" in lines[0] and "docs/operations.md#security" in lines[0]
    _assert_no_secret(log.read_text(errors="replace"), secured.security.password("streamrec"))


@needs_kafka
@pytest.mark.parametrize("revoked", ["WRITE recommendations", "READ clicks"])
def test_acl_revoked_while_running(secured: SimpleNamespace, small_checkpoint: Path, tmp_path: Path,
                                   revoked: str) -> None:
    """A refusal after start: Faust's fetcher crashes (READ) or every list fails to deliver (WRITE)."""
    from stream_app.brokers.kafka_security import delete_acls

    ws, admin, acls = _prepare(secured, small_checkpoint, tmp_path)
    op, what = revoked.split()
    kind, name = _resource(ws, what)
    log = tmp_path / "worker.log"
    with WorkerProcess(ws, log_path=log) as worker:
        worker.wait_ready(120)
        send_all(admin, [click("alice", "i1", 100.0)])
        reader = TopicReader(admin, ws.topics.recommendations)
        assert len(reader.read_until(1, 60)) == 1
        reader.close()
        drop = [a for a in acls if a.resource_pattern.resource_name == name and a.operation.name == op]
        assert delete_acls(secured.cluster, drop) == 1
        time.sleep(1.0)  # the brokers apply the ACL change from the metadata log
        send_all(admin, [click("alice", "i2", 101.0), click("bob", "i3", 102.0)])
        code, waited, _ = _wait_exit(worker, 60)
    assert code not in (None, 0), f"still running {waited:.0f}s after the revocation:\n" + "\n".join(worker.tail)
    lines = _error_lines(log)
    assert len(lines) == 1, lines
    assert "TopicAuthorizationFailedError" in lines[0] and name in lines[0], lines[0]
    assert "denied SASL user 'streamrec'" in lines[0] and "docs/operations.md#security" in lines[0]
    _assert_no_secret(log.read_text(errors="replace"), secured.security.password("streamrec"))
