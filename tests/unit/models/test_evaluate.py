"""Metrics on hand-made cases, including ties (standard vs conservative), and the baselines."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor

from models.baselines import MarkovScorer, PopularityScorer, popularity_tiebreak
from models.data import Sessions
from models.evaluate import evaluate_scorer, metrics_from_ranks, ranks_of


class TableScorer:
    """Scores depend only on the current item: a fixed (N, N) table."""

    def __init__(self, table: list[list[float]]) -> None:
        self.table = torch.tensor(table)

    def zero_state(self, batch: int) -> Tensor:
        return torch.zeros(batch, 1)

    def step(self, state: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:
        return state + 1, self.table[items]


TABLE = [
    [0.5, 0.9, 0.9, 0.1],  # after item 0: target 1 ties with item 2
    [0.3, 0.2, 0.1, 0.4],  # after item 1: target 2 is last
    [0.0, 0.0, 0.0, 0.0],
    [0.0, 0.0, 0.0, 0.0],
]


def test_ranks_standard_vs_conservative() -> None:
    scores = torch.tensor([[0.5, 0.9, 0.9, 0.1], [0.3, 0.2, 0.1, 0.4], [1.0, 1.0, 1.0, 1.0]])
    std, cons = ranks_of(scores, torch.tensor([1, 2, 0]))
    assert std.tolist() == [1, 4, 1]
    assert cons.tolist() == [2, 4, 4]
    std, cons = ranks_of(torch.tensor([[float("nan"), 1.0]]), torch.tensor([0]))
    assert std.tolist() == [2] and cons.tolist() == [2]


def test_metrics_by_hand() -> None:
    sessions = Sessions(np.array([0, 1, 2]), np.array([0, 3]))
    res = evaluate_scorer(TableScorer(TABLE), sessions, 4, ks=(1, 5))
    assert res["predictions"] == 2
    assert res["recall@1"] == 0.0 and res["standard"]["recall@1"] == 0.5
    assert res["recall@5"] == 1.0 and res["standard"]["recall@5"] == 1.0
    assert res["mrr@5"] == pytest.approx((1 / 2 + 1 / 4) / 2)
    assert res["standard"]["mrr@5"] == pytest.approx((1 + 1 / 4) / 2)
    assert res["ndcg@5"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / 2)
    assert res["standard"]["ndcg@5"] == pytest.approx((1 + 1 / math.log2(5)) / 2)


def test_metrics_from_ranks_cutoff() -> None:
    m = metrics_from_ranks(np.array([1, 3, 30]), ks=(1, 20))
    assert m["recall@1"] == pytest.approx(1 / 3) and m["recall@20"] == pytest.approx(2 / 3)
    assert m["mrr@20"] == pytest.approx((1 + 1 / 3) / 3)


def test_batching_does_not_change_results() -> None:
    rng = np.random.default_rng(0)
    lens = rng.integers(1, 9, size=40)
    items = rng.integers(0, 4, size=int(lens.sum()))
    sessions = Sessions(items, np.concatenate([[0], np.cumsum(lens)]))
    table = rng.random((4, 4)).tolist()
    a = evaluate_scorer(TableScorer(table), sessions, 4, batch_size=1)
    b = evaluate_scorer(TableScorer(table), sessions, 4, batch_size=7)
    assert a["predictions"] == int((lens[lens >= 2] - 1).sum())
    for k in ("recall@5", "mrr@20", "ndcg@10"):
        assert a[k] == pytest.approx(b[k])


def test_state_is_reset_per_session() -> None:
    class CountingScorer(TableScorer):
        """Ranks the target first only if the state says it is the session's first click."""

        def step(self, state: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:
            scores = torch.zeros(items.shape[0], 4)
            scores[:, 3] = torch.where(state[:, 0] == 0, 1.0, -1.0)
            return state + 1, scores

    sessions = Sessions(np.array([0, 3, 0, 3, 0, 3]), np.array([0, 2, 4, 6]))
    res = evaluate_scorer(CountingScorer(TABLE), sessions, 4, ks=(1,))
    assert res["recall@1"] == 1.0


def test_popularity_baseline() -> None:
    counts = np.array([3, 10, 3, 0])
    tb = popularity_tiebreak(counts)
    assert list(np.argsort(-tb)) == [1, 0, 2, 3] and tb.max() < 1
    sessions = Sessions(np.array([2, 1, 0]), np.array([0, 3]))
    res = evaluate_scorer(PopularityScorer(counts), sessions, 4, counts, ks=(1, 5))
    # targets: 1 (rank 1), 0 (rank 2); no ties after the tie-break
    assert res["recall@1"] == 0.5 and res["mrr@5"] == pytest.approx(0.75)
    assert res["standard"]["mrr@5"] == res["mrr@5"]
    assert res["coverage@20"] == 1.0


def test_markov_baseline() -> None:
    # transitions: 0->1 twice, 0->2 once, 2->3 once; counts: 0:3, 1:2, 2:2, 3:1
    train = Sessions(np.array([0, 1, 0, 1, 0, 2, 3]), np.array([0, 2, 4, 7]))
    mc = MarkovScorer(train, 4)
    _, sc = mc.step(mc.zero_state(2), torch.tensor([0, 2]))
    assert sc[0].argsort(descending=True).tolist()[:2] == [1, 2]
    assert sc[1].argmax().item() == 3
    # unseen transition falls back to popularity order: after 3 -> 0 first (most clicks)
    _, sc = mc.step(mc.zero_state(1), torch.tensor([3]))
    assert sc[0].argmax().item() == 0
    test = Sessions(np.array([0, 2, 3]), np.array([0, 3]))
    res = evaluate_scorer(mc, test, 4, ks=(1, 5))
    # 0 -> 2: rank 2 (after 1); 2 -> 3: rank 1
    assert res["recall@1"] == 0.5 and res["mrr@5"] == pytest.approx(0.75)
