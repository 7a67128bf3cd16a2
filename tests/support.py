"""Helpers shared by the test tiers (not fixtures)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def skip_unless_broker(kind: str) -> None:
    """Skip (saying why) when a local broker of ``kind`` cannot start on this machine."""
    if kind == "kafka":
        from stream_app.brokers.kafka import cache_dir, unavailable_reason
        from stream_app.settings import Settings

        b = Settings().broker
        reason = unavailable_reason(b.kafka_version, cache_dir(b.kafka_cache_dir))
        if reason:
            pytest.skip(reason + " (deploy/install-ci-deps.sh installs it)")


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def assert_dies_with_starter(code: str, what: str, timeout_s: float = 20.0) -> None:
    """Run ``code`` (it starts something and prints its pid) in a child, SIGKILL the child, expect the pid gone."""
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) is not installed")
    starter = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(starter.stdout.readline())  # type: ignore[union-attr]
        assert alive(pid)
        starter.send_signal(signal.SIGKILL)
        starter.wait(10)
        deadline = time.monotonic() + timeout_s
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(pid), f"the {what} outlived the process that started it"
    finally:
        starter.kill()
