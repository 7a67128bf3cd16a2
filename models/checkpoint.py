"""Checkpoint files: plain data only, so loading never executes code.

A checkpoint is a dict ``{format_version, config, state_dict, item_ids,
item_counts, meta}`` written with ``torch.save`` and read back with
``torch.load(weights_only=True)``; the module is rebuilt from ``config``.
Any problem on load is reported as one ``CheckpointError`` with a one-line
message, because the stream worker must tell "bad file" from a bug.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from models.rnn import ModelConfig, SessionRNN

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt or incompatible with this code."""


@dataclass
class Checkpoint:
    """A loaded model plus what the stream worker needs to map ids and fall back to popularity.

    ``model`` is what serves: with item attributes, their pooled vectors are
    already added into its tables (``SessionRNN.folded``); ``network`` is the
    network as trained (the same object when it has no attributes).
    """

    model: SessionRNN
    item_ids: list[str]
    item_index: dict[str, int]
    version: str
    network: SessionRNN | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    item_counts: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    _popular_order: Tensor | None = field(default=None, repr=False)

    def attribute_lists(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The trained items' attribute ids as (flat, offsets) arrays, None for a network without attributes."""
        pool = self.network.attr_out if self.network is not None else None
        return (pool.flat.numpy(), pool.offsets.numpy()) if pool is not None else None

    def popular(self, k: int) -> list[int]:
        """Top-k item indices by training click count (ties: lower index first)."""
        if self._popular_order is None:
            # stable sort on -count gives a deterministic order for ties
            self._popular_order = torch.sort(-self.item_counts, stable=True).indices  # (N,)
        return self._popular_order[: max(0, k)].tolist()


def weights_version(state_dict: dict[str, Tensor], item_ids: list[str]) -> str:
    """Short stable id: first 12 hex of sha256 over tensor names, shapes, bytes and the id list."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    h.update("\n".join(item_ids).encode())
    return h.hexdigest()[:12]


def save_checkpoint(
    path: str | os.PathLike[str],
    model: SessionRNN,
    item_ids: list[str],
    item_counts: list[int] | Tensor,
    meta: dict[str, Any],
) -> str:
    """Write a data-only checkpoint atomically (temp file + rename); returns its version."""
    ids = [str(i) for i in item_ids]
    if len(ids) != model.config.n_items:
        raise ValueError(f"{len(ids)} item ids for a model with {model.config.n_items} items")
    counts = torch.as_tensor(item_counts, dtype=torch.int64).reshape(-1)  # (N,)
    if counts.numel() != len(ids):
        raise ValueError(f"{counts.numel()} item counts for {len(ids)} items")
    state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    version = weights_version(state, ids)
    payload = {
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "state_dict": state,
        "item_ids": ids,
        "item_counts": counts,
        # JSON round trip: meta must be plain data (str subclasses such as TorchVersion would
        # otherwise be pickled as classes that weights_only loading rejects)
        "meta": json.loads(json.dumps(dict(meta, version=version), default=str)),
    }
    write_data(path, payload)
    return version


def write_data(path: str | os.PathLike[str], payload: dict[str, Any]) -> None:
    """A data-only file (tensors, strings, numbers, lists, dicts) written atomically: a temporary file, a rename."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, p)


def read_data(path: str | os.PathLike[str], error: type[ValueError], what: str) -> Any:
    """A data-only file read back without running code (``weights_only``); a missing or unreadable file is one
    ``error`` line naming ``what`` it should have been."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{what} not found: {p}")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling problem means a bad file
        raise error(f"cannot read {what} {p}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Load a checkpoint into an eval-mode CPU model; every failure is a one-line CheckpointError."""
    p = Path(path)
    data = read_data(p, CheckpointError, "checkpoint")
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint {p} is not a streamrec checkpoint (top level is {type(data).__name__})")
    missing = {"format_version", "config", "state_dict", "item_ids", "item_counts", "meta"} - set(data)
    if missing:
        raise CheckpointError(f"checkpoint {p} lacks fields {sorted(missing)}")
    if data["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {p} has format_version {data['format_version']!r}; this code reads {FORMAT_VERSION}")
    try:
        config = ModelConfig.from_dict(dict(data["config"]))
        model = SessionRNN(config)
        model.load_state_dict(data["state_dict"], strict=True)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {p} is incompatible with this model code: {str(e).splitlines()[0]}") from e
    ids = [str(i) for i in data["item_ids"]]
    counts = torch.as_tensor(data["item_counts"], dtype=torch.int64).reshape(-1)  # (N,)
    if len(ids) != config.n_items or counts.numel() != config.n_items:
        raise CheckpointError(
            f"checkpoint {p} is inconsistent: {len(ids)} ids, {counts.numel()} counts, {config.n_items} items in config"
        )
    if len(set(ids)) != len(ids):
        raise CheckpointError(f"checkpoint {p} has duplicate item ids")
    model.eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    state = {k: v for k, v in model.state_dict().items()}
    version = weights_version(state, ids)
    network = model
    model = model.folded()  # attribute parts added into the id tables: the same outputs, plain serving
    for prm in model.parameters():
        prm.requires_grad_(False)
    return Checkpoint(
        model=model,
        network=network,
        item_ids=ids,
        item_index={s: i for i, s in enumerate(ids)},
        version=version,
        meta=dict(data["meta"]),
        item_counts=counts,
    )


__all__ = ["Checkpoint", "CheckpointError", "FORMAT_VERSION", "load_checkpoint", "save_checkpoint", "weights_version"]
