"""Progress output: plain lines at most every interval when the stream is not a terminal."""

from __future__ import annotations

import io

from models.progress import PlainProgress, progress


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_plain_lines_at_most_once_per_interval() -> None:
    out, clock = io.StringIO(), FakeClock()
    bar = PlainProgress(range(100), 100, "epoch 1/2", out, interval_s=5.0, clock=clock)
    for i in bar:
        clock.t += 0.11  # 100 steps over 11 s: two interval lines (steps 46 and 92)
        if i == 50:
            bar.set_postfix(loss="0.5000")
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines == ["epoch 1/2: 46/100 (46%)", "epoch 1/2: 92/100 (92%) loss=0.5000"]


def test_not_a_terminal_gets_plain_progress() -> None:
    out = io.StringIO()
    bar = progress(range(3), "x", stream=out)
    assert isinstance(bar, PlainProgress)
    assert list(bar) == [0, 1, 2]


def test_disabled_prints_nothing() -> None:
    out = io.StringIO()
    bar = progress(range(3), "x", enabled=False, stream=out)
    assert list(bar) == [0, 1, 2]
    bar.close()
    assert out.getvalue() == ""
