"""Session-parallel training with sampled negatives and row-sparse Adagrad.

Why the loop looks the way it does:
* Cost is dominated by the (N, H) item tables.  Each step therefore gathers
  only the rows it uses (inputs, targets, shared negatives) into small leaf
  tensors, back-propagates into those, and applies Adagrad(+momentum) to just
  those rows (``RowAdagrad``), as GRU4Rec does.  Dense Adam over a 43k x 512
  table every step would be several times slower.
* Back-propagation is truncated to one step (the state is detached between
  steps), the GRU4Rec scheme: each step is one click for B sessions.
* Negatives: the other targets of the mini-batch plus M shared items sampled
  by popularity^alpha, drawn in large cached blocks with numpy.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from models.data import Sessions, UserLanes, build_vocab, encode, read_tsv, session_parallel_positions
from models.evaluate import evaluate_scorer
from models.features import ItemAttributes
from models.losses import canonical_loss, get_loss
from models.rnn import ModelConfig, SessionRNN, build_model


@dataclass
class TrainConfig:
    """Model and optimisation hyper-parameters (all overridable from the CLI / presets)."""

    loss: str = "cross-entropy"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.0
    lr_schedule: str = "constant"  # constant | linear (decay to lr_final * lr over the run)
    lr_final: float = 0.1
    negatives: int = 2048
    alpha: float = 0.2
    bpreg: float = 1.0
    logq: float = 0.0
    hidden: int = 100
    layers: int = 1
    cell: str = "gru"
    embedding: int = 0
    constrained: bool = True
    output_bias: bool = True
    dropout_emb: float = 0.0
    dropout_hidden: float = 0.5
    elu: float = 0.0
    seed: int = 42
    shuffle: bool = True
    patience: int = 2
    eps: float = 1e-6
    attributes: bool = True  # use item attributes when the data has them (models/features.py)
    attr_lr: float = 1.0  # learning rate of the attribute tables relative to lr (lower it if training diverges)
    attr_pooling: str = "idf"  # idf | mean: how an item's attributes are weighed in its vector
    user_hidden: int = 100  # width of the user-level GRU when training on whole users (models/users.py)

    def model_config(self, n_items: int, attributes: ItemAttributes | None = None,
                     users: UserLanes | None = None) -> ModelConfig:
        """The architecture part of this configuration (attribute sizes from the coded attributes, if any;
        the user-level GRU and profile sizes when training on whole users)."""
        use = attributes is not None and self.attributes and len(attributes.flat) > 0
        return ModelConfig(
            n_items=n_items, hidden=self.hidden, layers=self.layers, cell=self.cell, embedding=self.embedding,
            constrained=self.constrained, output_bias=self.output_bias, dropout_emb=self.dropout_emb,
            dropout_hidden=self.dropout_hidden, elu=self.elu,
            attributes=attributes.n_attributes if use else 0,  # type: ignore[union-attr]
            attribute_links=len(attributes.flat) if use else 0,  # type: ignore[union-attr]
            attribute_pooling=self.attr_pooling if use else "mean",
            user_hidden=self.user_hidden if users is not None else 0,
            profile_attributes=users.profile_attributes if users is not None else 0,
        )

    def updated(self, overrides: dict[str, Any]) -> "TrainConfig":
        """Copy with some fields replaced; unknown keys are an error (typos in presets fail loudly)."""
        names = {f.name for f in fields(self)}
        bad = set(overrides) - names
        if bad:
            raise ValueError(f"unknown training option(s) {sorted(bad)}")
        return TrainConfig(**{**asdict(self), **overrides})


# Built-in presets, chosen on validation splits only (rsc15-100k train_tr/train_valid and a time
# split of diginetica train_full; never test.tsv).  "small" = the TrainConfig defaults: cross-entropy,
# 100 units, shared (constrained) item embeddings, hidden dropout 0.5, negatives ~ pop^0.2 - for
# catalogues of a few thousand items.  "large" = BPR-max with 384 units for tens of thousands of
# items (512 gained only +0.004 Recall@20 for 30 % more time), sessions in time order, 4 epochs
# (diginetica validation 0.5244 -> 0.5315 Recall@20 from epoch 3 to 4; a linear lr decay was worse).
# "auto" picks by size.
PRESETS: dict[str, dict[str, Any]] = {
    "small": {},
    "large": {"loss": "bpr-max", "hidden": 384, "batch_size": 128, "epochs": 4, "lr": 0.1, "momentum": 0.1,
              "alpha": 0.3, "bpreg": 1.0, "dropout_emb": 0.3, "dropout_hidden": 0.3, "elu": 0.5,
              "shuffle": False},  # time order: the last updates see the most recent sessions
}
LARGE_ITEMS = 10_000


def auto_preset(n_items: int) -> str:
    """Preset name chosen from the catalogue size (the cost and the best loss both depend on it)."""
    return "large" if n_items >= LARGE_ITEMS else "small"


def load_preset(name_or_path: str, presets_dir: str | Path = "presets") -> dict[str, Any]:
    """Built-in preset name, a name in ``presets_dir`` (NAME.json) or a JSON file path -> overrides."""
    if name_or_path in PRESETS:
        return dict(PRESETS[name_or_path])
    for cand in (Path(presets_dir) / f"{name_or_path}.json", Path(name_or_path)):
        if cand.is_file():
            data = json.loads(cand.read_text())
            return dict(data.get("config", data))
    raise ValueError(f"preset {name_or_path!r} not found (built-in: {sorted(PRESETS)}; dir: {presets_dir})")


class RowAdagrad:
    """Adagrad with optional momentum; dense for small tensors, row-sparse for item tables."""

    def __init__(self, dense: list[Tensor], sparse: list[Tensor], momentum: float, eps: float) -> None:
        self.momentum = momentum
        self.eps = eps
        self.acc = {id(p): torch.zeros_like(p) for p in dense + sparse}
        self.vel = {id(p): torch.zeros_like(p) for p in dense + sparse} if momentum > 0 else {}
        self.dense = dense

    def step_dense(self, lr: float, params: list[Tensor] | None = None) -> None:
        """Update dense parameters (default: all) from their .grad (multi-tensor ops: one dispatch per op), then clear the grads."""
        with torch.no_grad():
            ps = [p for p in (self.dense if params is None else params) if p.grad is not None]
            if not ps:
                return
            gs = [p.grad for p in ps]
            accs = [self.acc[id(p)] for p in ps]
            torch._foreach_addcmul_(accs, gs, gs)
            denom = torch._foreach_add(accs, self.eps)
            torch._foreach_sqrt_(denom)
            upd = torch._foreach_div(gs, denom)
            if self.momentum > 0:
                vs = [self.vel[id(p)] for p in ps]
                torch._foreach_mul_(vs, self.momentum)
                torch._foreach_add_(vs, upd, alpha=lr)
                torch._foreach_sub_(ps, vs)
            else:
                torch._foreach_add_(ps, upd, alpha=-lr)
            for p in ps:
                p.grad = None

    def step_rows(self, p: Tensor, rows: Tensor, g: Tensor, lr: float) -> None:
        """Update rows ``rows`` (U,) of table p with their summed gradients g (U, ...) (rows unique)."""
        with torch.no_grad():
            acc = self.acc[id(p)]
            a = acc.index_select(0, rows).addcmul_(g, g)  # (U, ...)
            acc.index_copy_(0, rows, a)
            upd = g / (a + self.eps).sqrt_()  # (U, ...)
            if self.momentum > 0:
                vel = self.vel[id(p)]
                v = vel.index_select(0, rows).mul_(self.momentum).add_(upd, alpha=lr)  # (U, ...)
                vel.index_copy_(0, rows, v)
                p.index_add_(0, rows, v, alpha=-1.0)
            else:
                p.index_add_(0, rows, upd, alpha=-lr)


class NegativeSampler:
    """Draws shared negatives ~ count^alpha in cached blocks (one numpy call per many steps)."""

    def __init__(self, counts: np.ndarray, alpha: float, n: int, rng: np.random.Generator, block: int = 256) -> None:
        p = np.asarray(counts, dtype=np.float64) ** alpha
        self.prob = p / p.sum()  # (N,)
        self.cdf = np.cumsum(self.prob)
        self.cdf[-1] = 1.0
        self.n, self.rng, self.block = n, rng, block
        self._cache = torch.empty(0, n, dtype=torch.int64)
        self._pos = 0

    def next(self) -> Tensor:
        """The next (M,) negative item indices."""
        if self._pos >= len(self._cache):
            draws = np.searchsorted(self.cdf, self.rng.random(self.block * self.n), side="right")
            self._cache = torch.from_numpy(np.minimum(draws, len(self.cdf) - 1).reshape(self.block, self.n))
            self._pos = 0
        out = self._cache[self._pos]  # (M,)
        self._pos += 1
        return out


def _gather(table: Tensor, idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Unique rows of idx as a fresh leaf: (rows (U,), leaf (U, ...), rows of idx in the leaf (len(idx),))."""
    rows, inv = torch.unique(idx, return_inverse=True)
    leaf = table.detach().index_select(0, rows).requires_grad_(True)  # (U, ...)
    return rows, leaf, inv


