"""Long-term users: sessions per user, the user-level GRU in training, offline and in the worker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.rnn import ModelConfig, build_model
from models.train import TrainConfig, fit
from models.users import (Case, Coder, evaluate_cases, network_method, popularity_method, read_user_clicks,
                          sknn_method, split_last)
from stream_app.core.recommender import Incoming, Policy, Recommender
from stream_app.core.records import Click, Source
from stream_app.core.state import decode


def _log(tmp_path: Path) -> Path:
    """20 users, 4 sessions of 5 clicks each, an hour apart; a user walks items of its own group."""
    rows = ["UserId\tItemId\tTime"]
    for u in range(20):
        base = (u % 2) * 10
        for s in range(4):
            for j in range(5):
                rows.append(f"u{u}\ti{base + (s + 2 * j + u) % 10}\t{s * 3600 + j * 10 + (u * 100000)}")
    path = tmp_path / "clicks.tsv"
    path.write_text("\n".join(rows[:1] + rows[:0:-1]) + "\n")  # newest first: the reader sorts by time
    return path


def test_sessions_are_cut_at_the_gap_and_the_last_one_held_out(tmp_path: Path) -> None:
    users = read_user_clicks(_log(tmp_path), gap=600)
    assert len(users) == 20 and all(len(u.sessions) == 4 and all(len(s) == 5 for s in u.sessions) for u in users)
    assert users[-1].sessions[0][0] == "i0"  # time order restored
    rest, held = split_last(users)
    assert len(held) == 20 and all(len(u.sessions) == 3 for u in rest)
    lanes, user_lanes, counts = Coder(rest, {}).lanes(rest)
    assert lanes.n_sessions == 20 and int(user_lanes.starts.sum()) == 60 and counts.sum() == 300


def test_training_on_whole_users_and_the_worker_agree_with_the_offline_recurrence(tmp_path: Path) -> None:
    users = read_user_clicks(_log(tmp_path), gap=600)
    profiles = {f"u{u}": [f"g:{u % 2}"] for u in range(20)}
    rest, held = split_last(users)
    coder = Coder(rest, profiles)
    lanes, user_lanes, counts = coder.lanes(rest)
    cfg = TrainConfig(epochs=1, hidden=8, user_hidden=4, negatives=4, batch_size=4)
    model, _ = fit(lanes, counts, cfg, progress=False, log=None, users=user_lanes)
    assert model.user_cell is not None and model.profile is not None
    cases = coder.cases(held)
    scores = network_method(model)(cases[0])
    assert scores.shape == (4, len(coder.item_ids)) and bool(torch.isfinite(scores).all())
    for method in (network_method(model), sknn_method(coder.sessions(rest), len(coder.item_ids), 5, 0.5),
                   popularity_method(counts)):
        assert 0.0 <= evaluate_cases(method, cases, len(coder.item_ids))["recall@20"] <= 1.0

    # The worker: the same user's two sessions click by click, one batch each.
    net = build_model(ModelConfig(n_items=6, hidden=8, user_hidden=4), seed=3).eval()
    rec = Recommender(net, [f"i{j}" for j in range(6)], np.ones(6, dtype=np.float32), "v",
                      Policy(k=6, gap_s=100.0, exclude_clicked=False, recent_items=0))
    blob = None
    clicks = [(0, 0.0), (1, 1.0), (2, 2.0), (3, 500.0)]  # a gap before the last click
    for off, (item, ts) in enumerate(clicks):
        out = rec.process([Incoming(Click("u", f"i{item}", ts), Source("clicks", 0, off, ts), blob)], now=ts)[0]
        blob = out.state_blob
    state = decode(blob)
    with torch.inference_mode():
        s = net.session_start(net.zero_user(1))
        for item in (0, 1, 2):
            s, _ = net.advance(s, net.input_vectors(torch.tensor([item])))
        u1 = net.user_step(net.zero_user(1), s)
        s2, _ = net.advance(net.session_start(u1), net.input_vectors(torch.tensor([3])))
        expected = net.score(s2, net.user_vector(u1, None))[0]
    np.testing.assert_allclose(state.user, u1[0].numpy(), atol=1e-6)
    np.testing.assert_allclose(out.user_vector, u1[0].numpy(), atol=1e-6)  # shared at the gap (user-vectors topic)
    np.testing.assert_allclose(state.hidden, s2[0].numpy(), atol=1e-6)
    np.testing.assert_allclose(out.recommendation.scores, torch.sort(expected, descending=True).values.numpy(), atol=1e-5)
    offline = network_method(net)(Case([np.array([0, 1, 2])], np.array([3, 4]), np.zeros(0, dtype=np.int64)))
    np.testing.assert_allclose(offline[0].numpy(), expected.numpy(), atol=1e-5)

    # an unknown first click of a new session does not lose the finished one: it is folded in at the gap
    first = rec.process([Incoming(Click("w", "i0", 0.0), Source("clicks", 0, 10, 0.0), None)], now=0.0)[0]
    gap = rec.process([Incoming(Click("w", "nope", 500.0), Source("clicks", 0, 11, 500.0), first.state_blob)],
                      now=500.0)[0]
    with torch.inference_mode():
        s1, _ = net.advance(net.session_start(net.zero_user(1)), net.input_vectors(torch.tensor([0])))
        u_w = net.user_step(net.zero_user(1), s1)
    np.testing.assert_allclose(decode(gap.state_blob).user, u_w[0].numpy(), atol=1e-6)
    assert gap.unknown_item and decode(gap.state_blob).hidden is None and gap.user_vector is not None


def test_the_target_is_never_excluded_even_when_seen_before() -> None:
    case = Case([np.array([2])], np.array([1, 2]), np.zeros(0, dtype=np.int64))
    got = evaluate_cases(lambda c: torch.tensor([[0.0, 0.0, 5.0, 1.0]]), [case], 4, ks=(1,))
    assert got["recall@1"] == 1.0


def test_streamrec_longterm_prints_every_method_as_json(tmp_path: Path, capsys) -> None:
    import json

    from stream_app.offline_cli import main

    profiles = tmp_path / "users.json"
    profiles.write_text(json.dumps({f"u{u}": [f"g:{u % 2}"] for u in range(20)}))
    ckpt = tmp_path / "longterm.pt"
    assert main(["longterm", "--clicks", str(_log(tmp_path)), "--user-attributes", str(profiles), "--gap", "600",
                 "--epochs", "1", "--hidden", "8", "--user-hidden", "4", "--negatives", "8", "--json", "--quiet",
                 "--out", str(ckpt)]) == 0
    res = json.loads(capsys.readouterr().out)
    for name in ("session_aware", "session_aware_no_profile", "session_only", "sknn_user_history", "sknn", "popularity"):
        assert 0.0 <= res[name]["recall@20"] <= 1.0
    vectors = res["user_vectors"]
    assert 0.0 <= vectors["probe_auc_g"]["user_vectors"] <= 1.0
    assert set(vectors["neighbour_precision@10"]) == {"user_vectors", "item_overlap_knn", "random_users"}
    from models.checkpoint import load_checkpoint

    loaded = load_checkpoint(ckpt)
    assert loaded.model.config.user_hidden == 4 and loaded.meta["profile_attributes"] == ["g:0", "g:1"]

