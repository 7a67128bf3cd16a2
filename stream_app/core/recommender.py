"""The functional core: every per-click decision, batched model calls, no Faust and no I/O.

The shell hands in a micro-batch of (click, source, stored state bytes) and gets
back, per click, the bytes to store, the list to publish and what happened
(reset, unknown item, replay, online hit) for the metrics. Clicks of the same
user inside one batch are applied in order: the batch is cut into waves, the
n-th click of each user going to wave n, and each wave is one batched step.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
import torch

from stream_app.core.ranking import ExactRanker, Ranker, TopK
from stream_app.core.records import Click, Recommendation, Source
from stream_app.core.state import StateDecodeError, UserState, decode, encode

ONLINE_K = 20  # online quality is Recall@20 / MRR@20 of the served lists


class StepModel(Protocol):
    """What the core needs of a network (models.rnn.SessionRNN satisfies it)."""

    state_size: int
    out_emb: torch.Tensor  # (N, H) output item embeddings
    out_bias: torch.Tensor | None  # (N,)

    def input_table(self) -> torch.Tensor: ...

    def advance(self, state: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def output_vector(self, state: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class Policy:
    """The per-click rules, taken from Settings by the shell."""

    k: int = 20
    exclude_clicked: bool = True
    recent_items: int = 5
    gap_s: float = 1800.0
    keep_across_sessions: bool = False


class Action(enum.Enum):
    STEP = "step"  # advance the hidden state with a known item
    SCORE = "score"  # keep the state, rank from it (unknown item, replayed click)
    POPULAR = "popular"  # no hidden state in this session: popularity list


@dataclass(frozen=True, slots=True)
class Incoming:
    click: Click
    source: Source
    state_blob: bytes | None


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do with one click, decided from the prior state alone."""

    action: Action
    start: UserState | None  # state the click applies to (after any reset)
    item: int | None  # model index of the clicked item, None if unknown
    reset_reason: str | None
    replayed: bool
    online_rank: int | None  # 1-based rank of this click in the last served list, 0 = miss, None = not scored


@dataclass(frozen=True, slots=True)
class Outcome:
    """Everything the shell needs to write, send and count for one click."""

    state_blob: bytes | None  # None: leave the stored state alone
    recommendation: Recommendation
    reset_reason: str | None
    unknown_item: bool
    replayed: bool
    online_rank: int | None


def load_prior(blob: bytes | None, model_version: str) -> tuple[UserState | None, str | None]:
    """Decode a stored blob; undecodable or other-model states are dropped with a reason."""
    if blob is None:
        return None, None
    try:
        state = decode(blob)
    except StateDecodeError:
        return None, "undecodable"
    if state.model_version != model_version:
        return None, "model_version"
    return state, None


def plan_click(
    prior: UserState | None, click: Click, source: Source, item: int | None, policy: Policy
) -> Plan:
    """Decide reset, replay and the action for one click (pure)."""
    if prior is not None and prior.last_partition == source.partition and source.offset <= prior.last_offset:
        action = Action.SCORE if prior.hidden is not None else Action.POPULAR
        return Plan(action, prior, item, None, True, None)
    online_rank: int | None = None
    if prior is not None and prior.served and item is not None:
        online_rank = prior.served.index(item) + 1 if item in prior.served else 0
    start, reset = prior, None
    gap = click.ts - prior.last_ts if prior is not None else 0.0
    if prior is not None and gap > policy.gap_s and not policy.keep_across_sessions:
        start = UserState(prior.model_version, None, prior.last_ts, prior.last_partition, prior.last_offset,
                          prior.last_seen, (), prior.served)
        reset = "session_gap"
    if item is not None:
        action = Action.STEP
    elif start is not None and start.hidden is not None:
        action = Action.SCORE
    else:
        action = Action.POPULAR
    return Plan(action, start, item, reset, False, online_rank)


def next_state(
    plan: Plan, click: Click, source: Source, hidden: np.ndarray | None, served: Sequence[int],
    model_version: str, policy: Policy, now: float,
) -> UserState:
    """The state after a (non-replayed) click: new hidden, bookkeeping, the list just served."""
    start = plan.start
    recent = start.recent if start is not None else ()
    if plan.item is not None and policy.recent_items > 0:
        recent = (recent + (plan.item,))[-policy.recent_items :]
    elif policy.recent_items == 0:
        recent = ()
    last_ts = max(click.ts, start.last_ts) if start is not None else click.ts
    return UserState(
        model_version=model_version,
        hidden=hidden,
        last_ts=last_ts,
        last_partition=source.partition,
        last_offset=source.offset,
        last_seen=now,
        recent=recent,
        served=tuple(served[:ONLINE_K]),
    )


