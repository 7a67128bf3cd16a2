"""`streamrec broker`: starts Tansu on a free loopback port, prints it, answers Kafka, stops on SIGTERM."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

from kafka import KafkaAdminClient

from tests.support import assert_dies_with_starter


def test_broker_command_serves_and_stops_cleanly() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "stream_app.cli", "broker"], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        match = re.search(r"ready at (127\.0\.0\.1:\d+)", line)
        assert match, line
        admin = KafkaAdminClient(bootstrap_servers=match.group(1))
        assert admin.list_topics() == []
        admin.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_embedded_broker_stops_when_its_starter_is_killed() -> None:
    assert_dies_with_starter("from stream_app.brokers.embedded import EmbeddedBroker; import time; "
                             "b = EmbeddedBroker().start(); print(b.pid, flush=True); time.sleep(120)",
                             "embedded broker")