def fit(
    sessions: Sessions,
    counts: np.ndarray,
    cfg: TrainConfig,
    valid: Sessions | None = None,
    progress: bool = True,
    log: Any = print,
    attributes: ItemAttributes | None = None,
    validator: Callable[[SessionRNN], dict[str, float]] | None = None,
    users: UserLanes | None = None,
) -> tuple[SessionRNN, dict[str, Any]]:
    """Train a fresh model on coded sessions; returns the model (eval mode) and a meta dict.

    With ``valid`` the conservative Recall@20 is measured after each epoch
    (``validator`` instead: any function of the eval-mode, folded network that
    returns metrics, the first one being the score); the best epoch's weights
    are kept and training stops after ``patience`` epochs without improvement.
    ``attributes`` (coded for the same items) adds pooled attribute vectors to
    the item tables unless ``cfg.attributes`` is off.  With ``users`` each run of ``sessions`` is one
    user's clicks: a lane walks a whole user, the user-level GRU folds each finished session's final
    state (after its last click, as the worker has it) into the user state, which starts the next
    session, and the user's pooled profile is added to every query (models/users.py).
    """
    from models.progress import progress as progress_bar

    n_items = len(counts)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = build_model(cfg.model_config(n_items, attributes, users), seed=cfg.seed)
    unseen = torch.from_numpy(np.flatnonzero(np.asarray(counts) == 0))  # items without training clicks
    with torch.no_grad():  # ... get no gradient, so no random id vector either: only their attributes speak
        for table in (model.out_emb, model.in_emb):
            if table is not None and len(unseen):
                table[unseen] = 0.0
    if model.attr_out is not None:
        model.load_attributes(attributes)  # type: ignore[arg-type]
    model.train()
    loss_fn = get_loss(cfg.loss, cfg.bpreg)
    use_logq = cfg.logq > 0 and canonical_loss(cfg.loss) == "cross-entropy"
    sampler = NegativeSampler(counts, cfg.alpha, cfg.negatives, rng) if cfg.negatives > 0 else None
    logq_table = torch.as_tensor(np.log(np.maximum(sampler.prob if sampler else counts / counts.sum(), 1e-12)), dtype=torch.float32)  # (N,)
    attr_params = [pool.weight for pool in (model.attr_out, model.attr_in) if pool is not None]
    dense = [p for p in model.dense_parameters() if all(p is not a for a in attr_params)]
    opt = RowAdagrad(dense + attr_params, model.sparse_parameters(), cfg.momentum, cfg.eps)
    n_usable = int((sessions.lengths >= 2).sum())
    if n_usable == 0:
        raise ValueError("no session with >= 2 clicks to train on")
    B = min(cfg.batch_size, n_usable)  # tiny logs: fewer parallel slots rather than failing
    constrained = model.in_emb is None
    epochs_meta: list[dict[str, Any]] = []
    best: tuple[float, dict[str, Tensor], int] | None = None
    t_start = time.perf_counter()
    total_events = 0
    est_steps = max(1, int((sessions.lengths[sessions.lengths >= 2] - 1).sum()) // B) * cfg.epochs
    global_step = 0
    bad_epochs = 0
    for epoch in range(cfg.epochs):
        t_ep = time.perf_counter()
        pos, keep = session_parallel_positions(sessions, B, rng if cfg.shuffle else None)
        ins_t, outs_t = torch.from_numpy(sessions.items[pos]), torch.from_numpy(sessions.items[pos + 1])  # (S, B)
        keep_t = torch.from_numpy(keep).unsqueeze(2)  # (S, B, 1)
        if users is not None:
            starts_t = torch.from_numpy(users.starts[pos]).unsqueeze(2)  # (S, B, 1) the input starts a session
            lane_user = torch.from_numpy(np.searchsorted(sessions.offsets, pos, side="right") - 1)  # (S, B)
            profiles_t = torch.from_numpy(users.profiles)  # (n_users, L)
        state, user_prev, ended = model.zero_state(B), model.zero_user(B), model.zero_state(B)  # (B, S), (B, U), (B, S)
        has_user = torch.zeros(B, 1, dtype=torch.bool)  # (B, 1) the lane's user finished a session already
        user_now = model.zero_user(B)  # (B, U)
        extra = None
        loss_sum = torch.zeros(())
        n_steps = len(pos)
        bar = progress_bar(range(n_steps), desc=f"epoch {epoch + 1}/{cfg.epochs}", enabled=progress)
        for s in bar:
            lr = cfg.lr
            if cfg.lr_schedule == "linear":
                lr = cfg.lr * (1.0 - (1.0 - cfg.lr_final) * min(1.0, global_step / est_steps))
            inp, tgt = ins_t[s], outs_t[s]  # (B,), (B,)
            state = state * keep_t[s]  # (B, S) zero where a new session starts
            if users is not None:
                # The user state of the running session is user_step(user before it, the previous session's
                # final state, both kept detached); it trains through the session's first step, which starts
                # from session_start of it. The worker computes it once, at the gap.
                fresh, start = keep_t[s] == 0, starts_t[s]  # (B, 1) a new user, (B, 1) a new session
                has_user = has_user & ~fresh
                if bool(start.any()):
                    later = start & ~fresh  # (B, 1) a later session of the same user: fold the finished one in
                    user_prev = torch.where(later, user_now.detach(), user_prev * ~fresh)  # (B, U)
                    ended = torch.where(later, state, ended)  # (B, S)
                    has_user = has_user | later
                    user_now = torch.where(has_user, model.user_step(user_prev, ended), model.zero_user(B))  # (B, U)
                    state = torch.where(start, model.session_start(user_now), state)  # (B, S)
                extra = model.user_vector(user_now, profiles_t[lane_user[s]])  # (B, H) or None
            neg = sampler.next() if sampler is not None else tgt[:0]  # (M,)
            out_idx = torch.cat([tgt, neg])  # (B+M,)
            # index_select (not fancy indexing): its backward is a cheap index_add
            if constrained:
                rows, leaf, inv = _gather(model.out_emb, torch.cat([inp, out_idx]))
                table = leaf if model.attr_out is None else leaf + model.attr_out(rows)  # (U, H)
                x, w = table.index_select(0, inv[:B]), table.index_select(0, inv[B:])  # (B, H), (B+M, H)
                out_inv = inv[B:]
                in_rows = None
            else:
                in_rows, in_leaf, in_inv = _gather(model.in_emb, inp)  # type: ignore[arg-type]
                in_table = in_leaf if model.attr_in is None else in_leaf + model.attr_in(in_rows)  # (U_in, E)
                x = in_table.index_select(0, in_inv)  # (B, E)
                rows, leaf, out_inv = _gather(model.out_emb, out_idx)
                table = leaf if model.attr_out is None else leaf + model.attr_out(rows)  # (U, H)
                w = table.index_select(0, out_inv)  # (B+M, H)
            if model.out_bias is not None:  # same row set as the output table: no second unique()
                b_rows, b_inv = rows, out_inv
                b_leaf = model.out_bias.detach().index_select(0, rows).requires_grad_(True)  # (U,)
            new_state, h = model.advance(state, model.drop_emb(x))  # (B, S), (B, H)
            h = model.final(model.drop_hidden(h))  # (B, H)
            if extra is not None:
                h = h + extra  # (B, H)
            logits = h @ w.t()  # (B, B+M)
            if model.out_bias is not None:
                logits = logits + b_leaf.index_select(0, b_inv)  # (B, B+M)
            if use_logq:
                logits = logits - cfg.logq * logq_table[out_idx]  # (B, B+M)
            loss = loss_fn(logits)
            loss.backward()
            opt.step_dense(lr, dense)
            if attr_params:  # every step moves the shared attribute rows: attr_lr can slow them apart from the rest
                opt.step_dense(lr * cfg.attr_lr, attr_params)
            opt.step_rows(model.out_emb, rows, leaf.grad, lr)  # type: ignore[arg-type]
            if in_rows is not None:
                opt.step_rows(model.in_emb, in_rows, in_leaf.grad, lr)  # type: ignore[arg-type]
            if model.out_bias is not None:
                opt.step_rows(model.out_bias, b_rows, b_leaf.grad, lr)  # type: ignore[arg-type]
            state = new_state.detach()
            loss_sum += loss.detach()
            global_step += 1
            if progress and s % 100 == 99:
                el = time.perf_counter() - t_ep
                bar.set_postfix(loss=f"{float(loss_sum) / (s + 1):.4f}", ev_s=f"{(s + 1) * B / el:,.0f}")
        bar.close()
        ep_loss = float(loss_sum) / max(n_steps, 1)
        if not math.isfinite(ep_loss):
            raise FloatingPointError(f"training diverged in epoch {epoch + 1} (loss {ep_loss}); lower --lr")
        ep_secs = time.perf_counter() - t_ep
        total_events += n_steps * B
        rec: dict[str, Any] = {"epoch": epoch + 1, "loss": ep_loss, "seconds": round(ep_secs, 3), "events": n_steps * B}
        if valid is not None or validator is not None:
            model.eval()
            if validator is not None:
                vm = validator(model.folded())
            else:
                full = evaluate_scorer(model.folded(), valid, n_items, ks=(20,), batch_size=512)  # type: ignore[arg-type]
                vm = {"recall@20": full["recall@20"], "mrr@20": full["mrr@20"]}
            model.train()
            rec.update({f"valid_{k}": v for k, v in vm.items()})
            score = next(iter(vm.values()))
            if best is None or score > best[0]:
                best = (score, copy.deepcopy(model.state_dict()), epoch + 1)
                bad_epochs = 0
            else:
                bad_epochs += 1
        epochs_meta.append(rec)
        if log is not None:
            msg = f"epoch {epoch + 1}: loss {ep_loss:.4f}  {n_steps * B / ep_secs:,.0f} events/s  {ep_secs:.1f}s"
            msg += "".join(f"  {k.replace('_', ' ')} {v:.4f}" for k, v in rec.items() if k.startswith("valid_"))
            log(msg)
        if (valid is not None or validator is not None) and bad_epochs >= cfg.patience:
            break
    if best is not None:
        model.load_state_dict(best[1])
    model.eval()
    train_secs = time.perf_counter() - t_start
    meta = {
        "train_config": asdict(cfg),
        "epochs": epochs_meta,
        "loss_per_epoch": [e["loss"] for e in epochs_meta],
        "train_seconds": round(train_secs, 3),
        "events_per_second": round(total_events / max(train_secs, 1e-9), 1),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "best_epoch": best[2] if best is not None else len(epochs_meta),
    }
    return model, meta


def resolve_config(n_items: int, preset: str | None = None, overrides: dict[str, Any] | None = None,
                   presets_dir: str | Path = "presets") -> tuple[TrainConfig, str]:
    """Defaults <- preset (``auto``/None: by catalogue size) <- explicit overrides. Returns (config, preset name)."""
    name = auto_preset(n_items) if preset in (None, "auto") else str(preset)
    cfg = TrainConfig().updated(load_preset(name, presets_dir)).updated(overrides or {})
    return cfg, name


def train_file(
    train_path: str,
    out_path: str,
    cfg: TrainConfig | None = None,
    valid_path: str | None = None,
    progress: bool = True,
    log: Any = print,
    extra_meta: dict[str, Any] | None = None,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
    presets_dir: str | Path = "presets",
    attributes_path: str | None = None,
) -> tuple[SessionRNN, dict[str, Any]]:
    """Read a GRU4Rec TSV, train, and write a checkpoint. Returns (model, meta).

    Without ``cfg`` the configuration is resolved from ``preset`` (default:
    chosen by the number of items) and ``overrides``. ``attributes_path``, an
    S3-Rec style ``item2attributes.json``, adds pooled attribute vectors to the
    items (models/features.py), as for user sequences.
    """
    from models.checkpoint import save_checkpoint
    from models.features import ItemAttributes, read_attributes

    t0 = time.perf_counter()
    log_train = read_tsv(train_path)
    item_ids, counts = build_vocab(log_train)
    index = {s: i for i, s in enumerate(item_ids)}
    sessions, _ = encode(log_train, index)
    preset_name = "explicit"
    if cfg is None:
        cfg, preset_name = resolve_config(len(item_ids), preset, overrides, presets_dir)
    if log is not None:
        log(f"{train_path}: {len(log_train)} clicks, {sessions.n_sessions} sessions, {len(item_ids)} items; "
            f"preset {preset_name}: {asdict(cfg)}")
    valid = None
    if valid_path:
        valid, _ = encode(read_tsv(valid_path), index)
    attrs = ItemAttributes.build(item_ids, read_attributes(attributes_path)) if attributes_path else None
    load_secs = time.perf_counter() - t0
    model, meta = fit(sessions, counts, cfg, valid, progress=progress, log=log, attributes=attrs)
    meta.update(
        attributes_path=str(Path(attributes_path).resolve()) if attributes_path else None,
        attributes=attrs.to_meta() if attrs is not None and model.attr_out is not None else None,
        train_path=str(Path(train_path).resolve()),
        valid_path=str(Path(valid_path).resolve()) if valid_path else None,
        n_items=len(item_ids),
        n_clicks=len(log_train),
        n_sessions=sessions.n_sessions,
        load_seconds=round(load_secs, 3),
        preset=preset_name,
        **(extra_meta or {}),
    )
    version = save_checkpoint(out_path, model, item_ids, counts, meta)
    meta["version"] = version
    return model, meta


__all__ = ["LARGE_ITEMS", "PRESETS", "NegativeSampler", "RowAdagrad", "TrainConfig", "auto_preset", "fit", "load_preset", "resolve_config", "train_file"]