class Recommender:
    """Binds a loaded network, its item map and the policy; ``process`` is the per-batch core."""

    def __init__(
        self,
        model: StepModel,
        item_ids: Sequence[str],
        item_counts: Sequence[float] | np.ndarray,
        model_version: str,
        policy: Policy,
        ranker: Ranker | None = None,
    ) -> None:
        self.model = model
        # exact top-k by batched products unless an ANN index is handed in (stream_app/core/ranking.py)
        self.ranker: Ranker = ranker if ranker is not None else ExactRanker(model.out_emb, model.out_bias)
        self.item_ids = list(item_ids)
        self.item_index = {item: i for i, item in enumerate(self.item_ids)}
        self.model_version = model_version
        self.policy = policy
        counts = torch.as_tensor(np.asarray(item_counts, dtype=np.float32))  # (N,)
        self.popularity = counts / counts.sum().clamp(min=1.0)  # (N,)
        self.k = min(policy.k, len(self.item_ids))
        # the popularity list is the same for everyone: rank it once, filter per row
        pop = torch.topk(self.popularity, min(len(self.item_ids), self.k + 33))
        self._popular = (pop.values.tolist(), pop.indices.tolist())

    def process(self, batch: Sequence[Incoming], now: float) -> list[Outcome]:
        """Apply a micro-batch in order; one batched model call per wave and action."""
        waves: list[list[int]] = []
        seen: dict[str, int] = {}
        for i, inc in enumerate(batch):
            n = seen.get(inc.click.user_id, 0)
            seen[inc.click.user_id] = n + 1
            if n == len(waves):
                waves.append([])
            waves[n].append(i)

        current: dict[str, tuple[UserState | None, str | None]] = {}
        for inc in batch:
            if inc.click.user_id not in current:
                prior, reason = load_prior(inc.state_blob, self.model_version)
                current[inc.click.user_id] = (prior, reason)

        outcomes: list[Outcome | None] = [None] * len(batch)
        for wave in waves:
            plans = []
            for i in wave:
                inc = batch[i]
                prior, load_reason = current[inc.click.user_id]
                item = self.item_index.get(inc.click.item_id)
                plan = plan_click(prior, inc.click, inc.source, item, self.policy)
                if load_reason is not None and plan.reset_reason is None:
                    plan = Plan(plan.action, plan.start, plan.item, load_reason, plan.replayed, plan.online_rank)
                plans.append(plan)
            hidden, top = self._run(plans)  # (W, S) | None per row, top k per row
            top_scores, top_items = top.values, top.indices
            for row, i in enumerate(wave):
                inc, plan = batch[i], plans[row]
                items = top_items[row]
                strategy = "popularity" if plan.action is Action.POPULAR else "model"
                rec = Recommendation(
                    user_id=inc.click.user_id,
                    items=tuple(self.item_ids[j] for j in items),
                    scores=tuple(float(s) for s in top_scores[row]),
                    model_version=self.model_version,
                    strategy=strategy,
                    source=inc.source,
                    click_ts=inc.click.ts,
                    produced_ts=now,
                    replayed=plan.replayed,
                )
                if plan.replayed:
                    blob = None
                else:
                    state = next_state(plan, inc.click, inc.source, hidden[row], items,
                                       self.model_version, self.policy, now)
                    blob = encode(state)
                    current[inc.click.user_id] = (state, None)
                outcomes[i] = Outcome(
                    state_blob=blob,
                    recommendation=rec,
                    reset_reason=plan.reset_reason,
                    unknown_item=plan.item is None and not plan.replayed,
                    replayed=plan.replayed,
                    online_rank=plan.online_rank,
                )
                current[inc.click.user_id] = (current[inc.click.user_id][0], None)
        return [o for o in outcomes if o is not None]

    def _run(self, plans: Sequence[Plan]) -> tuple[list[np.ndarray | None], TopK]:
        """Batched step for STEP rows, ranked with SCORE rows in one ranker call; popularity for the rest."""
        n_rows = len(plans)
        hidden: list[np.ndarray | None] = [None] * n_rows
        values: list[list[float]] = [[] for _ in range(n_rows)]
        indices: list[list[int]] = [[] for _ in range(n_rows)]
        exclude = [self._excluded(p) for p in plans]
        step_rows = [r for r, p in enumerate(plans) if p.action is Action.STEP]
        score_rows = [r for r, p in enumerate(plans) if p.action is Action.SCORE]
        states: list[torch.Tensor] = []
        with torch.inference_mode():
            if step_rows:
                h0 = torch.from_numpy(np.stack([self._hidden_of(plans[r]) for r in step_rows]))  # (B, S)
                items = torch.tensor([plans[r].item for r in step_rows], dtype=torch.long)  # (B,)
                h1, _ = self.model.advance(h0, self.model.input_table()[items])  # (B, S)
                h1_np = h1.numpy()
                for j, r in enumerate(step_rows):
                    hidden[r] = h1_np[j].copy()
                states.append(h1)
            if score_rows:
                states.append(torch.from_numpy(np.stack([self._hidden_of(plans[r]) for r in score_rows])))  # (B, S)
                for r in score_rows:
                    hidden[r] = plans[r].start.hidden if plans[r].start is not None else None
            model_rows = step_rows + score_rows
            if model_rows:
                state = states[0] if len(states) == 1 else torch.cat(states)  # (B, S)
                top = self.ranker.top_k(self.model.output_vector(state), self.k,  # (B, H)
                                        [exclude[r] for r in model_rows])
                for j, r in enumerate(model_rows):
                    values[r], indices[r] = top.values[j], top.indices[j]
        pop_values, pop_items = self._popular
        for r, p in enumerate(plans):
            if p.action is Action.POPULAR:
                keep = [j for j, i in enumerate(pop_items) if i not in exclude[r]][: self.k]
                values[r], indices[r] = [pop_values[j] for j in keep], [pop_items[j] for j in keep]
        return hidden, TopK(values, indices)

    def _hidden_of(self, plan: Plan) -> np.ndarray:
        if plan.start is not None and plan.start.hidden is not None:
            return plan.start.hidden
        return np.zeros(self.model.state_size, dtype=np.float32)

    def _excluded(self, plan: Plan) -> frozenset[int]:
        """The user's recent items and this click, left out of the list."""
        if not self.policy.exclude_clicked:
            return frozenset()
        masked = set(plan.start.recent) if plan.start is not None else set()
        if plan.item is not None:
            masked.add(plan.item)
        return frozenset(masked)
