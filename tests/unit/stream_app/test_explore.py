"""The also-like draw (stream_app/core/explore.py): its first item follows the logged probabilities."""

from __future__ import annotations

import numpy as np

from stream_app.core.explore import sample_lists


def test_first_draw_follows_the_softmax_and_seeds_repeat() -> None:
    scores, items = [2.0, 1.0, 0.0, -1.0], [10, 11, 12, 13]
    rows = sample_lists([scores] * 4000, [items] * 4000, 2, 1.0, [(0, s) for s in range(4000)], [False] * 4000)
    p = np.exp(scores) / np.exp(scores).sum()
    first = np.bincount([r[0][0] - 10 for r in rows], minlength=4) / 4000
    assert np.abs(first - p).max() < 0.03
    assert all(np.allclose(r[1], [p[i - 10] for i in r[0]]) for r in rows[:50])
    assert sample_lists([scores], [items], 2, 1.0, [(3, 9)], [False]) == sample_lists([scores], [items], 2, 1.0, [(3, 9)], [False])
    cold = sample_lists([[0.5, 0.3, 0.2]], [[1, 2, 3]], 3, 1.0, [(0, 0)], [True])[0]
    assert sorted(cold[0]) == [1, 2, 3] and np.isclose(sum(cold[1]), 1.0)
    assert sample_lists([[]], [[]], 3, 1.0, [(0, 0)], [False]) == [([], [])]
