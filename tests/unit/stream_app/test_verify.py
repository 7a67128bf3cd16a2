"""The loss and state checks the chaos suite relies on, without a broker."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np

from stream_app.lab.chaos import recovery_seconds
from stream_app.core.records import Recommendation, Source
from stream_app.core.state import UserState
from stream_app.lab.traffic import BAD_INPUT, clicks_stream
from stream_app.core.validate import decode_click
from stream_app.errors import InvalidClick
from stream_app.lab.verify import delivery, state_mismatches


def _rec(part: int, off: int, produced: float = 0.0, replayed: bool = False) -> Recommendation:
    return Recommendation("u", ("i1",), (0.5,), "v", "model", Source("clicks", part, off), 0.0, produced, replayed)


def _state(hidden: list[float] | None, offset: int = 3) -> UserState:
    h = None if hidden is None else np.asarray(hidden, dtype=np.float32)
    return UserState("v", h, 1.0, 0, offset)


def test_delivery_counts_lost_and_duplicated_lists() -> None:
    d = delivery([(0, 0), (0, 1), (1, 0)], [_rec(0, 0), _rec(0, 0, replayed=True), _rec(1, 0), _rec(2, 9)])
    assert d.lost == [(0, 1)]
    assert d.duplicated == 1 and d.replayed == 1 and d.unexpected == 1 and d.clicks == 3


def test_state_mismatches_within_tolerance_only() -> None:
    want = {"a": _state([0.1, 0.2]), "b": _state(None), "c": _state([1.0])}
    got = {"a": (0, _state([0.1 + 5e-6, 0.2])), "b": (0, _state(None)), "c": (0, _state([1.0], offset=4))}
    assert state_mismatches(got, want) == ["c: last click (0, 4) != (0, 3)"]
    got["a"] = (0, _state([0.1 + 1e-3, 0.2]))
    got["d"] = (0, _state(None))
    del got["b"]
    problems = state_mismatches(got, want)
    assert len(problems) == 4 and problems[0].startswith("b: missing") and problems[1].startswith("d: not in")


def test_recovery_waits_for_every_partition_and_the_backlog() -> None:
    sent = [SimpleNamespace(valid=True, position=(0, 0), sent_at=9.0),
            SimpleNamespace(valid=True, position=(1, 0), sent_at=9.5)]
    recs = [_rec(0, 0, 12.0), _rec(1, 0, 13.0), _rec(0, 1, 11.0), _rec(1, 1, 10.5)]
    assert recovery_seconds(recs, sent, [10.0], partitions=2) == 3.0  # the backlog, last list at 13
    assert math.isnan(recovery_seconds(recs, sent, [10.0], partitions=3))  # a partition never came back


def test_traffic_marks_bad_input_and_it_is_really_bad() -> None:
    stream = clicks_stream(["i1", "i2"], n_users=5, bad_every=4)
    msgs = [next(stream) for _ in range(40)]
    assert sum(1 for *_, valid in msgs if not valid) == 10 and len(BAD_INPUT) > 1
    for key, value, valid in msgs:
        try:
            decode_click(value, key, max_bytes=8192, now=2e9, max_future_skew_s=86400)
            ok = True
        except InvalidClick:
            ok = False
        assert ok == valid, value
