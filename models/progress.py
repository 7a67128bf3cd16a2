"""Progress for long loops: a tqdm bar on a terminal, one plain line every few seconds anywhere else.

A log file, CI or a pod's log gets no carriage-return updates: ``PlainProgress``
prints ``desc: step/total (pct) key=value ...`` at most once per ``interval_s``
(the caller prints its own summary at the end).
"""

from __future__ import annotations

import sys
import time
from typing import Any, Iterable, Iterator, TextIO


class PlainProgress:
    """The part of tqdm's interface that training uses, as plain lines."""

    def __init__(self, iterable: Iterable[Any], total: int | None, desc: str, stream: TextIO,
                 interval_s: float = 10.0, clock: Any = time.monotonic, silent: bool = False) -> None:
        self.iterable, self.total, self.desc, self.stream = iterable, total, desc, stream
        self.interval_s, self.clock = interval_s, clock
        self.n = 0
        self.postfix: dict[str, Any] = {}
        self._last = clock()
        if silent:
            self.interval_s = float("inf")

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable:
            yield item
            self.n += 1
            if self.clock() - self._last >= self.interval_s:
                self._line()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def _line(self) -> None:
        self._last = self.clock()
        pct = f" ({100.0 * self.n / self.total:.0f}%)" if self.total else ""
        extra = "".join(f" {k}={v}" for k, v in self.postfix.items())
        print(f"{self.desc}: {self.n}/{self.total if self.total else '?'}{pct}{extra}", file=self.stream, flush=True)

    def close(self) -> None:
        """Nothing to erase: plain lines stay as they are."""


def progress(iterable: Iterable[Any], desc: str, enabled: bool = True, stream: TextIO | None = None,
             interval_s: float = 10.0) -> Any:
    """tqdm on a terminal; PlainProgress when ``stream`` (stderr) is not one; a silent pass-through if disabled."""
    stream = stream or sys.stderr
    total = len(iterable) if hasattr(iterable, "__len__") else None  # type: ignore[arg-type]
    if not enabled:
        return PlainProgress(iterable, total, desc, stream, silent=True)
    if stream.isatty():
        from tqdm import tqdm

        return tqdm(iterable, desc=desc, mininterval=0.5, leave=False, file=stream)
    return PlainProgress(iterable, total, desc, stream, interval_s=interval_s)
