"""Decisions of the per-click core, without a broker, on a real (small) network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint
from stream_app.core.recommender import Incoming, Policy, Recommender
from stream_app.core.records import Click, Source
from stream_app.core.state import decode


@pytest.fixture()
def ckpt(small_checkpoint: Path):
    return load_checkpoint(small_checkpoint)


def make_rec(ckpt, **policy) -> Recommender:
    return Recommender(ckpt.model, ckpt.item_ids, np.asarray(ckpt.item_counts, dtype=np.float32),
                       ckpt.version, Policy(**policy))


def inc(user: str, item: str, ts: float, offset: int, blob: bytes | None = None, partition: int = 0) -> Incoming:
    return Incoming(Click(user, item, ts), Source("clicks", partition, offset, ts), blob)


def run_seq(rec: Recommender, clicks: list[tuple[str, str, float]]) -> dict[str, bytes]:
    """Click by click, one batch each, threading the stored blob like the table does."""
    store: dict[str, bytes] = {}
    for off, (u, i, ts) in enumerate(clicks):
        out = rec.process([inc(u, i, ts, off, store.get(u))], now=ts)[0]
        if out.state_blob is not None:
            store[u] = out.state_blob
    return store


def test_first_known_click_steps_from_zero(ckpt) -> None:
    rec = make_rec(ckpt, k=5)
    out = rec.process([inc("u", "i3", 100.0, 0)], now=100.0)[0]
    h, scores = ckpt.model.step(ckpt.model.zero_state(1), torch.tensor([3]))
    state = decode(out.state_blob)
    np.testing.assert_allclose(state.hidden, h[0].detach().numpy(), atol=1e-6)
    assert out.recommendation.strategy == "model"
    s = scores[0].detach().clone()
    s[3] = float("-inf")
    assert list(out.recommendation.items) == [f"i{j}" for j in torch.topk(s, 5).indices.tolist()]
    assert "i3" not in out.recommendation.items


def test_unknown_item_for_new_user_gets_popularity(ckpt) -> None:
    rec = make_rec(ckpt, k=3)
    out = rec.process([inc("u", "nope", 1.0, 0)], now=1.0)[0]
    assert out.unknown_item and out.recommendation.strategy == "popularity"
    assert list(out.recommendation.items) == ["i0", "i1", "i2"]
    assert decode(out.state_blob).hidden is None


def test_unknown_item_keeps_state_and_ranks_from_it(ckpt) -> None:
    rec = make_rec(ckpt, k=3)
    first = rec.process([inc("u", "i5", 1.0, 0)], now=1.0)[0]
    out = rec.process([inc("u", "nope", 2.0, 1, first.state_blob)], now=2.0)[0]
    assert out.unknown_item and out.recommendation.strategy == "model"
    np.testing.assert_array_equal(decode(out.state_blob).hidden, decode(first.state_blob).hidden)


def test_session_gap_resets_hidden_state(ckpt) -> None:
    rec = make_rec(ckpt, gap_s=60)
    first = rec.process([inc("u", "i5", 0.0, 0)], now=0.0)[0]
    later = rec.process([inc("u", "i7", 61.0, 1, first.state_blob)], now=61.0)[0]
    fresh = rec.process([inc("v", "i7", 61.0, 2)], now=61.0)[0]
    assert later.reset_reason == "session_gap"
    np.testing.assert_allclose(decode(later.state_blob).hidden, decode(fresh.state_blob).hidden, atol=1e-6)


def test_keep_across_sessions_does_not_reset(ckpt) -> None:
    rec = make_rec(ckpt, gap_s=60, keep_across_sessions=True)
    first = rec.process([inc("u", "i5", 0.0, 0)], now=0.0)[0]
    later = rec.process([inc("u", "i7", 1e6, 1, first.state_blob)], now=1e6)[0]
    assert later.reset_reason is None


def test_replayed_click_is_not_applied_twice(ckpt) -> None:
    rec = make_rec(ckpt)
    first = rec.process([inc("u", "i5", 0.0, 10)], now=0.0)[0]
    again = rec.process([inc("u", "i5", 0.0, 10, first.state_blob)], now=1.0)[0]
    older = rec.process([inc("u", "i9", 0.0, 9, first.state_blob)], now=1.0)[0]
    assert again.replayed and again.state_blob is None
    assert older.replayed and older.state_blob is None
    assert again.recommendation.items == first.recommendation.items


def test_same_offset_other_partition_is_not_a_replay(ckpt) -> None:
    rec = make_rec(ckpt)
    first = rec.process([inc("u", "i5", 0.0, 10, partition=0)], now=0.0)[0]
    other = rec.process([inc("u", "i5", 0.0, 10, first.state_blob, partition=1)], now=0.0)[0]
    assert not other.replayed


def test_undecodable_and_foreign_states_are_reset(ckpt) -> None:
    rec = make_rec(ckpt)
    assert rec.process([inc("u", "i1", 0.0, 0, b"garbage")], now=0.0)[0].reset_reason == "undecodable"
    other = make_rec(ckpt)
    other.model_version = "another"
    blob = other.process([inc("u", "i1", 0.0, 0)], now=0.0)[0].state_blob
    assert rec.process([inc("u", "i1", 0.0, 1, blob)], now=0.0)[0].reset_reason == "model_version"


def test_batch_equals_click_by_click_with_same_user_twice(ckpt) -> None:
    clicks = [("a", "i1", 1.0), ("b", "i2", 1.0), ("a", "i3", 2.0), ("a", "i4", 3.0), ("b", "zz", 4.0)]
    seq = run_seq(make_rec(ckpt), clicks)
    rec = make_rec(ckpt)
    outs = rec.process([inc(u, i, ts, off) for off, (u, i, ts) in enumerate(clicks)], now=5.0)
    last: dict[str, bytes] = {}
    for (u, _, _), o in zip(clicks, outs):
        last[u] = o.state_blob
    for u in ("a", "b"):
        np.testing.assert_allclose(decode(last[u]).hidden, decode(seq[u]).hidden, atol=1e-5)
    assert [o.recommendation.user_id for o in outs] == [u for u, _, _ in clicks]


def test_online_rank_scores_the_previous_list(ckpt) -> None:
    rec = make_rec(ckpt, k=20)
    first = rec.process([inc("u", "i5", 0.0, 0)], now=0.0)[0]
    target = first.recommendation.items[2]
    second = rec.process([inc("u", target, 1.0, 1, first.state_blob)], now=1.0)[0]
    assert first.online_rank is None and second.online_rank == 3


def test_recent_items_are_excluded(ckpt) -> None:
    rec = make_rec(ckpt, k=45, recent_items=3)
    blob = None
    for off, item in enumerate(["i1", "i2", "i3"]):
        out = rec.process([inc("u", item, float(off), off, blob)], now=0.0)[0]
        blob = out.state_blob
    assert not {"i1", "i2", "i3"} & set(out.recommendation.items)


def test_large_batch_of_many_same_user_clicks_equals_click_by_click(ckpt) -> None:
    """256 clicks of 12 users in one batch (about 20 per user, so about 30 waves), with unknown items
    and session gaps: the same states and the same lists as one click per batch."""
    rng = np.random.default_rng(5)
    clicks: list[tuple[str, str, float]] = []
    ts = 0.0
    for _ in range(256):
        user = f"u{int(rng.integers(12))}"
        item = f"i{int(rng.integers(50))}" if rng.random() > 0.1 else "unknown"
        ts += 1.0 if rng.random() > 0.02 else 5000.0
        clicks.append((user, item, ts))
    seq_rec, batch_rec = make_rec(ckpt, k=10), make_rec(ckpt, k=10)
    store: dict[str, bytes] = {}
    offsets = list(range(256))
    offsets[100] = offsets[99]  # a replayed click inside the batch (same partition and offset)
    if clicks[100][0] != clicks[99][0]:
        clicks[100] = (clicks[99][0],) + clicks[100][1:]
    seq_lists, seq_extra = [], []
    for off, (u, i, t) in zip(offsets, clicks):
        out = seq_rec.process([inc(u, i, t, off, store.get(u))], now=t)[0]
        seq_lists.append(out.recommendation.items)
        seq_extra.append((out.online_rank, out.reset_reason, out.replayed, out.unknown_item))
        if out.state_blob is not None:
            store[u] = out.state_blob
    outs = batch_rec.process([inc(u, i, t, off) for off, (u, i, t) in zip(offsets, clicks)], now=ts)
    assert [o.recommendation.user_id for o in outs] == [u for u, _, _ in clicks]
    assert [o.recommendation.items for o in outs] == seq_lists
    assert [(o.online_rank, o.reset_reason, o.replayed, o.unknown_item) for o in outs] == seq_extra
    assert outs[100].replayed and sum(r is not None and r > 0 for r, *_ in seq_extra) > 0
    last: dict[str, bytes] = {}
    for (u, _, _), o in zip(clicks, outs):
        if o.state_blob is not None:
            last[u] = o.state_blob
    for u, blob in store.items():
        a, b = decode(last[u]), decode(blob)
        assert (a.last_offset, a.recent, a.served) == (b.last_offset, b.recent, b.served)
        if b.hidden is None:
            assert a.hidden is None
        else:
            np.testing.assert_allclose(a.hidden, b.hidden, atol=1e-5)


def test_rerankers_reorder_within_the_candidates_and_say_so(ckpt) -> None:
    from stream_app.core.rerank import Strengths

    clicks = [inc("u", f"i{j}", float(j), j) for j in (3, 4, 5)]
    plain = make_rec(ckpt, k=5)
    shaped = make_rec(ckpt, k=5, rerank=Strengths(mmr=0.5, long_tail=0.3), candidates=12)
    store: dict[str, bytes] = {}
    for c in clicks:
        a = plain.process([Incoming(c.click, c.source, store.get("u"))], now=c.click.ts)[0]
        b = shaped.process([Incoming(c.click, c.source, store.get("u"))], now=c.click.ts)[0]
        store["u"] = a.state_blob  # the states do not depend on the lists' order
        assert decode(b.state_blob).hidden.tolist() == decode(a.state_blob).hidden.tolist()
    ra, rb = a.recommendation, b.recommendation
    assert ra.stages == ("score",) and rb.stages == ("score", "mmr", "long_tail")
    assert len(rb.items) == 5 and len(set(rb.items)) == 5 and "i5" not in rb.items
    wide = make_rec(ckpt, k=12).process([Incoming(c.click, c.source, store.get("u"))], now=9.0)[0]
    assert set(rb.items) <= set(wide.recommendation.items)  # re-ranked from the 12 candidates only
    mmr = make_rec(ckpt, k=5, rerank=Strengths(mmr=0.5), candidates=12)
    first = mmr.process([Incoming(c.click, c.source, store.get("u"))], now=9.0)[0].recommendation
    assert first.items[0] == wide.recommendation.items[0]  # MMR's first pick is the best score
    assert set(shaped.stage_seconds) == {"score", "rerank"}
    assert '"stages":["score","mmr","long_tail"]' in rb.to_json().decode()


def test_also_like_is_a_seeded_draw_with_its_probabilities(ckpt) -> None:
    plain = make_rec(ckpt, k=5)
    also = make_rec(ckpt, k=5, also_k=6, also_temperature=0.5, candidates=15)
    a = plain.process([inc("u", "i3", 1.0, 7)], now=1.0)[0].recommendation
    out = also.process([inc("u", "i3", 1.0, 7)], now=1.0)[0]
    b = out.recommendation
    assert b.items == a.items and not a.also  # the served list is unchanged; off means no field
    assert len(b.also) == 6 and len(set(b.also)) == 6 and "i3" not in b.also
    assert all(0.0 < p <= 1.0 for p in b.also_p) and sum(b.also_p) <= 1.0 + 1e-9
    wide = make_rec(ckpt, k=15).process([inc("u", "i3", 1.0, 7)], now=1.0)[0].recommendation
    assert set(b.also) <= set(wide.items)  # drawn from the 15 candidates
    again = also.process([inc("u", "i3", 1.0, 7, out.state_blob)], now=2.0)[0].recommendation
    assert again.replayed and again.also == b.also  # a redelivered click draws the same list
    assert "also_like" in b.to_dict() and b.from_json(b.to_json()).also == b.also
    cold = also.process([inc("w", "nope", 1.0, 9)], now=1.0)[0].recommendation
    assert cold.strategy == "popularity" and len(cold.also) == 6


def test_recall_and_ranker_stages_equal_the_offline_pipeline(ckpt, tmp_path: Path) -> None:
    from models.recall import merge
    from tests.unit.stream_app.tiny_ranker import tiny_ranker

    counts = np.asarray(ckpt.item_counts, dtype=np.float64)
    pipeline, covis = tiny_ranker(ckpt, ckpt.model, counts, tmp_path / "r.pt")
    recall = pipeline.recall
    rec = Recommender(ckpt.model, ckpt.item_ids, counts.astype(np.float32), ckpt.version, Policy(k=5),
                      pipeline=pipeline)
    assert rec.stages == ("score", "recall", "ranker")
    store: dict[str, bytes] = {}
    for off, j in enumerate((3, 4, 5)):
        out = rec.process([inc("u", f"i{j}", float(off), off, store.get("u"))], now=float(off))[0]
        store["u"] = out.state_blob
    got = out.recommendation
    assert got.stages == ("score", "recall", "ranker") and {"score", "recall", "ranker"} <= set(rec.stage_seconds)
    assert len(got.sources) == len(got.items) and all(s and set(s.split("+")) <= {"network", "covisitation"}
                                                       for s in got.sources)
    body = got.to_dict()
    assert body["policy"] == {"id": rec.policy_id, "version": ckpt.version, "shown": "deterministic"}
    assert got.from_json(got.to_json()).sources == got.sources and got.from_json(got.to_json()).policy_id == rec.policy_id
    plain = make_rec(ckpt, k=5)
    assert plain.policy_id == make_rec(ckpt, k=5).policy_id != rec.policy_id != make_rec(ckpt, k=6).policy_id
    cold = rec.process([inc("w", "nope", 1.0, 99)], now=1.0)[0].recommendation
    assert cold.strategy == "popularity" and cold.stages == ("popularity",) and cold.sources == ()
    with torch.inference_mode():  # the same list offline: full scores, the history masked, merge, ranker order
        q = ckpt.model.output_vector(torch.from_numpy(decode(out.state_blob).hidden)[None])
        scores = q @ ckpt.model.out_emb.t() + ckpt.model.out_bias
        history = np.array([3, 4, 5])
        scores[0, torch.from_numpy(history)] = -torch.inf
        cand = merge(scores, torch.tensor([5]), recall, covis, None)
        order = pipeline.order(cand, [history])
    best = cand.items[0][torch.argsort(order[0], descending=True, stable=True)][:5].tolist()
    assert list(got.items) == [ckpt.item_ids[i] for i in best]
    assert [round(s, 4) for s in got.scores] == [round(float(v), 4) for v in torch.sort(order[0], descending=True).values[:5]]
    # the last item's neighbours are candidates (network's top or not), unless the user just clicked them
    assert {int(i) for i in covis.index[5]} - {3, 4, 5} <= set(cand.items[0].tolist())


def test_the_ranker_setting_loads_its_file_or_says_why(small_checkpoint: Path, tmp_path: Path) -> None:
    from stream_app.errors import ModelLoadError
    from stream_app.settings import Settings
    from stream_app.worker.start import load_recommender
    from tests.unit.stream_app.tiny_ranker import tiny_ranker

    ck = load_checkpoint(small_checkpoint)
    tiny_ranker(ck, ck.model, np.asarray(ck.item_counts), tmp_path / "r.pt")
    rec, _ = load_recommender(Settings(model={"path": str(small_checkpoint), "ranker": str(tmp_path / "r.pt")}))
    assert rec.pipeline is not None and rec.stages[:3] == ("score", "recall", "ranker")
    (tmp_path / "bad.pt").write_bytes(b"junk")
    for path, why in ((tmp_path / "bad.pt", "cannot read ranker"), (tmp_path / "none.pt", "ranker not found")):
        with pytest.raises(ModelLoadError, match=f"STREAMREC_MODEL__RANKER: {why}"):
            load_recommender(Settings(model={"path": str(small_checkpoint), "ranker": str(path)}))


def test_a_replacing_model_carries_users_over_instead_of_resetting(ckpt, tmp_path: Path) -> None:
    from models.checkpoint import save_checkpoint
    from models.rnn import ModelConfig, build_model

    old = make_rec(ckpt, k=5)
    store = run_seq(old, [("u", "i3", 1.0), ("u", "i4", 2.0), ("u", "i5", 3.0)])
    # the next model knows the items in another order, and not i4
    ids = [f"i{j}" for j in range(49, -1, -1) if j != 4]
    save_checkpoint(tmp_path / "new.pt", build_model(ModelConfig(n_items=len(ids), hidden=16), seed=3).eval(), ids,
                    list(range(len(ids), 0, -1)), {})
    new_ck = load_checkpoint(tmp_path / "new.pt")
    fresh = make_rec(new_ck, k=5)
    reset = fresh.process([inc("u", "i6", 4.0, 3, store["u"])], now=4.0)[0]
    assert reset.reset_reason == "model_version"  # without the lineage: a reset, as for any foreign state
    swapped = make_rec(new_ck, k=5)
    swapped.adopt(old)
    out = swapped.process([inc("u", "i6", 4.0, 3, store["u"])], now=4.0)[0]
    assert out.reset_reason is None and swapped.carried_last == 1
    state = decode(out.state_blob)
    assert state.model_version == new_ck.version
    assert [new_ck.item_ids[i] for i in state.recent] == ["i3", "i5", "i6"]  # mapped by id; i4 is unknown there
    # the carried state is the new network run over the known recent items, then this click
    with torch.inference_mode():
        h = torch.zeros(1, new_ck.model.state_size)
        for item in ("i3", "i5", "i6"):
            h, _ = new_ck.model.advance(h, new_ck.model.input_table()[[new_ck.item_index[item]]])
    assert np.allclose(state.hidden, h[0].numpy(), atol=1e-6)
    assert out.recommendation.model_version == new_ck.version and out.recommendation.strategy == "model"
    again = swapped.process([inc("u", "i7", 5.0, 4, out.state_blob)], now=5.0)[0]
    assert again.reset_reason is None and swapped.carried_last == 0  # carried once, then it is this model's
