"""Off-policy REINFORCE from logged actions, with the top-K correction.

Facts from Minmin Chen, Alex Beutel, Paul Covington, Sagar Jain, Francois
Belletti, Ed H. Chi, "Top-K Off-Policy Correction for a REINFORCE Recommender
System", WSDM 2019 (arXiv:1812.02353):

* §4: from logged pairs (s, a) drawn from a behaviour policy beta, the
  off-policy corrected policy gradient is the sum over the log of
  ``pi(a|s) / beta(a|s) * R * grad log pi(a|s)`` (the first-order
  approximation of the trajectory's importance weight); §4.4 caps the weight,
  ``min(pi / beta, c)``.
* §4.3: a policy that shows K items sampled from pi (duplicates removed) shows
  item a with probability ``alpha = 1 - (1 - pi)^K``; replacing pi by alpha
  multiplies the gradient by ``lambda_K = d alpha / d pi = K (1 - pi)^(K-1)``.
  K = 1 is the standard correction.
* §6.1.2: the simulation with 10 items, rewards r(a_1) = 10, r(a_2) = 9,
  r(a_i) = 1 for i = 3..10, a uniform behaviour policy, K = 2 and a
  state-free softmax pi(a_i) = exp(theta_i) / sum_j exp(theta_j) learned by
  SGD: the standard correction puts almost all its mass on a_1, the top-K
  correction keeps a significant mass on a_2 (Figure 3).

Only torch and numpy here: models/ never imports stream_app.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

# §6.1.2 of the paper: item 1 (index 0 here) is the best, item 2 the second best, the other eight much lower.
CHEN2019_REWARDS: tuple[float, ...] = (10.0, 9.0) + (1.0,) * 8
CHEN2019_K = 2


def topk_weight(pi: Tensor, k: int) -> Tensor:
    """lambda_K = K (1 - pi)^(K-1), elementwise (same shape as ``pi``); K = 1 gives ones."""
    if k < 1:
        raise ValueError(f"top-K correction needs K >= 1, got {k}")
    return k * (1.0 - pi) ** (k - 1)


def reinforce_loss(logits: Tensor, actions: Tensor, rewards: Tensor, behaviour_p: Tensor, k: int = 1,
                   cap: float | None = None) -> Tensor:
    """Surrogate loss of off-policy REINFORCE over a batch of logged actions.

    Shapes:
      logits       (B, N) float: the policy's scores of all N items in each of the B logged states
                   (a state-free policy passes the same row B times, e.g. ``theta.expand(B, N)``)
      actions      (B,)   long:  the logged (served) item of each row, in [0, N)
      rewards      (B,)   float: the reward R observed for it
      behaviour_p  (B,)   float: beta(a | s), the probability with which the behaviour policy served it
    Returns a scalar whose gradient with respect to ``logits`` is

      - mean_b( w_b * lambda_b * R_b * grad log pi(a_b | s_b) )

    with the importance weight w = pi(a)/beta(a) (capped at ``cap`` when given) and lambda = 1 for k = 1
    (standard correction) or K (1 - pi(a))^(K-1) (top-K correction).  w and lambda are computed from the
    current policy but held constant (detached), as in the paper's gradient; descending this loss
    ascends the corrected reward.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be (B, N), got shape {tuple(logits.shape)}")
    B = logits.shape[0]
    if actions.shape != (B,) or rewards.shape != (B,) or behaviour_p.shape != (B,):
        raise ValueError("actions, rewards and behaviour_p must each be (B,) for logits (B, N)")
    if bool((behaviour_p <= 0).any()):
        raise ValueError("behaviour_p must be > 0 for every logged action")
    logp = torch.log_softmax(logits, dim=1)  # (B, N)
    logp_a = logp.gather(1, actions.long().unsqueeze(1)).squeeze(1)  # (B,) log pi(a_b | s_b)
    pi_a = logp_a.detach().exp()  # (B,)
    w = pi_a / behaviour_p.to(pi_a.dtype)  # (B,) importance weight pi/beta
    if cap is not None:
        w = w.clamp(max=cap)
    lam = torch.ones_like(pi_a) if k == 1 else topk_weight(pi_a, k)  # (B,)
    return -(w * lam * rewards.to(pi_a.dtype) * logp_a).mean()


