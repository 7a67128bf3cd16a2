"""Shared fixtures: a small real network and checkpoint (no mocks of the model)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.checkpoint import save_checkpoint
from models.rnn import ModelConfig, build_model

N_ITEMS = 50


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight GRU over items "i0".."i49" with item i0 the most popular."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_items=N_ITEMS, hidden=16), seed=0).eval()
    path = tmp_path_factory.mktemp("ckpt") / "small.pt"
    counts = list(range(N_ITEMS, 0, -1))
    save_checkpoint(path, model, [f"i{j}" for j in range(N_ITEMS)], counts, {"purpose": "tests"})
    return path



def _broker_of(nodeid: str) -> str | None:
    """"embedded" or "kafka" for a test parametrized by broker kind (its id names it), else None."""
    params = nodeid.rpartition("[")[2].rstrip("]").split("-") if nodeid.endswith("]") else []
    return next((p for p in params if p in ("embedded", "kafka")), None)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line per broker: how many tests ran on it, so a run shows that both tiers ran."""
    counts: dict[str, dict[str, int]] = {}
    for outcome in ("passed", "failed", "skipped", "error"):
        for report in terminalreporter.stats.get(outcome, []):
            kind = _broker_of(getattr(report, "nodeid", ""))
            if kind and (report.when == "call" or outcome in ("skipped", "error")):
                counts.setdefault(kind, {}).setdefault(outcome, 0)
                counts[kind][outcome] += 1
    for kind in sorted(counts):
        parts = ", ".join(f"{n} {o}" for o, n in sorted(counts[kind].items()))
        terminalreporter.write_line(f"on the {kind} broker: {parts}")
