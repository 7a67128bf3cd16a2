"""The re-rankers (stream_app/core/rerank.py): off is plain score order, each term moves the list the way
its paper says, short candidate lists stay short, and the figures they optimise move with them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.beyond import ListFigures
from stream_app.core.rerank import ItemFacts, Strengths, parse_strengths, rerank, rerank_lists, shaper


def _facts(n: int = 40, seed: int = 0) -> tuple[ItemFacts, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, 8, generator=g)
    counts = np.arange(n, 0, -1, dtype=np.float64)  # item 0 the most clicked
    flat = np.arange(n) % 4  # one attribute each, four attributes
    attrs = (flat, np.arange(n + 1))
    return ItemFacts.build(emb, counts, attrs), counts, attrs


def test_off_is_score_order_and_strengths_are_checked() -> None:
    facts, _, _ = _facts()
    scores = torch.randn(3, 40)
    top = torch.topk(scores, 10)
    _, items, ok = rerank(top.values, top.indices, 5, Strengths(), facts)
    assert torch.equal(items, top.indices[:, :5]) and bool(ok.all())
    with pytest.raises(ValueError):
        Strengths(mmr=0.6, long_tail=0.5)
    with pytest.raises(ValueError):
        parse_strengths("diversity=0.2")
    assert parse_strengths("mmr=0.2, long_tail=0.1") == Strengths(mmr=0.2, long_tail=0.1)
    assert Strengths(calibration=0.1).names() == ("calibration",)


def test_mmr_skips_a_near_duplicate() -> None:
    emb = torch.tensor([[1.0, 0.0], [0.99, 0.01], [0.0, 1.0]])  # items 0 and 1 nearly identical
    facts = ItemFacts.build(emb, np.array([3.0, 2.0, 1.0]))
    values = torch.tensor([[3.0, 2.9, 2.0]])
    items = torch.tensor([[0, 1, 2]])
    assert rerank(values, items, 2, Strengths(), facts)[1].tolist() == [[0, 1]]
    assert rerank(values, items, 2, Strengths(mmr=0.6), facts)[1].tolist() == [[0, 2]]


def test_long_tail_brings_tail_items_in_for_a_tail_user() -> None:
    facts, counts, _ = _facts()
    assert not bool(facts.tail[:8].any()) and bool(facts.tail[8:].all())  # the head is the 20 % most clicked
    values = torch.linspace(1.0, 0.0, 20).unsqueeze(0)  # candidates 0..19, head ones first
    items = torch.arange(20).unsqueeze(0)
    history = [np.array([30, 31, 32, 33])]  # a user of the tail
    plain = rerank(values, items, 8, Strengths(), facts, history)[1]
    shaped = rerank(values, items, 8, Strengths(long_tail=0.5), facts, history)[1]
    assert int(facts.tail[plain].sum()) == 0 < int(facts.tail[shaped].sum())
    head_user = [np.array([0, 1, 2, 3, 4, 5])]  # a user of the head is served balanced lists, not pulled to the head
    from stream_app.core.rerank import tail_preference

    assert tail_preference(facts, head_user).tolist() == [0.5] and abs(float(tail_preference(facts, history)[0]) - 5 / 6) < 1e-6
    balanced = rerank(values, items, 8, Strengths(long_tail=0.5), facts, head_user)[1]
    assert 0 < int(facts.tail[balanced].sum()) <= int(facts.tail[shaped].sum())


def test_calibration_matches_the_history_mix() -> None:
    facts, counts, attrs = _facts()
    values = torch.linspace(1.0, 0.5, 20).unsqueeze(0)
    items = torch.arange(20).unsqueeze(0)
    history = [np.array([0, 4, 1, 5])]  # attributes 0, 0, 1, 1: half and half
    figures = {}
    for name, s in (("plain", Strengths()), ("calibrated", Strengths(calibration=0.5))):
        lists = rerank(values, items, 4, s, facts, history)[1]
        f = ListFigures(counts, facts.unit, attrs, k=4)
        f.add(lists, history)
        figures[name] = f.result()["miscalibration@4"]
    assert figures["calibrated"] < figures["plain"]


def test_short_rows_and_ragged_lists() -> None:
    facts, _, _ = _facts()
    values = torch.tensor([[2.0, 1.0, -float("inf")], [-float("inf")] * 3])
    items = torch.tensor([[3, 4, 0], [0, 0, 0]])
    v, i, ok = rerank(values, items, 3, Strengths(mmr=0.3, long_tail=0.3), facts, [np.array([1]), np.array([], np.int64)])
    assert ok.tolist() == [[True, True, False], [False, False, False]]
    assert sorted(i[0, :2].tolist()) == [3, 4]
    lv, li = rerank_lists([[2.0, 1.0], []], [[3, 4], []], 3, Strengths(mmr=0.3), facts, [np.array([1]), np.array([], np.int64)])
    assert [len(r) for r in li] == [2, 0] and sorted(li[0]) == [3, 4] and lv[0][0] in (1.0, 2.0)
    lists = shaper(facts, Strengths(long_tail=0.2), 5, 10)(torch.randn(2, 40), [np.array([1]), np.array([2])])
    assert lists.shape == (2, 5) and bool((lists >= 0).all())


def test_new_catalogue_items_are_tail_without_attributes() -> None:
    facts, _, _ = _facts()
    more = facts.extended(torch.randn(3, 8))
    assert more.n_items == 43 and bool(more.tail[40:].all()) and more.indptr is not None and len(more.indptr) == 44
