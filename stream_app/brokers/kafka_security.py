"""TLS, SASL/SCRAM-SHA-512 and ACLs for a local Apache Kafka (:class:`~stream_app.brokers.kafka.KafkaCluster`).

What a production cluster looks like from the worker's side, on loopback:

* a throw-away CA and one broker certificate (``CN=kafka-broker``, SANs
  ``IP:127.0.0.1`` and ``DNS:localhost``, server and client use), made with the
  ``openssl`` command line (the ``cryptography`` package is not a dependency),
  as PEM files in a temporary folder; the brokers read them as PEM key and trust
  stores (``ssl.keystore.type=PEM``, Kafka 2.7+, KIP-651);
* three listeners per node:

  ``CLIENT``      SASL_SSL, SCRAM-SHA-512: what the worker (and ``bootstrap_servers``) use;
  ``INTERNAL``    SASL_SSL, SCRAM-SHA-512: inter-broker traffic as the super user ``admin``,
                  and the tests' admin client (:meth:`KafkaSecurity.admin_settings`);
  ``CONTROLLER``  SSL with client certificates required: the KRaft quorum. SCRAM cannot
                  authenticate controller connections (its credentials live in the metadata
                  log the controllers serve), so brokers present their certificate, whose
                  principal ``User:CN=kafka-broker`` is a super user;

* the SCRAM users written into the metadata log at format time
  (``kafka-storage format --add-scram 'SCRAM-SHA-512=[name=...,password=...]'``), so
  the first broker can authenticate inter-broker connections before any admin call;
* ``StandardAuthorizer`` with ``allow.everyone.if.no.acl.found=false``: a user without
  an ACL may do nothing. :func:`worker_acls` lists what one worker needs, and
  :func:`create_acls` creates them through the admin listener.

Passwords are generated (hex, so they need no quoting in the JAAS line nor in the
``--add-scram`` argument) and never printed by this module.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from pydantic import SecretStr

from stream_app.errors import BrokerError
from stream_app.settings import Settings

# stream_app.brokers.kafka's KafkaCluster and Node: that module imports this one, so no import back
# (tests/unit/test_import_direction.py forbids circles, TYPE_CHECKING imports included).
_Cluster = Any
_Node = Any

MECHANISM = "SCRAM-SHA-512"
ADMIN = "admin"
WORKER = "streamrec"
BROKER_CN = "kafka-broker"
SCRAM_LOGIN = "org.apache.kafka.common.security.scram.ScramLoginModule"
AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"


def unavailable_reason() -> str | None:
    """Why TLS material cannot be made here (no ``openssl``), or None."""
    return None if shutil.which("openssl") else "the openssl command line is not on PATH (apt-get install openssl)"


# -- certificates ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the CA certificate (clients' trust anchor) and the broker's key store (key + chain)."""

    folder: Path
    ca_cert: Path
    broker_cert: Path
    broker_key: Path
    broker_keystore: Path  # private key (unencrypted PKCS#8) followed by the certificate chain


