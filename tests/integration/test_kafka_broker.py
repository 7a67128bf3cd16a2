"""`streamrec kafka` and ``KafkaCluster``: Apache Kafka (KRaft) on loopback, one node or three, real JVMs.

The jars come through Maven from deploy/kafka/pom.xml into the user's cache; the
first run fetches them (~50 MB), later runs reuse them.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from kafka import KafkaAdminClient

from stream_app.brokers.kafka import KafkaCluster
from tests.support import alive, assert_dies_with_starter

pytestmark = pytest.mark.skipif(not shutil.which("java"), reason="Apache Kafka needs Java (java not on PATH)")


def test_kafka_command_serves_and_stops_cleanly() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "stream_app.cli", "kafka"], stdout=subprocess.PIPE, text=True)
    try:
        line = ""
        while "ready at" not in line:
            line = proc.stdout.readline()
            assert line, "streamrec kafka exited before it was ready"
        match = re.search(r"ready at (127\.0\.0\.1:\d+) \(pids (\d+)\)", line)
        assert match, line
        data = re.search(r"data on (\S+),", line).group(1)
        assert data.startswith("/dev/shm/") or not Path("/dev/shm").is_dir()
        admin = KafkaAdminClient(bootstrap_servers=match.group(1))
        assert admin.describe_cluster()["brokers"][0]["port"] == int(match.group(1).split(":")[1])
        admin.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert not alive(int(match.group(2)))
        assert not Path(data).exists(), "the tmpfs data folder outlived the broker"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_missing_java_is_one_line() -> None:
    env = {**os.environ, "PATH": "/nonexistent"}
    done = subprocess.run([sys.executable, "-m", "stream_app.cli", "kafka"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "streamrec kafka: error: Apache Kafka needs Java 17 or newer: `java` is not on PATH "
        "(Debian: apt-get install openjdk-17-jre-headless)"]


def test_a_failed_fetch_is_one_line(tmp_path: Path) -> None:
    if not shutil.which("mvn"):
        pytest.skip("mvn not on PATH")
    env = {**os.environ, "STREAMREC_BROKER__KAFKA_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "stream_app.cli", "kafka", "--version", "3.9.99"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("streamrec kafka: error: cannot fetch Apache Kafka 3.9.99"), lines
    assert "Traceback" not in done.stderr


def test_three_nodes_survive_one_killed_and_restarted() -> None:
    with KafkaCluster(nodes=3) as cluster:
        admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap_servers)
        try:
            assert len(admin.describe_cluster()["brokers"]) == 3
        finally:
            admin.close()
        assert cluster.controller_id() in (1, 2, 3)
        victim = 2
        cluster.kill(victim)
        assert not cluster.node(victim).alive()
        cluster.restart(victim)
        assert cluster.node(victim).alive()
    assert not cluster.root.exists()


def test_the_cluster_stops_when_its_starter_is_killed() -> None:
    assert_dies_with_starter("from stream_app.brokers.kafka import KafkaCluster; import time; "
                             "c = KafkaCluster().start(); print(c.pid, flush=True); time.sleep(300)", "Kafka JVM")
