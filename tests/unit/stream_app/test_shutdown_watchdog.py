"""The SIGTERM watchdog: once a stop is scheduled, the process exits (code 3) after the grace period."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import signal, time
    import faust
    from stream_app.settings import Settings
    from stream_app.worker.start import graceful_worker

    s = Settings()
    s = s.model_copy(update={"worker": s.worker.model_copy(update={"shutdown_grace_s": 0.5})})
    worker = graceful_worker(faust.App("watchdog-test", autodiscover=False), s)
    worker._schedule_shutdown(signal.SIGTERM)   # the loop never runs: the stop "hangs"
    time.sleep(30)
    print("still alive")
""")


def test_a_hung_stop_is_cut_after_the_grace_period() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr[-2000:]
    assert "shutdown took longer than 0.5s" in done.stderr
    assert "still alive" not in done.stdout