def _openssl(*args: str, cwd: Path) -> None:
    openssl = shutil.which("openssl")
    if not openssl:
        raise BrokerError(unavailable_reason() or "openssl missing")
    done = subprocess.run([openssl, *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
        raise BrokerError(f"openssl {args[0]} failed: {tail[0][:300]}")


def make_tls(folder: Path, days: int = 2, hosts: Sequence[str] = ("127.0.0.1", "localhost")) -> TlsFiles:
    """A new CA and a broker certificate it signed, for ``hosts`` (IP or DNS SANs), in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    sans = ",".join(f"IP:{h}" if h.replace(".", "").isdigit() or ":" in h else f"DNS:{h}" for h in hosts)
    (folder / "broker.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        f"subjectAltName={sans}\n")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", str(days),
             "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=streamrec test CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=folder)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-sha256", "-keyout", "broker.key", "-out", "broker.csr",
             "-subj", f"/CN={BROKER_CN}", cwd=folder)
    _openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-sha256", "-days", str(days), "-extfile", "broker.ext", "-out", "broker.pem", cwd=folder)
    key = (folder / "broker.key").read_text()
    if "BEGIN PRIVATE KEY" not in key:  # Kafka's PEM key store wants PKCS#8
        _openssl("pkcs8", "-topk8", "-nocrypt", "-in", "broker.key", "-out", "broker.pk8", cwd=folder)
        (folder / "broker.pk8").replace(folder / "broker.key")
        key = (folder / "broker.key").read_text()
    keystore = folder / "broker-keystore.pem"
    keystore.write_text(key + (folder / "broker.pem").read_text() + (folder / "ca.pem").read_text())
    for p in folder.iterdir():
        p.chmod(0o600)
    return TlsFiles(folder, folder / "ca.pem", folder / "broker.pem", folder / "broker.key", keystore)


# -- the broker side ---------------------------------------------------------------------------------------


def _jaas(username: str | None = None, password: str | None = None) -> str:
    creds = f' username="{username}" password="{password}"' if username is not None else ""
    return f"{SCRAM_LOGIN} required{creds};"


@dataclass
class KafkaSecurity:
    """The TLS files and SCRAM users of one secured cluster; pass it as ``KafkaCluster(security=...)``.

    ``users`` maps SCRAM-SHA-512 user names to passwords; ``admin`` (the super user) is
    always there. :meth:`create` makes the certificates in a new temporary folder;
    :meth:`cleanup` removes it.
    """

    tls: TlsFiles
    users: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, users: Iterable[str] = (WORKER,), folder: Path | None = None) -> "KafkaSecurity":
        folder = folder or Path(tempfile.mkdtemp(prefix="streamrec-kafka-tls-"))
        tls = make_tls(folder)
        names = {ADMIN, *users}
        return cls(tls, {name: secrets.token_hex(16) for name in sorted(names)})

    def password(self, user: str) -> str:
        return self.users[user]

    def redact(self, text: str) -> str:
        """``text`` with every password replaced by ``***``."""
        for password in self.users.values():
            text = text.replace(password, "***")
        return text

    def cleanup(self) -> None:
        shutil.rmtree(self.tls.folder, ignore_errors=True)

    def __repr__(self) -> str:  # no passwords in reprs (pytest prints fixtures' reprs on failure)
        return f"KafkaSecurity(tls={str(self.tls.folder)!r}, users={sorted(self.users)})"

    # -- broker properties -------------------------------------------------------------------------------

    def broker_config(self, node: _Node) -> dict[str, str]:
        """Listener, TLS, SASL and authorizer properties for ``node`` (its ``admin_port`` is INTERNAL)."""
        t = self.tls
        return {
            "listeners": (f"CLIENT://127.0.0.1:{node.port},INTERNAL://127.0.0.1:{node.admin_port},"
                          f"CONTROLLER://127.0.0.1:{node.controller_port}"),
            "advertised.listeners": f"CLIENT://127.0.0.1:{node.port},INTERNAL://127.0.0.1:{node.admin_port}",
            "listener.security.protocol.map": "CONTROLLER:SSL,INTERNAL:SASL_SSL,CLIENT:SASL_SSL",
            "inter.broker.listener.name": "INTERNAL",
            # TLS on every listener, server and client side, from PEM files
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(t.broker_keystore),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(t.ca_cert),
            "ssl.endpoint.identification.algorithm": "https",
            "listener.name.controller.ssl.client.auth": "required",
            # SCRAM on the two SASL listeners; the INTERNAL one also logs in as admin (inter-broker)
            "sasl.enabled.mechanisms": MECHANISM,
            "sasl.mechanism.inter.broker.protocol": MECHANISM,
            "listener.name.client.sasl.enabled.mechanisms": MECHANISM,
            "listener.name.internal.sasl.enabled.mechanisms": MECHANISM,
            "listener.name.client.scram-sha-512.sasl.jaas.config": _jaas(),
            "listener.name.internal.scram-sha-512.sasl.jaas.config": _jaas(ADMIN, self.users[ADMIN]),
            # ACLs: nobody may do anything without one, but the super users
            "authorizer.class.name": AUTHORIZER,
            "super.users": f"User:{ADMIN};User:CN={BROKER_CN}",
            "allow.everyone.if.no.acl.found": "false",
        }

    def format_args(self) -> list[str]:
        """``kafka-storage format`` arguments that write the SCRAM credentials into the metadata log."""
        out: list[str] = []
        for name, password in self.users.items():
            out += ["--add-scram", f"{MECHANISM}=[name={name},password={password}]"]
        return out

    def admin_client_kwargs(self, servers: list[str]) -> dict[str, Any]:
        """kafka-python arguments for the super user on the INTERNAL listener (readiness, warm-up, ACLs)."""
        return {"bootstrap_servers": servers, "security_protocol": "SASL_SSL", "sasl_mechanism": MECHANISM,
                "sasl_plain_username": ADMIN, "sasl_plain_password": self.users[ADMIN],
                "ssl_cafile": str(self.tls.ca_cert)}

    # -- client settings ---------------------------------------------------------------------------------

    def client_settings(self, settings: Settings, cluster: _Cluster, user: str = WORKER,
                        password: str | None = None) -> Settings:
        """``settings`` pointing at the CLIENT listener as ``user`` (``password`` overrides the real one)."""
        kafka = settings.kafka.model_copy(update={
            "bootstrap_servers": cluster.bootstrap_servers, "embedded": False,
            "security_protocol": "SASL_SSL", "sasl_mechanism": MECHANISM, "sasl_username": user,
            "sasl_password": SecretStr(self.users[user] if password is None else password),
            "ssl_cafile": str(self.tls.ca_cert), "ssl_certfile": "", "ssl_keyfile": "",
        })
        return settings.model_copy(update={"kafka": kafka})

    def admin_settings(self, settings: Settings, cluster: _Cluster) -> Settings:
        """``settings`` for the super user on the INTERNAL listener (topic set-up, ACLs, reading back)."""
        s = self.client_settings(settings, cluster, ADMIN)
        kafka = s.kafka.model_copy(update={"bootstrap_servers": cluster.admin_bootstrap_servers})
        return s.model_copy(update={"kafka": kafka})


# -- ACLs --------------------------------------------------------------------------------------------------


def worker_acls(settings: Settings, principal: str = f"User:{WORKER}", leave_out: Iterable[tuple[str, str]] = ()) -> list[Any]:
    """The ACLs one worker (``settings``) needs, and no more, as kafka-python ``ACL`` objects.

    * the clicks topic: READ (+ DESCRIBE);
    * the recommendations and dead-letter topics: WRITE (+ DESCRIBE);
    * the catalogue topic ``items``: READ (+ DESCRIBE), with no consumer group; its dead-letter topic: WRITE;
    * every topic named ``{app_id}-...`` (a prefixed pattern): the table changelog
      ``{app_id}-user_state-changelog`` (written, read back on recovery) and Faust's
      leader-election topic ``{app_id}-__assignor-__leader`` (created by Faust at start
      when it does not see it, then consumed): READ, WRITE, DESCRIBE, CREATE;
    * the consumer group ``app_id``: READ (+ DESCRIBE).

    ``leave_out`` drops ``(resource name, operation name)`` pairs, e.g.
    ``[(settings.topics.recommendations, "WRITE")]``, to test a missing ACL.
    DESCRIBE is implied by READ and WRITE in Kafka; it is listed anyway so that
    leaving out the READ or WRITE is the only thing a test changes.
    """
    from kafka.admin import ACL, ACLOperation, ACLPermissionType, ACLResourcePatternType, ResourcePattern, ResourceType

    t, app_id = settings.topics, settings.worker.app_id
    literal, prefixed = ACLResourcePatternType.LITERAL, ACLResourcePatternType.PREFIXED
    grants: list[tuple[ResourceType, str, Any, tuple[str, ...]]] = [
        (ResourceType.TOPIC, t.clicks, literal, ("READ", "DESCRIBE")),
        (ResourceType.TOPIC, t.recommendations, literal, ("WRITE", "DESCRIBE")),
        (ResourceType.TOPIC, t.dead_letter, literal, ("WRITE", "DESCRIBE")),
        *([(ResourceType.TOPIC, t.items, literal, ("READ", "DESCRIBE")),  # the live catalogue, read whole
           (ResourceType.TOPIC, t.items_dead_letter, literal, ("WRITE", "DESCRIBE"))] if t.items else []),
        *([(ResourceType.TOPIC, t.users, literal, ("READ", "DESCRIBE")),  # live profiles, read whole
           (ResourceType.TOPIC, t.users_dead_letter, literal, ("WRITE", "DESCRIBE"))] if t.users else []),
        *([(ResourceType.TOPIC, t.user_vectors, literal, ("READ", "WRITE", "DESCRIBE"))] if t.user_vectors else []),
        (ResourceType.TOPIC, f"{app_id}-", prefixed, ("READ", "WRITE", "DESCRIBE", "CREATE")),
        (ResourceType.GROUP, app_id, literal, ("READ", "DESCRIBE")),
    ]
    skip = {(name, op.upper()) for name, op in leave_out}
    return [
        ACL(principal=principal, host="*", operation=ACLOperation[op], permission_type=ACLPermissionType.ALLOW,
            resource_pattern=ResourcePattern(kind, name, pattern))
        for kind, name, pattern, ops in grants for op in ops if (name, op) not in skip
    ]


def create_acls(cluster: _Cluster, acls: list[Any]) -> None:
    """Create ``acls`` as the super user (INTERNAL listener); BrokerError naming the first refusal."""
    from kafka import KafkaAdminClient

    if cluster.security is None:
        raise BrokerError("ACLs need a cluster started with security=KafkaSecurity(...)")
    admin = KafkaAdminClient(request_timeout_ms=15000,
                             **cluster.security.admin_client_kwargs(cluster.admin_bootstrap_servers.split(",")))
    try:
        result = admin.create_acls(acls)
    finally:
        admin.close()
    if result.get("failed"):
        raise BrokerError(f"creating {len(result['failed'])} of {len(acls)} ACLs failed: {result['failed'][0]!r}")


def delete_acls(cluster: _Cluster, acls: list[Any]) -> int:
    """Delete exactly ``acls`` (revoking them while a worker runs); returns how many the brokers removed."""
    from kafka import KafkaAdminClient
    from kafka.admin import ACLFilter, ResourcePatternFilter

    if cluster.security is None:
        raise BrokerError("ACLs need a cluster started with security=KafkaSecurity(...)")
    filters = [ACLFilter(a.principal, a.host, a.operation, a.permission_type,
                         ResourcePatternFilter(a.resource_pattern.resource_type, a.resource_pattern.resource_name,
                                               a.resource_pattern.pattern_type)) for a in acls]
    admin = KafkaAdminClient(request_timeout_ms=15000,
                             **cluster.security.admin_client_kwargs(cluster.admin_bootstrap_servers.split(",")))
    try:
        results = admin.delete_acls(filters)
    finally:
        admin.close()
    return sum(len(matched) for _, matched, error in results if error is None or error.errno == 0)


def worker_topics(settings: Settings) -> list[str]:
    """Every topic a worker uses, Faust's internal leader topic included (to pre-create as the admin)."""
    t = settings.topics
    app_id = settings.worker.app_id
    return [t.clicks, t.recommendations, t.dead_letter, f"{app_id}-user_state-changelog",
            f"{app_id}-__assignor-__leader"]
