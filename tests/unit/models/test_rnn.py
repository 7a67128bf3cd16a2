"""SessionRNN contract: click-by-click stepping == forward_sequence, purity, state layout."""

from __future__ import annotations

import pytest
import torch

from models.rnn import ModelConfig, SessionRNN, build_model

VARIANTS = [
    dict(cell="gru"),
    dict(cell="lstm"),
    dict(cell="rnn"),
    dict(cell="gru", layers=3),
    dict(cell="lstm", layers=2, embedding=8),
    dict(cell="rnn", layers=2, constrained=True),
    dict(cell="gru", constrained=True, output_bias=False, elu=0.5),
    dict(cell="gru", embedding=6, dropout_emb=0.3, dropout_hidden=0.3),
]


def make(**kw: object) -> SessionRNN:
    model = build_model(ModelConfig(n_items=17, hidden=10, **kw), seed=0)  # type: ignore[arg-type]
    with torch.no_grad():  # non-zero biases so the parity test exercises them
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("kw", VARIANTS, ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items()))
def test_step_matches_forward_sequence(kw: dict[str, object]) -> None:
    model = make(**kw)
    T, B = 7, 4
    items = torch.randint(0, 17, (T, B))  # (T, B)
    states, scores = model.forward_sequence(items)  # (T, B, S), (T, B, N)
    assert states.shape == (T, B, model.state_size) and scores.shape == (T, B, 17)
    s = model.zero_state(B)  # (B, S)
    for t in range(T):
        s, sc = model.step(s, items[t])
        torch.testing.assert_close(s, states[t], atol=1e-5, rtol=0)
        torch.testing.assert_close(sc, scores[t], atol=1e-5, rtol=0)
        torch.testing.assert_close(model.score(s), sc, atol=1e-5, rtol=0)


def test_forward_sequence_continues_from_state() -> None:
    model = make(cell="lstm", layers=2)
    items = torch.randint(0, 17, (6, 3))
    states, scores = model.forward_sequence(items)
    s2, sc2 = model.forward_sequence(items[3:], states[2])
    torch.testing.assert_close(s2, states[3:], atol=1e-5, rtol=0)
    torch.testing.assert_close(sc2, scores[3:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("cell,layers,size", [("gru", 1, 10), ("lstm", 1, 20), ("rnn", 2, 20), ("lstm", 3, 60)])
def test_state_size_and_zero_state(cell: str, layers: int, size: int) -> None:
    model = make(cell=cell, layers=layers)
    assert model.state_size == size
    z = model.zero_state(5)
    assert z.shape == (5, size) and z.dtype == torch.float32 and not z.any()


def test_default_gru_state_size_is_hidden() -> None:
    assert SessionRNN(ModelConfig(n_items=5, hidden=100)).state_size == 100


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
def test_step_is_pure(cell: str) -> None:
    model = make(cell=cell, layers=2)
    state = torch.randn(3, model.state_size)
    items = torch.tensor([1, 2, 3])
    state_copy, items_copy = state.clone(), items.clone()
    params = {k: v.clone() for k, v in model.state_dict().items()}
    attrs = set(vars(model))
    new_state, scores = model.step(state, items)
    new_state2, scores2 = model.step(state, items)
    assert torch.equal(state, state_copy) and torch.equal(items, items_copy)
    assert new_state.data_ptr() != state.data_ptr()
    torch.testing.assert_close(new_state, new_state2, atol=0, rtol=0)
    torch.testing.assert_close(scores, scores2, atol=0, rtol=0)
    assert set(vars(model)) == attrs
    for k, v in model.state_dict().items():
        assert torch.equal(v, params[k])


def test_step_under_inference_mode_batch_and_single() -> None:
    model = make(cell="gru")
    with torch.inference_mode():
        s, sc = model.step(model.zero_state(1), torch.tensor([3]))
        assert s.shape == (1, 10) and sc.shape == (1, 17)
        s, sc = model.step(torch.zeros(64, 10), torch.randint(0, 17, (64,)))
        assert s.shape == (64, 10) and sc.shape == (64, 17)


def test_dropout_only_in_training() -> None:
    model = make(cell="gru", dropout_emb=0.5, dropout_hidden=0.5)
    items = torch.randint(0, 17, (5, 2))
    a = model.forward_sequence(items)[1]
    b = model.forward_sequence(items)[1]
    assert torch.equal(a, b)
    model.train()
    torch.manual_seed(0)
    c = model.forward_sequence(items)[1]
    assert not torch.allclose(a, c)


def test_config_validation_and_round_trip() -> None:
    with pytest.raises(ValueError):
        ModelConfig(n_items=3, cell="transformer")
    cfg = ModelConfig(n_items=9, hidden=4, layers=2, cell="lstm", constrained=True)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError):
        ModelConfig.from_dict({**cfg.to_dict(), "bogus": 1})
