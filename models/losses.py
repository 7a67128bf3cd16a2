"""Losses over sampled scores.

Every loss takes ``logits`` of shape (B, B + M): row i scores the B targets of
the mini-batch (column i is row i's own target, the other targets act as
negatives) followed by M shared negatives sampled by popularity^alpha.  This is
the GRU4Rec formulation (facts from Hidasi & Karatzoglou, "Recurrent Neural
Networks with Top-k Gains for Session-based Recommendations", 2018).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

LossFn = Callable[[Tensor], Tensor]


def _target_scores(logits: Tensor) -> Tensor:
    """Diagonal of the first B columns: each row's score of its own target, (B, 1)."""
    return torch.diagonal(logits).unsqueeze(1)  # (B, 1)


def _negative_softmax(logits: Tensor) -> Tensor:
    """Softmax over the negatives only (the target column of each row gets weight 0), (B, B+M)."""
    B = logits.shape[0]
    masked = logits.clone()  # (B, B+M)
    idx = torch.arange(B, device=logits.device)
    masked[idx, idx] = float("-inf")
    return torch.softmax(masked, dim=1)  # (B, B+M)


def cross_entropy(logits: Tensor) -> Tensor:
    """Mean -log softmax(target) over all sampled columns (no logQ correction here)."""
    B = logits.shape[0]
    logp = torch.log_softmax(logits, dim=1)  # (B, B+M)
    return -logp[torch.arange(B, device=logits.device), torch.arange(B, device=logits.device)].mean()


def bpr_max(logits: Tensor, reg: float = 1.0) -> Tensor:
    """BPR-max: -log sum_j s_j sigmoid(r_i - r_j) + reg * sum_j s_j r_j^2, s = softmax over negatives.

    The score regularisation keeps negative scores from drifting up, which is
    what makes BPR-max stable with thousands of negatives.
    """
    s = _negative_softmax(logits)  # (B, B+M)
    diff = torch.sigmoid(_target_scores(logits) - logits)  # (B, B+M)
    loss = -torch.log((s * diff).sum(dim=1) + 1e-24)  # (B,)
    loss = loss + reg * (s * logits * logits).sum(dim=1)  # (B,)
    return loss.mean()


def top1_max(logits: Tensor) -> Tensor:
    """TOP1-max: sum_j s_j (sigmoid(r_j - r_i) + sigmoid(r_j^2)), s = softmax over negatives."""
    s = _negative_softmax(logits)  # (B, B+M)
    term = torch.sigmoid(logits - _target_scores(logits)) + torch.sigmoid(logits * logits)  # (B, B+M)
    return (s * term).sum(dim=1).mean()


LOSSES = ("cross-entropy", "bpr-max", "top1-max")


def get_loss(name: str, bpreg: float = 1.0) -> LossFn:
    """Loss function by CLI name (aliases: ce, xe, bpr, top1)."""
    key = {"ce": "cross-entropy", "xe": "cross-entropy", "bpr": "bpr-max", "top1": "top1-max"}.get(name, name)
    if key == "cross-entropy":
        return cross_entropy
    if key == "bpr-max":
        return lambda logits: bpr_max(logits, bpreg)
    if key == "top1-max":
        return top1_max
    raise ValueError(f"unknown loss {name!r}; expected one of {LOSSES}")


def canonical_loss(name: str) -> str:
    """Canonical name of a loss alias (raises ValueError for unknown names)."""
    get_loss(name)
    return {"ce": "cross-entropy", "xe": "cross-entropy", "bpr": "bpr-max", "top1": "top1-max"}.get(name, name)


__all__ = ["LOSSES", "LossFn", "bpr_max", "canonical_loss", "cross_entropy", "get_loss", "top1_max"]
