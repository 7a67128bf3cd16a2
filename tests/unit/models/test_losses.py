"""Losses against values computed by hand on a 2 x 3 score matrix."""

from __future__ import annotations

import math

import pytest
import torch

from models.losses import bpr_max, canonical_loss, cross_entropy, get_loss, top1_max

# rows: samples; columns: [target of row 0, target of row 1, one shared negative]
LOGITS = torch.tensor([[2.0, 0.0, 1.0], [1.0, 3.0, 0.0]])


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_cross_entropy_by_hand() -> None:
    r0 = -(2.0 - math.log(math.exp(2) + math.exp(0) + math.exp(1)))
    r1 = -(3.0 - math.log(math.exp(1) + math.exp(3) + math.exp(0)))
    assert cross_entropy(LOGITS).item() == pytest.approx((r0 + r1) / 2, abs=1e-6)


def test_bpr_max_by_hand() -> None:
    def row(t: float, negs: list[float], reg: float) -> float:
        z = sum(math.exp(n) for n in negs)
        s = [math.exp(n) / z for n in negs]
        return -math.log(sum(si * sig(t - n) for si, n in zip(s, negs))) + reg * sum(si * n * n for si, n in zip(s, negs))

    for reg in (0.0, 1.0):
        want = (row(2.0, [0.0, 1.0], reg) + row(3.0, [1.0, 0.0], reg)) / 2
        assert bpr_max(LOGITS, reg).item() == pytest.approx(want, abs=1e-6)


def test_top1_max_by_hand() -> None:
    def row(t: float, negs: list[float]) -> float:
        z = sum(math.exp(n) for n in negs)
        return sum(math.exp(n) / z * (sig(n - t) + sig(n * n)) for n in negs)

    want = (row(2.0, [0.0, 1.0]) + row(3.0, [1.0, 0.0])) / 2
    assert top1_max(LOGITS).item() == pytest.approx(want, abs=1e-6)


def test_gradients_flow_and_names() -> None:
    x = LOGITS.clone().requires_grad_(True)
    for name in ("cross-entropy", "bpr-max", "top1-max", "ce", "bpr", "top1"):
        x.grad = None
        get_loss(name)(x).backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
    assert canonical_loss("xe") == "cross-entropy"
    with pytest.raises(ValueError):
        get_loss("hinge")