def simulate_chen2019(k: int = CHEN2019_K, steps: int = 1000, lr: float = 0.05, seed: int = 0, batch: int = 2048,
                      cap: float | None = None, rewards: tuple[float, ...] = CHEN2019_REWARDS) -> dict[str, Any]:
    """The top-K simulation of Chen et al. §6.1.2, learned from logged actions.

    Each SGD step draws ``batch`` actions from the uniform behaviour policy beta(a_i) = 1/N, observes their
    known rewards and takes one step of plain SGD (learning rate ``lr``) on ``reinforce_loss`` with the
    standard (k = 1) or top-K correction (k = K; the paper uses K = 2) for a state-free softmax policy
    pi(a_i) = softmax(theta)_i, theta starting at 0 (the uniform policy).  Returns the learned
    probabilities per item (item 1 of the paper at index 0) and the settings.
    """
    if steps < 1 or batch < 1 or lr <= 0:
        raise ValueError("steps and batch must be >= 1 and lr > 0")
    n = len(rewards)
    r = torch.tensor(rewards, dtype=torch.float64)  # (N,)
    beta = torch.full((n,), 1.0 / n, dtype=torch.float64)  # (N,) uniform behaviour policy
    rng = np.random.default_rng(seed)
    logged = torch.from_numpy(rng.choice(n, size=(steps, batch), p=beta.numpy()))  # (steps, batch) served items
    theta = torch.zeros(n, dtype=torch.float64, requires_grad=True)  # (N,)
    for t in range(steps):
        a = logged[t]  # (batch,)
        loss = reinforce_loss(theta.expand(batch, n), a, r[a], beta[a], k=k, cap=cap)
        (grad,) = torch.autograd.grad(loss, theta)  # (N,)
        with torch.no_grad():
            theta -= lr * grad  # plain SGD
    with torch.no_grad():
        pi = torch.softmax(theta, dim=0)
    return {
        "k": k, "correction": "standard" if k == 1 else "top-k", "steps": steps, "lr": lr, "batch": batch,
        "seed": seed, "cap": cap, "rewards": list(rewards), "behaviour": [1.0 / n] * n,
        "probabilities": [float(p) for p in pi],
    }


# What the paper's Figure 3 shows, as checks on the learned probabilities.
CONCENTRATED = 0.9  # standard correction: "almost its entire mass on the top-1 item, pi(a_1) ~ 1.0"
SIGNIFICANT = 0.25  # top-K correction: "a significant mass on the second optimal item"


def _summary(res: dict[str, Any], best: int, second: int) -> dict[str, Any]:
    """Per-policy figures; ``best``/``second`` are 0-based, items are reported 1..N as in the paper."""
    p = res["probabilities"]
    rest = [i for i in range(len(p)) if i not in (best, second)]
    return {
        "k": res["k"], "probabilities": [round(x, 4) for x in p], "argmax_item": int(np.argmax(p)) + 1,
        "mass_best": round(p[best], 4), "mass_second": round(p[second], 4),
        "mass_rest": round(sum(p[i] for i in rest), 4),
        "order_kept": bool(p[best] > p[second] > max(p[i] for i in rest)),
    }


def chen2019(steps: int = 1000, lr: float = 0.05, seed: int = 0, batch: int = 2048, cap: float | None = None,
             k: int = CHEN2019_K) -> dict[str, Any]:
    """Both corrections on the same logged actions (same seed), and the paper's claims checked on them."""
    n = len(CHEN2019_REWARDS)
    best, second = sorted(range(n), key=lambda i: -CHEN2019_REWARDS[i])[:2]
    std = _summary(simulate_chen2019(1, steps, lr, seed, batch=batch, cap=cap), best, second)
    top = _summary(simulate_chen2019(k, steps, lr, seed, batch=batch, cap=cap), best, second)
    return {
        "simulation": "chen2019",
        "paper": "Chen et al., Top-K Off-Policy Correction for a REINFORCE Recommender System, WSDM 2019, "
                 "Section 6.1.2",
        "setting": {
            "items": n, "rewards": list(CHEN2019_REWARDS), "best_item": best + 1, "second_best_item": second + 1,
            "behaviour": "uniform", "behaviour_p": 1.0 / n, "k": k, "policy": "state-free softmax, theta = 0 at start",
            "optimizer": "SGD", "steps": steps, "lr": lr, "batch": batch, "seed": seed, "cap": cap,
        },
        "standard": std,
        "top_k": top,
        "claims": {
            "standard_concentrates_on_best": bool(std["argmax_item"] == best + 1 and std["mass_best"] >= CONCENTRATED),
            "topk_spreads_to_second_best": bool(top["argmax_item"] == best + 1 and top["mass_second"] >= SIGNIFICANT),
            "order_kept": bool(std["order_kept"] and top["order_kept"]),
        },
    }
