"""Apache Kafka on loopback, on demand: one node or a three-node cluster, KRaft mode, data on tmpfs.

The broker jars are fetched once through Maven from ``deploy/kafka/pom.xml``
(``org.apache.kafka:kafka_2.13`` with its runtime jars plus a logging backend,
which Kafka leaves out of its POM) into a cache outside the work tree
(``STREAMREC_BROKER__CACHE_DIR``, default ``~/.cache/streamrec/kafka``). Each
node runs broker and controller in one JVM (``kafka.Kafka``), formatted with
``kafka.tools.StorageTool``, with a bounded heap, SerialGC and C1 only, so that
on a 2-core machine the JVMs leave CPU to the worker. The settings that make a
test broker fast (1-partition internal topics, ``group.initial.rebalance.delay.ms=0``,
tmpfs, few threads, a small cleaner buffer, a 1 s cleaner back-off) and why
are in ``../shared/KAFKA.md`` and docs/operations.md.

Like the embedded broker, every JVM is killed when the process that started it
dies, even by SIGKILL (``setpriv --pdeathsig KILL``), and its tmpfs folder is
removed at stop (or at the next start, when its owner is gone). A missing
``java`` or ``mvn`` or a failed fetch is one :class:`BrokerError` line.
"""

from __future__ import annotations

import base64
import fcntl
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from stream_app.brokers.process import answers, dies_with_parent, free_port
from stream_app.errors import BrokerError

if TYPE_CHECKING:  # pragma: no cover
    from stream_app.brokers.kafka_security import KafkaSecurity

POM = Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "pom.xml"
DEFAULT_VERSION = "3.9.1"
TMPFS = Path("/dev/shm")
PREFIX = "streamrec-kafka-"

# Broker settings for a test cluster on a small machine (../shared/KAFKA.md §4).
BASE_CONFIG: dict[str, str] = {
    "process.roles": "broker,controller",
    "controller.listener.names": "CONTROLLER",
    "inter.broker.listener.name": "PLAINTEXT",
    "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
    "offsets.topic.num.partitions": "1",
    "transaction.state.log.num.partitions": "1",
    "group.initial.rebalance.delay.ms": "0",
    "group.min.session.timeout.ms": "1000",
    "log.message.timestamp.after.max.ms": "9223372036854775807",
    "num.network.threads": "2",
    "num.io.threads": "4",
    "background.threads": "4",
    "num.recovery.threads.per.data.dir": "1",
    "log.cleaner.dedupe.buffer.size": "16777216",
    "log.cleaner.backoff.ms": "1000",
    "log.initial.task.delay.ms": "0",
    "log.retention.check.interval.ms": "5000",
    "auto.create.topics.enable": "false",
    "transaction.abort.timed.out.transaction.cleanup.interval.ms": "5000",
}


def cache_dir(configured: str = "") -> Path:
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "streamrec" / "kafka"


def java_binary() -> str:
    java = shutil.which("java")
    if not java:
        raise BrokerError("Apache Kafka needs Java 17 or newer: `java` is not on PATH "
                          "(Debian: apt-get install openjdk-17-jre-headless)")
    return java


def unavailable_reason(version: str = DEFAULT_VERSION, cache: Path | None = None) -> str | None:
    """Why a local Kafka cannot start here (no java; neither cached jars nor mvn), or None."""
    if not shutil.which("java"):
        return "Apache Kafka needs Java 17 or newer (java not on PATH)"
    libs = (cache or cache_dir()) / f"kafka-{version}" / "libs"
    if not any(libs.glob("kafka_2.13-*.jar")) and not shutil.which("mvn"):
        return f"Apache Kafka {version} is not cached in {libs.parent} and mvn is not on PATH to fetch it"
    return None


