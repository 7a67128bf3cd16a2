"""Rankers (stream_app/core/ranking.py): exact equals full scoring, the ANN index finds the same lists, masks hold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint
from models.rnn import ModelConfig, build_model
from stream_app.core.ranking import AnnRanker, ExactRanker, item_matrix, masked_top_k, query_matrix, recall_at_k
from stream_app.core.recommender import Incoming, Policy, Recommender
from stream_app.core.records import Click, Source
from stream_app.core.state import decode


def clustered_model(n_items: int = 4000, hidden: int = 16, seed: int = 0):
    """A random-weight network whose item table has cluster structure (as trained tables do)."""
    model = build_model(ModelConfig(n_items=n_items, hidden=hidden, constrained=True), seed=seed).eval()
    model.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(40, hidden, generator=g)
    with torch.no_grad():
        model.out_emb.copy_(centres[torch.randint(0, 40, (n_items,), generator=g)]
                            + 0.2 * torch.randn(n_items, hidden, generator=g))
        model.out_bias.copy_(0.1 * torch.randn(n_items, generator=g))
    return model


def test_bias_is_folded_as_an_extra_dimension() -> None:
    model = clustered_model(300)
    q = torch.randn(5, 16)
    folded = query_matrix(q) @ item_matrix(model.out_emb, model.out_bias).T  # (5, N)
    np.testing.assert_allclose(folded, model.score(q).numpy(), rtol=1e-5, atol=1e-5)


def test_exact_ranker_equals_full_scoring_with_masks() -> None:
    model = clustered_model(500)
    q = torch.randn(4, 16)
    exclude = [set(), {3, 7}, set(range(0, 500, 2)), {1}]
    got = ExactRanker(model.out_emb, model.out_bias).top_k(q, 20, exclude)
    scores = model.score(q)
    for r in range(4):
        s = scores[r].clone()
        s[list(exclude[r])] = float("-inf")
        assert got.indices[r] == torch.topk(s, 20).indices.tolist()
        assert not set(got.indices[r]) & exclude[r]


@pytest.mark.parametrize("n_items,bias", [(4000, True), (4097, True), (5000, False)])
def test_grouped_exact_top_k_is_the_full_top_k(n_items: int, bias: bool) -> None:
    """Chunked products and group maxima give the lists of one product and one topk, masks included."""
    model = clustered_model(n_items)
    out_bias = model.out_bias if bias else None
    ranker = ExactRanker(model.out_emb, out_bias, chunk=256, group=16)
    assert ranker._chunks  # the grouped path is taken
    g = torch.Generator().manual_seed(1)
    q = torch.randn(37, 16, generator=g)
    # the best items of a row masked: the next ones must come from other groups
    best = ExactRanker(model.out_emb, out_bias, chunk=0).full_top_k(q, 40, [set()] * 37).indices
    exclude = [set(best[r][: r % 40]) | {int(i) for i in torch.randint(0, n_items, (r % 7,), generator=g)}
               for r in range(37)]
    for k in (1, 20, 33):
        got = ranker.top_k(q, k, exclude)
        want = ranker.full_top_k(q, k, exclude)
        assert got.indices == want.indices
        np.testing.assert_allclose(np.array(got.values), np.array(want.values), rtol=1e-5, atol=1e-5)
        assert all(len(row) == k and not set(row) & exclude[r] and max(row) < n_items
                   for r, row in enumerate(got.indices))


def test_grouped_top_k_reuses_its_buffer_across_batch_sizes() -> None:
    model = clustered_model(4096)
    ranker = ExactRanker(model.out_emb, model.out_bias, chunk=256, group=16)
    for n in (1, 5, 1, 5):
        q = torch.randn(n, 16)
        assert ranker.top_k(q, 20, [set()] * n).indices == ranker.full_top_k(q, 20, [set()] * n).indices


def test_masked_top_k_drops_the_masked_tail_of_a_tiny_catalogue() -> None:
    top = masked_top_k(torch.tensor([[0.3, 0.2, 0.1]]), 3, [{0, 2}])
    assert top.indices == [[1]] and top.values == [[pytest.approx(0.2)]]


def test_ann_ranker_recall_and_masks(tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    model = clustered_model(4000)
    q = model.output_vector(torch.tanh(torch.randn(200, 16)))  # (200, 16)
    exclude = [set(torch.topk(model.score(q[r:r + 1])[0], 2).indices.tolist()) for r in range(200)]
    exact = ExactRanker(model.out_emb, model.out_bias).top_k(q, 20, exclude)
    ann = AnnRanker(model.out_emb, model.out_bias, probes=16, cache_dir=tmp_path, tag="t")
    got = ann.top_k(q, 20, exclude)
    assert all(len(row) == 20 and not set(row) & ex for row, ex in zip(got.indices, exclude))
    assert recall_at_k(got.indices, exact.indices, 20) >= 0.9
    # a second ranker loads the cached index and answers the same
    again = AnnRanker(model.out_emb, model.out_bias, probes=16, cache_dir=tmp_path, tag="t")
    assert list(tmp_path.glob("ivf-t-*.faiss")) and again.top_k(q, 20, exclude).indices == got.indices
    # scanning every cell is exact
    full = AnnRanker(model.out_emb, model.out_bias, lists=8, probes=8)
    assert recall_at_k(full.top_k(q, 20, exclude).indices, exact.indices, 20) == 1.0


def test_recommender_with_ann_serves_the_exact_lists_when_every_cell_is_probed(small_checkpoint: Path) -> None:
    pytest.importorskip("faiss")
    ckpt = load_checkpoint(small_checkpoint)
    counts = np.asarray(ckpt.item_counts, dtype=np.float32)
    exact = Recommender(ckpt.model, ckpt.item_ids, counts, ckpt.version, Policy(k=10))
    ann = Recommender(ckpt.model, ckpt.item_ids, counts, ckpt.version, Policy(k=10),
                      ranker=AnnRanker(ckpt.model.out_emb, ckpt.model.out_bias, lists=1, probes=1))
    batch = [Incoming(Click(f"u{j % 3}", f"i{j}", float(j)), Source("clicks", 0, j), None) for j in range(9)]
    a, b = exact.process(batch, 0.0), ann.process(batch, 0.0)
    for x, y in zip(a, b):
        assert x.recommendation.items == y.recommendation.items
        np.testing.assert_allclose(x.recommendation.scores, y.recommendation.scores, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(decode(x.state_blob).hidden, decode(y.state_blob).hidden)
