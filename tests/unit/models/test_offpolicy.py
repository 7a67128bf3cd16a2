"""Off-policy REINFORCE (models/offpolicy.py): the top-K multiplier, the loss's gradient against the
hand-derived one, and the simulation of Chen et al. 2019 §6.1.2 reproducing the paper's two claims."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.offpolicy import CHEN2019_REWARDS, chen2019, reinforce_loss, simulate_chen2019, topk_weight

torch.set_num_threads(1)


def test_topk_weight_values() -> None:
    pi = torch.tensor([0.0, 0.2, 0.5, 1.0], dtype=torch.float64)
    assert torch.equal(topk_weight(pi, 1), torch.ones(4, dtype=torch.float64))  # K = 1: the standard correction
    assert torch.allclose(topk_weight(pi, 2), torch.tensor([2.0, 1.6, 1.0, 0.0], dtype=torch.float64))
    assert topk_weight(torch.tensor(0.2), 3).item() == pytest.approx(3 * 0.8 ** 2)  # 1.92
    assert topk_weight(torch.tensor(1e-9), 16).item() == pytest.approx(16.0)  # pi -> 0: lambda -> K
    with pytest.raises(ValueError):
        topk_weight(pi, 0)


def _grad(logits: np.ndarray, actions: list[int], rewards: list[float], beta: list[float], k: int,
          cap: float | None) -> np.ndarray:
    x = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    loss = reinforce_loss(x, torch.tensor(actions), torch.tensor(rewards, dtype=torch.float64),
                          torch.tensor(beta, dtype=torch.float64), k=k, cap=cap)
    loss.backward()
    return x.grad.numpy()


@pytest.mark.parametrize("k, cap, expected", [
    # pi = 1/3 each, a = item 0, R = 2, beta = 1/2: w = 2/3, d log pi(a) / d x = (2/3, -1/3, -1/3)
    (1, None, [-(2 / 3) * 2 * (2 / 3), (2 / 3) * 2 / 3, (2 / 3) * 2 / 3]),   # -w R (I - pi)
    (2, None, [-32 / 27, 16 / 27, 16 / 27]),                                   # lambda = 2 (1 - 1/3) = 4/3
    (2, 0.5, [-8 / 9, 4 / 9, 4 / 9]),                                          # w capped at 1/2
])
def test_gradient_one_logged_action(k: int, cap: float | None, expected: list[float]) -> None:
    g = _grad(np.zeros((1, 3)), [0], [2.0], [0.5], k, cap)
    np.testing.assert_allclose(g[0], expected, rtol=1e-12)


@pytest.mark.parametrize("k, cap", [(1, None), (2, None), (3, None), (1, 1.5), (2, 1.5)])
def test_gradient_matches_hand_derivation(k: int, cap: float | None) -> None:
    """d loss / d x_bj = -(1/B) w_b lambda_b R_b (I(j = a_b) - pi_bj), with w and lambda held constant."""
    logits = np.array([[0.5, -0.2, 0.1], [1.0, 0.0, -1.0], [-0.3, 0.8, 0.2], [0.0, 0.0, 2.0]])
    actions, rewards, beta = [0, 2, 1, 2], [1.0, 3.0, -0.5, 2.0], [0.2, 0.1, 0.5, 0.6]
    pi = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    expected = np.zeros_like(logits)
    capped = 0
    for b, a in enumerate(actions):
        w = pi[b, a] / beta[b]
        if cap is not None and w > cap:
            w, capped = cap, capped + 1
        lam = k * (1 - pi[b, a]) ** (k - 1)
        onehot = np.eye(3)[a]
        expected[b] = -w * lam * rewards[b] * (onehot - pi[b]) / len(actions)
    if cap is not None:
        assert capped >= 1  # the example does exercise the cap (row 1: pi/beta = 0.66/0.1)
    np.testing.assert_allclose(_grad(logits, actions, rewards, beta, k, cap), expected, rtol=1e-10, atol=1e-14)


def test_loss_checks_its_inputs() -> None:
    with pytest.raises(ValueError):
        reinforce_loss(torch.zeros(3), torch.tensor([0]), torch.tensor([1.0]), torch.tensor([0.5]))
    with pytest.raises(ValueError):
        reinforce_loss(torch.zeros(1, 3), torch.tensor([0]), torch.tensor([1.0]), torch.tensor([0.0]))


def test_one_step_is_the_papers_sgd_update() -> None:
    """§6.1.2: theta_j += eta * pi(a_i)/beta(a_i) * r(a_i) * [I(j = i) - pi(a_j)] (times lambda_K(a_i) for top-K)."""
    res = simulate_chen2019(2, steps=1, lr=0.1, seed=3, batch=1)
    a = int(np.random.default_rng(3).choice(10, size=(1, 1), p=[0.1] * 10)[0, 0])
    pi0 = 0.1  # theta = 0: the uniform policy
    step = 0.1 * (pi0 / 0.1) * CHEN2019_REWARDS[a] * 2 * (1 - pi0) * (np.eye(10)[a] - pi0)
    theta = step
    np.testing.assert_allclose(res["probabilities"], np.exp(theta) / np.exp(theta).sum(), rtol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_simulation_reproduces_the_papers_claims(seed: int) -> None:
    res = chen2019(steps=400, lr=0.05, seed=seed, batch=2048)
    json.dumps(res)  # what `streamrec simulate chen2019 --json` prints
    assert res["setting"]["rewards"] == [10.0, 9.0] + [1.0] * 8 and res["setting"]["k"] == 2
    std, top = res["standard"], res["top_k"]
    assert std["argmax_item"] == 1 and std["mass_best"] > 0.95 and std["mass_second"] < 0.05
    assert top["argmax_item"] == 1 and top["mass_second"] > 0.4 and top["mass_rest"] < 0.05
    assert res["claims"] == {"standard_concentrates_on_best": True, "topk_spreads_to_second_best": True,
                             "order_kept": True}


def test_simulate_command_prints_one_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    from stream_app.offline_cli import main

    assert main(["simulate", "chen2019", "--steps", "20", "--batch", "64", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    res = json.loads(out[0])
    assert set(res) >= {"setting", "standard", "top_k", "claims", "seconds"} and res["setting"]["steps"] == 20
    assert main(["simulate", "chen2019", "--steps", "5", "--batch", "8"]) == 0
    assert "standard_concentrates_on_best" in capsys.readouterr().out
    assert main(["simulate", "chen2019", "--steps", "0"]) == 2  # one line on stderr, exit code 2
    assert capsys.readouterr().err.startswith("error: ")
