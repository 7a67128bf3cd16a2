"""`streamrec broker`: starts Tansu on a free loopback port, prints it, answers Kafka, stops on SIGTERM."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kafka import KafkaAdminClient


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
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) is not installed")
    starter = subprocess.Popen(
        [sys.executable, "-c", "from stream_app.broker import EmbeddedBroker; import time; "
                               "b = EmbeddedBroker().start(); print(b.pid, flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True)
    try:
        pid = int(starter.stdout.readline())
        assert _alive(pid)
        starter.send_signal(signal.SIGKILL)
        starter.wait(10)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(pid), "the broker outlived the process that started it"
    finally:
        starter.kill()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
