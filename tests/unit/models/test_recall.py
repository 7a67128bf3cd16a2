"""The recall stage: co-visitation and attribute tables, the merge of sources, candidate recall."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.data import Sessions
from models.recall import (SOURCE_BITS, Neighbours, RecallConfig, RecallProbe, attribute_neighbours, covisitation,
                           merge)


def sessions(*rows: list[int]) -> Sessions:
    items = np.asarray([i for r in rows for i in r], dtype=np.int64)
    return Sessions(items, np.cumsum([0] + [len(r) for r in rows]).astype(np.int64))


def row(table: Neighbours, item: int) -> list[tuple[int, float]]:
    return [(int(i), round(float(w), 4)) for i, w in zip(table.index[item], table.weight[item]) if i >= 0]


def test_covisitation_weighs_forward_by_distance_and_backward_by_half() -> None:
    t = covisitation(sessions([0, 1, 2], [1, 2]), 4, width=3)
    assert row(t, 0) == [(1, 1.0), (2, 0.5)]
    assert row(t, 1) == [(2, 2.0), (0, 0.5)]
    assert row(t, 2) == [(1, 1.0), (0, 0.25)]
    assert row(t, 3) == []  # never clicked: no neighbours
    assert row(covisitation(sessions([0, 0, 1]), 2, width=3), 0) == [(1, 1.5)]  # a repeat is not its own neighbour


def test_covisitation_keeps_the_heaviest_and_breaks_ties_by_clicks() -> None:
    t = covisitation(sessions([0, 1], [0, 2], [2, 3]), 4, width=1)
    assert row(t, 0) == [(2, 1.0)]  # 1 and 2 weigh the same after 0; 2 has more clicks


def test_attribute_neighbours_share_attributes_by_idf_then_clicks() -> None:
    # items 0..4; attribute 7 is on four items (common), attribute 9 on two (rare)
    flat = np.array([7, 9, 7, 7, 9, 7, 5])
    offsets = np.array([0, 2, 3, 4, 6, 7])  # 0: {7, 9}, 1: {7}, 2: {7}, 3: {9, 7}, 4: {5}
    counts = np.array([1, 10, 5, 1, 3])
    t = attribute_neighbours((flat, offsets), counts, width=4)
    assert [i for i, _ in row(t, 0)] == [3, 1, 2]  # 3 shares the rare attribute too; then by clicks
    assert row(t, 4) == []
    assert [i for i, _ in row(t, 1)] == [2, 0, 3]  # equal weight: more clicked first, then lower index


def test_merge_fills_quotas_first_then_the_network_without_duplicates_or_excluded() -> None:
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -torch.inf, -1.0]])
    covis = Neighbours(torch.tensor([[7, 6, 0, -1]] * 8), torch.ones(8, 4))
    cand = merge(scores, torch.tensor([2]), RecallConfig(4, covisitation=0.75, attributes=0.0), covis)
    items = cand.items[0].tolist()
    assert items == [7, 0, 1, 2]  # 6 is excluded (-inf), 0 comes once; the network fills the rest by score
    bits = dict(zip(items, cand.sources[0].tolist()))
    assert bits[7] == SOURCE_BITS["covisitation"] and bits[1] == SOURCE_BITS["network"]
    assert bits[0] == SOURCE_BITS["covisitation"] | SOURCE_BITS["network"]
    assert cand.contains(torch.tensor([2])).tolist() == [True] and cand.contains(torch.tensor([3])).tolist() == [False]
    short = merge(torch.tensor([[1.0, -torch.inf, -torch.inf]]), torch.tensor([-1]), RecallConfig(3, 0.5, 0.0), covis)
    assert short.items[0].tolist() == [0, -1, -1] and short.valid[0].tolist() == [True, False, False]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 30), st.floats(0.0, 0.6), st.floats(0.0, 0.4))
def test_merge_properties(seed: int, size: int, share_c: float, share_a: float) -> None:
    g = torch.Generator().manual_seed(seed)
    n, b = 40, 6
    scores = torch.randn(b, n, generator=g)
    scores[torch.rand(b, n, generator=g) < 0.2] = -torch.inf
    covis = Neighbours(torch.randint(-1, n, (n, 10), generator=g), torch.rand(n, 10, generator=g))
    attrs = Neighbours(torch.randint(-1, n, (n, 10), generator=g), torch.rand(n, 10, generator=g))
    last = torch.randint(-1, n, (b,), generator=g)
    cfg = RecallConfig(size, share_c, share_a)
    cand = merge(scores, last, cfg, covis, attrs)
    finite = torch.isfinite(scores).sum(dim=1)
    for r in range(b):
        got = cand.items[r][cand.valid[r]].tolist()
        assert len(got) == len(set(got)) == min(size, int(finite[r]))  # full unless the items run out
        assert all(torch.isfinite(scores[r, i]) for i in got)
        q_c, q_a = cfg.quotas()
        room = size - min(q_c, 10) - min(q_a, 10)
        best = torch.topk(scores[r], max(min(room, int(finite[r])), 0)).indices.tolist()
        assert set(best) <= set(got)  # the network's best keep the room the other sources leave


def test_recall_probe_without_sources_is_the_exact_top() -> None:
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(50, 600, generator=g)
    targets = torch.randint(0, 600, (50,), generator=g)
    probe = RecallProbe(RecallConfig(200, 0.0, 0.0), None, None)
    probe.add(scores, [np.array([1])] * 50, targets)
    res = probe.result()
    for k in (100, 200, 500):
        assert res[f"recall@{k}"] == res["network_exact"][f"recall@{k}"]
    assert res["predictions"] == 50 and res["shares"] == {"covisitation": 0.0, "attributes": 0.0}


def test_recall_config_parses_and_checks() -> None:
    assert RecallConfig.parse("covisitation=0.3", 100) == RecallConfig(100, 0.3, 0.1)
    assert RecallConfig.parse("off") is None
    with pytest.raises(ValueError, match="--recall"):
        RecallConfig.parse("cooc=1")
    with pytest.raises(ValueError, match="at most 1"):
        RecallConfig(10, 0.8, 0.5)