def kafka_libs(version: str = DEFAULT_VERSION, cache: Path | None = None) -> Path:
    """The folder of broker jars for ``version``, fetched through Maven once (a lock guards parallel fetches)."""
    root = (cache or cache_dir()) / f"kafka-{version}"
    libs = root / "libs"
    if libs.is_dir() and any(libs.glob("kafka_2.13-*.jar")):
        return libs
    mvn = shutil.which("mvn")
    if not mvn:
        raise BrokerError(f"Apache Kafka {version} is not cached in {root} and `mvn` is not on PATH to fetch it "
                          "(Debian: apt-get install maven)")
    if not POM.is_file():
        raise BrokerError(f"{POM} is missing: it names the Kafka jars to fetch")
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if libs.is_dir() and any(libs.glob("kafka_2.13-*.jar")):
            return libs
        tmp = Path(tempfile.mkdtemp(dir=root, prefix="libs-"))
        cmd = [mvn, "-B", "-q", "-f", str(POM), "dependency:copy-dependencies", "-DincludeScope=runtime",
               f"-DoutputDirectory={tmp}", f"-Dkafka.version={version}"]
        if not version.startswith("3."):
            cmd.append("-Pk4")  # log4j2 backend instead of reload4j
        print(f"[kafka] fetching Apache Kafka {version} through Maven into {libs} (once, ~50 MB) ...", flush=True)
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not any(tmp.glob("kafka_2.13-*.jar")):
            shutil.rmtree(tmp, ignore_errors=True)
            text = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr)
            lines = [ln for ln in text.splitlines() if "ERROR" in ln] or ["no jars fetched"]
            raise BrokerError(f"cannot fetch Apache Kafka {version} through Maven: "
                              f"{lines[0].replace('[ERROR]', '').strip()[:300]}")
        tmp.rename(libs)
    return libs


def cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


