"""Beyond-accuracy figures (models/beyond.py) on lists whose answers are known by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.beyond import ListFigures, gini, head_tail, miscalibration


def test_gini_and_head_tail() -> None:
    assert gini(np.array([5, 5, 5, 5])) == pytest.approx(0.0)
    assert gini(np.array([0, 0, 0, 8])) == pytest.approx(0.75)
    tail = head_tail(np.array([10.0, 1.0, 5.0, 0.0, 2.0]))
    assert tail.tolist() == [False, True, True, True, True]  # ceil(0.2 * 5) = 1 head item


def test_figures_of_known_lists() -> None:
    counts = np.array([8.0, 4.0, 2.0, 1.0, 1.0])
    unit = torch.eye(5)  # orthogonal items: every list fully diverse
    f = ListFigures(counts, unit, k=2)
    f.add(torch.tensor([[0, 1], [0, 2]]))
    r = f.result()
    assert r["coverage@2"] == pytest.approx(3 / 5)
    assert r["popularity@2"] == pytest.approx((8 + 4 + 8 + 2) / 4)
    assert r["tail_share@2"] == pytest.approx(2 / 4)
    assert r["ild@2"] == pytest.approx(1.0)
    assert r["miscalibration@2"] is None  # no attributes


def test_miscalibration_zero_when_the_list_matches() -> None:
    flat, offsets = np.array([0, 1, 0, 1]), np.arange(5)  # items 0, 2: attribute 0; 1, 3: attribute 1
    same = miscalibration(offsets, flat, [np.array([0, 1])], np.array([[2, 3]]))
    off = miscalibration(offsets, flat, [np.array([0, 1])], np.array([[0, 2]]))
    assert same[0] == pytest.approx(0.0, abs=1e-6) and off[0] > 0.5
    assert np.isnan(miscalibration(offsets, flat, [np.array([], np.int64)], np.array([[0, 1]]))[0])
