"""Process helpers shared by the brokers and the lab: free ports, readiness, dying with the parent."""

from __future__ import annotations

import shutil
import socket
import sys


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def dies_with_parent(cmd: list[str], signal_name: str) -> list[str]:
    """``cmd`` prefixed so that the child gets ``signal_name`` when the thread that starts it dies.

    Linux only (``setpriv --pdeathsig``, util-linux; it execs, so the pid stays the
    same); elsewhere ``cmd`` unchanged. Linux ties the signal to the starting
    *thread*: start the child from one that lives as long as the child should.
    """
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    return [setpriv, "--pdeathsig", signal_name, *cmd] if setpriv else list(cmd)