def _remove_orphans() -> None:
    """tmpfs folders of clusters whose starting process is gone (a SIGKILLed test run)."""
    if not TMPFS.is_dir():
        return
    for d in TMPFS.glob(PREFIX + "*"):
        try:
            owner = int(d.name[len(PREFIX):].split("-")[0])
            os.kill(owner, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (ValueError, PermissionError):
            continue


@dataclass
class Node:
    node_id: int
    port: int
    controller_port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None
    admin_port: int = 0  # the INTERNAL (inter-broker, super user) listener of a secured cluster

    @property
    def admin_address(self) -> str:
        return f"127.0.0.1:{self.admin_port or self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 5) -> str:
        try:
            lines = (self.dir / "server.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return " | ".join(ln.strip() for ln in lines[-n:])


class KafkaCluster:
    """Apache Kafka, ``nodes`` combined broker+controller JVMs on loopback; a context manager.

    ``config`` adds or overrides broker settings (``log.segment.bytes``, listeners
    for TLS...). With three nodes the internal topics get replication factor 3
    and ``min.insync.replicas=2``, as a production cluster would.

    ``security`` (:class:`~stream_app.brokers.kafka_security.KafkaSecurity`) makes it a
    secured cluster: TLS everywhere, SCRAM-SHA-512 on the CLIENT listener
    (``bootstrap_servers``) and on an INTERNAL one (``admin_bootstrap_servers``, the super
    user), ACLs enforced. Without it, one PLAINTEXT listener, as before.
    """

    def __init__(self, nodes: int = 1, version: str = DEFAULT_VERSION, heap_mb: int = 512,
                 cache: str = "", config: dict[str, str] | None = None, start_timeout_s: float = 90.0,
                 security: "KafkaSecurity | None" = None) -> None:
        if nodes < 1:
            raise BrokerError("a Kafka cluster needs at least one node")
        self.version = version
        self.heap_mb = heap_mb
        self.cache = cache_dir(cache)
        self.start_timeout_s = start_timeout_s
        self.extra = dict(config or {})
        self.root = TMPFS if TMPFS.is_dir() else Path(tempfile.gettempdir())
        self.root = self.root / f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.nodes = [Node(i + 1, free_port(), free_port(), self.root / f"node-{i + 1}") for i in range(nodes)]
        self._libs: Path | None = None
        self.security = security
        if security is not None:
            for node in self.nodes:
                node.admin_port = free_port()

    # -- addresses -------------------------------------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(n.address for n in self.nodes)

    @property
    def admin_bootstrap_servers(self) -> str:
        """Where the super user connects: the INTERNAL listener when secured, else the PLAINTEXT one."""
        return ",".join(n.admin_address for n in self.nodes)

    def _admin_kwargs(self, servers: list[str]) -> dict[str, Any]:
        """kafka-python arguments for readiness and warm-up: PLAINTEXT, or the super user over TLS."""
        if self.security is None:
            return {"bootstrap_servers": servers}
        return self.security.admin_client_kwargs(servers)

    @property
    def pid(self) -> int | None:
        return self.nodes[0].pid

    def node_config(self, node: Node) -> dict[str, str]:
        n = len(self.nodes)
        rf = str(min(3, n))
        isr = "2" if n >= 3 else "1"
        cfg = dict(BASE_CONFIG)
        cfg.update({
            "node.id": str(node.node_id),
            "controller.quorum.voters": ",".join(f"{m.node_id}@127.0.0.1:{m.controller_port}" for m in self.nodes),
            "listeners": f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.port}",
            "log.dirs": str(node.dir / "data"),
            "offsets.topic.replication.factor": rf,
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": isr,
            "default.replication.factor": rf,
            "min.insync.replicas": isr,
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": isr,
        })
        if self.security is not None:
            cfg.update(self.security.broker_config(node))
        cfg.update(self.extra)
        return cfg

    # -- lifecycle -------------------------------------------------------------------------------------------

    def _jvm(self, heap_mb: int) -> list[str]:
        return [java_binary(), "-Xms128m", f"-Xmx{heap_mb}m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                "-Djava.awt.headless=true", "-cp", f"{self._libs}/*"]

    def _log_flag(self, node: Node) -> str:
        if self.version.startswith("3."):
            (node.dir / "log4j.properties").write_text(
                "log4j.rootLogger=WARN, stdout\n"
                "log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
                "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n"
                "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
                "log4j.logger.kafka.server.BrokerServer=INFO\n")
            return f"-Dlog4j.configuration=file:{node.dir / 'log4j.properties'}"
        (node.dir / "log4j2.properties").write_text(
            "status=warn\nappender.console.type=Console\nappender.console.name=STDOUT\n"
            "appender.console.layout.type=PatternLayout\nappender.console.layout.pattern=[%d] %p %m (%c)%n\n"
            "rootLogger.level=WARN\nrootLogger.appenderRef.stdout.ref=STDOUT\n"
            "logger.bs.name=kafka.server.BrokerServer\nlogger.bs.level=INFO\n")
        return f"-Dlog4j2.configurationFile={node.dir / 'log4j2.properties'}"

    def start(self) -> "KafkaCluster":
        java_binary()
        self._libs = kafka_libs(self.version, self.cache)
        _remove_orphans()
        cid = cluster_id()
        formats = []
        for node in self.nodes:
            (node.dir / "data").mkdir(parents=True, exist_ok=True)
            props = node.dir / "server.properties"
            props.write_text("".join(f"{k}={v}\n" for k, v in self.node_config(node).items()))
            cmd = [*self._jvm(256), "kafka.tools.StorageTool", "format", f"--cluster-id={cid}", "-c", str(props),
                   "--ignore-formatted"]
            if self.security is not None:
                cmd += self.security.format_args()  # SCRAM users, before the first broker starts
            formats.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        for node, proc in zip(self.nodes, formats):
            out, _ = proc.communicate(timeout=120)
            if proc.returncode != 0:
                self._cleanup()
                tail = out.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
                if self.security is not None:  # the formatter may echo its --add-scram arguments
                    tail = [self.security.redact(tail[0])]
                raise BrokerError(f"formatting Kafka node {node.node_id} failed: {tail[0][:300]}")
        for node in self.nodes:
            self._launch(node)
        try:
            self.wait_ready(self.start_timeout_s)
            self._warm_up(self.start_timeout_s)
        except BrokerError:
            self.stop()
            raise
        return self

    def _warm_up(self, timeout_s: float) -> None:
        """Until a group coordinator answers: the first FindCoordinator creates ``__consumer_offsets``, and
        until it is loaded clients get COORDINATOR_NOT_AVAILABLE (which Faust logs as an ERROR line)."""
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        deadline = time.monotonic() + timeout_s
        admin = KafkaAdminClient(request_timeout_ms=5000, **self._admin_kwargs(self.admin_bootstrap_servers.split(",")))
        try:
            while True:
                try:
                    admin.list_group_offsets("streamrec-warm-up")
                    return
                except KafkaError as exc:
                    if time.monotonic() > deadline:
                        raise BrokerError(f"Apache Kafka on {self.bootstrap_servers} has no group coordinator "
                                          f"after {timeout_s:.0f}s: {exc}") from None
                    time.sleep(0.2)
        finally:
            admin.close()

    def _launch(self, node: Node) -> None:
        cmd = [*self._jvm(self.heap_mb), f"-Dkafka.logs.dir={node.dir / 'logs'}", self._log_flag(node),
               "kafka.Kafka", str(node.dir / "server.properties")]
        log = open(node.dir / "server.log", "ab")
        try:
            node.proc = subprocess.Popen(dies_with_parent(cmd, "KILL"), stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        except OSError as exc:
            raise BrokerError(f"cannot start Kafka node {node.node_id}: {exc}") from exc
        finally:
            log.close()

    def wait_ready(self, timeout_s: float = 90.0, nodes: list[Node] | None = None) -> None:
        """Until every node (or the given ones) accepts connections and the cluster reports all its brokers."""
        want = nodes or self.nodes
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for node in want:
                if not node.alive():
                    code = node.proc.returncode if node.proc else None
                    raise BrokerError(f"Kafka node {node.node_id} exited ({code}): {node.log_tail()}")
            if all(answers("127.0.0.1", n.port) for n in want) and self._brokers_registered() >= len(self.nodes):
                return
            time.sleep(0.2)
        raise BrokerError(f"Apache Kafka did not become ready on {self.bootstrap_servers} within {timeout_s:.0f}s: "
                          f"{self.nodes[0].log_tail()}")

    def _brokers_registered(self) -> int:
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        live = [n.admin_address for n in self.nodes if n.alive()]
        try:
            admin = KafkaAdminClient(request_timeout_ms=3000, **self._admin_kwargs(live))
        except (KafkaError, OSError, ValueError):
            return 0
        try:
            return len(admin.describe_cluster().get("brokers", []))
        except (KafkaError, OSError):
            return 0
        finally:
            admin.close()

    # -- faults ----------------------------------------------------------------------------------------------

    def node(self, node_id: int) -> Node:
        return self.nodes[node_id - 1]

    def kill(self, node_id: int) -> None:
        """SIGKILL one node (fault injection); :meth:`restart` brings it back on the same ports and data."""
        node = self.node(node_id)
        if node.alive():
            os.kill(node.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
            node.proc.wait(10)  # type: ignore[union-attr]

    def restart(self, node_id: int, timeout_s: float = 90.0) -> None:
        node = self.node(node_id)
        self.kill(node_id)
        self._launch(node)
        self.wait_ready(timeout_s, [node])

    def freeze(self, node_id: int = 1) -> None:
        node = self.node(node_id)
        if node.alive():
            os.kill(node.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]

    def thaw(self, node_id: int = 1) -> None:
        node = self.node(node_id)
        if node.alive():
            os.kill(node.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]

    def controller_id(self) -> int | None:
        """The node id of the active KRaft controller (from the metadata quorum state file), or None."""
        import json

        for node in self.nodes:
            state = node.dir / "data" / "__cluster_metadata-0" / "quorum-state"
            try:
                leader = json.loads(state.read_text()).get("leaderId", -1)
            except (OSError, ValueError):
                continue
            if leader and leader > 0:
                return int(leader)
        return None

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM every node (SIGKILL after ``timeout_s``), then remove the tmpfs folder."""
        for node in self.nodes:
            if node.alive():
                os.kill(node.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
                node.proc.terminate()  # type: ignore[union-attr]
        for node in self.nodes:
            if node.proc is not None:
                try:
                    node.proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait(timeout_s)
        self._cleanup()

    def _cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "KafkaCluster":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
