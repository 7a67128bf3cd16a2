"""Shared tiny synthetic data for the models tests (no big logs: every test stays fast)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def write_tsv(path: Path, rows: list[tuple[object, object, float]]) -> Path:
    """Write (session, item, time) rows as a GRU4Rec TSV."""
    path.write_text("SessionId\tItemId\tTime\n" + "".join(f"{s}\t{i}\t{t}\n" for s, i, t in rows))
    return path


def cyclic_rows(n_sessions: int, n_items: int = 12, length: int = 6, offset: int = 0) -> list[tuple[object, object, float]]:
    """Deterministic sessions: item k is always followed by item k+1 (mod n_items)."""
    rows: list[tuple[object, object, float]] = []
    t = 0.0
    for s in range(n_sessions):
        start = (s * 5) % n_items
        for j in range(length):
            rows.append((s + offset, 1000 + (start + j) % n_items, t))
            t += 1.0
    return rows


@pytest.fixture
def cyclic_tsv(tmp_path: Path) -> Path:
    """A training log of a deterministic successor sequence."""
    return write_tsv(tmp_path / "train.tsv", cyclic_rows(120))


@pytest.fixture
def cyclic_test_tsv(tmp_path: Path) -> Path:
    """A test log following the same successor rule."""
    return write_tsv(tmp_path / "test.tsv", cyclic_rows(20, offset=10_000))


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    """Tiny tensors: one thread avoids OpenMP spin/wake overhead, dominant at these sizes."""
    torch.set_num_threads(1)
