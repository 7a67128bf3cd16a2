"""The functional core: every per-click decision, batched model calls, no Faust and no I/O.

The shell hands in a micro-batch of (click, source, stored state bytes) and gets
back, per click, the bytes to store, the list to publish and what happened
(reset, unknown item, replay, online hit) for the metrics. Clicks of the same
user inside one batch are applied in order: the batch is cut into waves, the
n-th click of each user going to wave n, and each wave is one batched step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import enum
import time
from dataclasses import dataclass
from typing import Any, Collection, Protocol, Sequence

import numpy as np
import torch

from models.ranker import Ranker as LearnedRanker
from stream_app.core.catalogue import Applied, Catalogue, ItemRecord
from stream_app.core.profiles import ProfileRecord, Profiles
from stream_app.core.similar import UserIndex, VectorRecord
from stream_app.core.ranking import ExactRanker, Ranker, TopK, merge_top_k
from stream_app.core.records import Click, Recommendation, Source
from stream_app.core.explore import sample_lists
from stream_app.core.candidates import recall_and_rank, source_names, with_new_items
from stream_app.core.rerank import ItemFacts, Strengths, rerank_lists
from stream_app.core.shaping import cap_per_group
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
    max_per_attribute: int = 0  # at most this many items of one capped attribute per list; 0 = no cap
    capped_prefix: str = ""  # the attribute ids that are capped start with this (empty: every attribute)
    rerank: Strengths = Strengths()  # re-rankers over the candidates (stream_app/core/rerank.py); off by default
    candidates: int = 200  # candidates re-ranked per list when a re-ranker is on (and the also-like pool)
    also_k: int = 0  # items of the sampled "you may also like" list (stream_app/core/explore.py); 0 = none
    also_temperature: float = 1.0  # its softmax temperature


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
    ended: np.ndarray | None = None  # at a session gap: the finished session's final state, for the user-level GRU


@dataclass(frozen=True, slots=True)
class Outcome:
    """Everything the shell needs to write, send and count for one click."""

    state_blob: bytes | None  # None: leave the stored state alone
    recommendation: Recommendation
    reset_reason: str | None
    unknown_item: bool
    replayed: bool
    online_rank: int | None
    user_vector: np.ndarray | None = None  # the long-term part, when this click changed it (a session gap)


def load_prior(blob: bytes | None, model_version: str,
               carried: Collection[str] = ()) -> tuple[UserState | None, str | None]:
    """Decode a stored blob; undecodable or other-model states are dropped with a reason, except those of a
    model this one replaced (``carried``), returned with the reason "carried" for :meth:`Recommender.carry_states`."""
    if blob is None:
        return None, None
    try:
        state = decode(blob)
    except StateDecodeError:
        return None, "undecodable"
    if state.model_version != model_version:
        return (state, "carried") if state.model_version in carried else (None, "model_version")
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
                          prior.last_seen, (), prior.served, prior.user)
        reset = "session_gap"
    if item is not None:
        action = Action.STEP
    elif start is not None and start.hidden is not None:
        action = Action.SCORE
    else:
        action = Action.POPULAR
    ended = prior.hidden if reset == "session_gap" and prior is not None else None
    return Plan(action, start, item, reset, False, online_rank, ended)


def next_state(
    plan: Plan, click: Click, source: Source, hidden: np.ndarray | None, served: Sequence[int],
    model_version: str, policy: Policy, now: float, user: np.ndarray | None = None,
) -> UserState:
    """The state after a (non-replayed) click: new hidden and user part, bookkeeping, the list just served."""
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
        user=user,
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
        attributes: tuple[Any, ...] | None = None,
        excluded: tuple[Collection[int], Collection[str]] = ((), ()),
        profile_vocabulary: Sequence[str] = (),
        pipeline: LearnedRanker | None = None,
    ) -> None:
        self.model = model
        # long-term users (models/users.py): the user-level GRU folds a finished session in at the gap
        self.user_width = int(getattr(getattr(model, "config", None), "user_hidden", 0) or 0)
        # live profiles (stream_app/core/profiles.py), pooled into the query by a network trained with them
        self.profiles = Profiles(profile_vocabulary)
        self.fuses_profiles = getattr(model, "profile", None) is not None and bool(profile_vocabulary)
        self.user_index = UserIndex()  # every partition's user vectors (stream_app/core/similar.py)
        # exact top-k by batched products unless an ANN index is handed in (stream_app/core/ranking.py)
        self.ranker: Ranker = ranker if ranker is not None else ExactRanker(model.out_emb, model.out_bias)
        self.item_ids = list(item_ids)
        self.item_index = {item: i for i, item in enumerate(self.item_ids)}
        self.model_version = model_version
        self.policy = policy
        counts = torch.as_tensor(np.asarray(item_counts, dtype=np.float32))  # (N,)
        self.popularity = counts / counts.sum().clamp(min=1.0)  # (N,)
        self.k = min(policy.k, len(self.item_ids))
        self.n_base = len(self.item_ids)
        # the live catalogue (stream_app/core/catalogue.py): ``attributes`` (the network's attribute names and
        # SessionRNN.new_item_vectors) let it add new items; without, it can only switch items off and on
        # (and, third, the trained items' attribute lists as CSR arrays, for per-attribute caps)
        names, vectors, *csr = attributes if attributes is not None else (None, None)
        # ``excluded``: trained items never served and the attribute ids that exclude new ones (business rules)
        self.catalogue = Catalogue(self.item_index, names, vectors, int(model.out_emb.shape[1]),
                                   int(model.input_table().shape[1]), excluded[0], excluded[1],
                                   csr[0] if csr else None)
        self.ranker.set_blocked(self.catalogue.excluded, True)
        self._fetch = self.k  # candidates ranked per list: a few times k when lists are shaped by a cap
        if policy.max_per_attribute > 0:
            self.catalogue.cap_groups(policy.capped_prefix)
            self._fetch = min(self.n_base, 4 * self.k)
        self.facts: ItemFacts | None = None  # what the re-rankers know of each item
        self._base_facts: ItemFacts | None = None
        if policy.rerank.on:
            self._base_facts = ItemFacts.build(model.out_emb, np.asarray(item_counts, dtype=np.float32),
                                               (csr[0][0], csr[0][1]) if csr else None)
            self.facts = self._base_facts
            self._fetch = max(self._fetch, min(self.n_base, policy.candidates))
        if policy.also_k > 0:  # the also-like list is drawn from the candidates
            self._fetch = max(self._fetch, min(self.n_base, policy.candidates))
        self._also: list[tuple[list[int], list[float]]] = []  # the last ``_rank``'s sampled lists
        self._sources: list[dict[int, int]] = []  # the last ``_rank``'s candidate sources per row (with a ranker)
        self.lineage: dict[str, list[str]] = {}  # replaced models' versions -> their trained item ids (hot swap)
        self.carried_last = 0  # states carried over from a replaced model in the last ``process`` call
        # recall sources and the learned ranker (stream_app/core/candidates.py), from a `streamrec ranker` file
        self.pipeline = pipeline
        self._base_pipeline = pipeline
        self._off = torch.zeros(self.n_base, dtype=torch.bool)  # trained items not to serve (the recall's extras)
        if pipeline is not None:
            self._fetch = max(self._fetch, min(self.n_base, pipeline.recall.size))
            self._refresh_off()
        self.stages = (("score",) + (("recall", "ranker") if pipeline is not None else ())
                       + (("cap",) if policy.max_per_attribute > 0 else ()) + policy.rerank.names())
        # the serving policy's id in every record: whatever shapes the lists, so a learner can group its logs
        self.policy_id = hashlib.sha256(repr((policy, self.stages, model_version, self.k,
                                              pipeline.version if pipeline is not None else None)).encode()
                                        ).hexdigest()[:12]
        # a popularity list has no network candidates to recall around and rank
        self._popular_stages = ("popularity",) + tuple(s for s in self.stages[1:] if s not in ("recall", "ranker"))
        self.stage_seconds: dict[str, float] = {}  # per stage, the last ``process`` call's time (for the metrics)
        self._rank_popular()

    def _rank_popular(self) -> None:
        """The popularity list is the same for everyone: ranked once (and after a catalogue change), filtered per row."""
        pop = self.popularity.clone()
        off = self.catalogue.blocked | self.catalogue.excluded
        if off:
            pop[list(off)] = -1.0
        top = torch.topk(pop, min(self.n_base, self._fetch + 33))
        self._popular = tuple(zip(*[(v, i) for v, i in zip(top.values.tolist(), top.indices.tolist()) if v >= 0]))
        if not self._popular:
            self._popular = ((), ())

    def apply_catalogue(self, records: Sequence[ItemRecord]) -> Applied:
        """Catalogue records in: items switched off and on in the ranker, new items made rankable and clickable.

        Called by the shell between batches (the core is single-threaded), so every list
        produced after the call sees the update."""
        done = self.catalogue.apply(records)
        for i in done.added:  # ``item_index`` stays the trained items' (the catalogue's base_index)
            self.item_ids.append(self.catalogue.new_ids[i - self.n_base])
        if done.added and self._base_facts is not None:
            self.facts = self._base_facts.extended(self.catalogue.new_out)
        if done.added and self._base_pipeline is not None:
            self.pipeline = with_new_items(self._base_pipeline, self.catalogue.new_out)
        if done.blocked or done.unblocked:
            self._refresh_off()
            self.ranker.set_blocked(done.blocked, True)
            self.ranker.set_blocked(done.unblocked, False)
            self._rank_popular()
        return done

    def adopt(self, previous: "Recommender") -> None:
        """Take over from the model this one replaces (a hot swap): its users' states are carried into this
        model on their next click (:meth:`carry_states`) instead of being reset; so are states of the models
        it had replaced itself."""
        self.lineage = {**previous.lineage, previous.model_version: list(previous.item_ids[: previous.n_base])}
        self.lineage.pop(self.model_version, None)

    def carry_states(self, states: Sequence[UserState]) -> list[UserState]:
        """States written by a replaced model, carried into this one: the recent and served items mapped by
        item id (items this model does not know are left out), and the session state rebuilt by running the
        recent items through this network from the start of a session, all users in one batched pass. The
        user-level (long-term) part cannot be carried between two networks and starts again."""
        mapped = []
        for st in states:
            old_ids = self.lineage[st.model_version]

            def remap(seq: Sequence[int], old_ids: list[str] = old_ids) -> tuple[int, ...]:
                out: list[int] = []
                for i in seq:
                    j = self.catalogue.from_state((i,)) if i < 0 else (
                        (self.catalogue.index_of(old_ids[i]),) if i < len(old_ids) else ())
                    out.extend(x for x in j if x is not None)
                return tuple(out)

            mapped.append((remap(st.recent), remap(st.served)))
        rows = [r for r, (st, (recent, _)) in enumerate(zip(states, mapped)) if st.hidden is not None and recent]
        hidden: dict[int, np.ndarray] = {}
        if rows:
            t_max = max(len(mapped[r][0]) for r in rows)
            mat = torch.zeros((t_max, len(rows)), dtype=torch.long)
            live = torch.zeros((t_max, len(rows), 1), dtype=torch.bool)
            for j, r in enumerate(rows):  # right-aligned: a short history starts later
                seq = mapped[r][0]
                mat[t_max - len(seq):, j] = torch.tensor(seq, dtype=torch.long)
                live[t_max - len(seq):, j] = True
            with torch.inference_mode():
                h = torch.zeros((len(rows), self.model.state_size))  # (B, S) a session's start
                if self.user_width:
                    h = self.model.session_start(torch.zeros(len(rows), self.user_width))  # type: ignore[attr-defined]
                for t in range(t_max):
                    new, _ = self.model.advance(h, self._inputs(mat[t]))  # (B, S)
                    h = torch.where(live[t], new, h)
            hidden = {r: h[j].numpy().copy() for j, r in enumerate(rows)}
        return [dataclasses.replace(st, model_version=self.model_version, hidden=hidden.get(r), recent=recent,
                                    served=served, user=None)
                for r, (st, (recent, served)) in enumerate(zip(states, mapped))]

    def _refresh_off(self) -> None:
        off = self.catalogue.blocked | self.catalogue.excluded
        self._off = torch.zeros(self.n_base, dtype=torch.bool)
        if off:
            self._off[torch.tensor(sorted(off), dtype=torch.long)] = True

    def apply_profiles(self, records: Sequence[ProfileRecord]) -> None:
        """Profile records in (between batches, like the catalogue): used from each user's next click."""
        self.profiles.apply(records)

    def apply_vectors(self, records: Sequence[VectorRecord]) -> None:
        """User-vector records in (between batches): what ``GET /users/{id}/similar`` ranks."""
        self.user_index.apply(list(records))

    def process(self, batch: Sequence[Incoming], now: float) -> list[Outcome]:
        """Apply a micro-batch in order: the recurrent steps wave by wave, then one ranker call for all.

        A user's n-th click of the batch is stepped from the state its (n-1)-th left;
        the lists do not feed the steps, so every click of the batch is scored in one
        batched call after the last wave (with several clicks per user in a batch,
        one call of B rows instead of one small call per wave). What a list feeds,
        the next click's online rank and the ``served`` items of the state, is
        filled in afterwards in batch order.
        """
        waves: list[list[int]] = []
        seen: dict[str, int] = {}
        for i, inc in enumerate(batch):
            n = seen.get(inc.click.user_id, 0)
            seen[inc.click.user_id] = n + 1
            if n == len(waves):
                waves.append([])
            waves[n].append(i)

        current: dict[str, tuple[UserState | None, str | None]] = {}
        carried: list[str] = []
        for inc in batch:
            if inc.click.user_id not in current:
                prior, reason = load_prior(inc.state_blob, self.model_version, self.lineage)
                if reason == "carried":
                    carried.append(inc.click.user_id)
                elif prior is not None and min(prior.recent + prior.served, default=0) < 0:  # new items, by code
                    prior = dataclasses.replace(prior, recent=self.catalogue.from_state(prior.recent),
                                                served=self.catalogue.from_state(prior.served))
                current[inc.click.user_id] = (prior, reason)
        self.carried_last = len(carried)
        if carried:  # states of the model this one replaced: carried over, not reset (hot swap)
            for user, state in zip(carried, self.carry_states([current[u][0] for u in carried])):  # type: ignore[misc]
                current[user] = (state, None)

        n_rows = len(batch)
        plans: list[Plan] = [None] * n_rows  # type: ignore[list-item]
        hidden: list[np.ndarray | None] = [None] * n_rows
        long_term: list[np.ndarray | None] = [None] * n_rows  # the user part each click leaves
        states: list[UserState | None] = [None] * n_rows  # after the click, ``served`` still to fill
        previous: list[int | None] = [None] * n_rows  # the user's last applied click earlier in this batch
        last_applied: dict[str, int] = {}
        for wave in waves:
            wave_plans = []
            for i in wave:
                inc = batch[i]
                prior, load_reason = current[inc.click.user_id]
                item = self.item_index.get(inc.click.item_id)
                if item is None and self.catalogue.new_slot:  # an item added through the catalogue
                    item = self.catalogue.index_of(inc.click.item_id)
                plan = plan_click(prior, inc.click, inc.source, item, self.policy)
                if load_reason is not None and plan.reset_reason is None:
                    plan = dataclasses.replace(plan, reset_reason=load_reason)
                wave_plans.append(plan)
            for i, plan, h, u in zip(wave, wave_plans, *self._step(wave_plans)):
                inc = batch[i]
                user = inc.click.user_id
                plans[i], hidden[i], long_term[i] = plan, h, u
                previous[i] = last_applied.get(user)
                if not plan.replayed:
                    states[i] = next_state(plan, inc.click, inc.source, h, (), self.model_version, self.policy, now, u)
                    current[user] = (states[i], None)
                    last_applied[user] = i
                else:
                    current[user] = (current[user][0], None)

        top = self._rank(plans, hidden, long_term, [inc.click.user_id for inc in batch],
                         [(inc.source.partition, inc.source.offset) for inc in batch])
        outcomes: list[Outcome] = []
        for i, inc in enumerate(batch):
            plan, items = plans[i], top.indices[i]
            online_rank = plan.online_rank
            j = previous[i]
            if j is not None and not plan.replayed and plan.item is not None and top.indices[j]:
                served = top.indices[j][:ONLINE_K]  # the list this user was served one click ago
                online_rank = served.index(plan.item) + 1 if plan.item in served else 0
            rec = Recommendation(
                user_id=inc.click.user_id,
                items=tuple(self.item_ids[j] for j in items),
                scores=tuple(float(s) for s in top.values[i]),
                model_version=self.model_version,
                strategy="popularity" if plan.action is Action.POPULAR else "model",
                source=inc.source,
                click_ts=inc.click.ts,
                produced_ts=now,
                replayed=plan.replayed,
                stages=self.stages if plan.action is not Action.POPULAR else self._popular_stages,
                also=tuple(self.item_ids[j] for j in self._also[i][0]) if self._also else (),
                also_p=tuple(self._also[i][1]) if self._also else (),
                policy_id=self.policy_id,
                sources=tuple(source_names(self._sources[i].get(j, 0)) for j in items)
                if self._sources and self._sources[i] else (),
            )
            state = states[i]
            blob = None
            if state is not None:
                recent, served = state.recent, tuple(items[:ONLINE_K])
                if self.catalogue.new_ids:  # new items are stored by their stable code
                    recent, served = self.catalogue.to_state(recent), self.catalogue.to_state(served)
                blob = encode(dataclasses.replace(state, recent=recent, served=served))
            outcomes.append(Outcome(
                state_blob=blob,
                recommendation=rec,
                reset_reason=plan.reset_reason,
                unknown_item=plan.item is None and not plan.replayed,
                replayed=plan.replayed,
                online_rank=online_rank,
                user_vector=long_term[i] if plan.ended is not None and self.user_width else None,
            ))
        return outcomes

    def _step(self, plans: Sequence[Plan]) -> tuple[list[np.ndarray | None], list[np.ndarray | None]]:
        """The session and user parts each click leaves: one batched step for STEP rows, the start state
        for the others. Where the gap ended a session, the user-level GRU folds it into the user part,
        whatever the click (an unknown first item of the new session does not lose the old one); a STEP
        row that opens a session starts from ``session_start`` of the user part."""
        hidden: list[np.ndarray | None] = [None] * len(plans)
        users: list[np.ndarray | None] = [p.start.user if p.start is not None else None for p in plans]
        fold = [r for r, p in enumerate(plans) if p.ended is not None] if self.user_width else []
        if fold:
            with torch.inference_mode():
                zero_u = np.zeros(self.user_width, dtype=np.float32)
                u = torch.from_numpy(np.stack([users[r] if users[r] is not None else zero_u for r in fold]))  # (F, U)
                ended = torch.from_numpy(np.stack([plans[r].ended for r in fold]))  # type: ignore[misc]  # (F, S)
                folded = self.model.user_step(u, ended).numpy()  # type: ignore[attr-defined]  # (F, U)
            for j, r in enumerate(fold):
                users[r] = folded[j].copy()
        step_rows = [r for r, p in enumerate(plans) if p.action is Action.STEP]
        for r, p in enumerate(plans):
            if p.action is Action.SCORE:
                hidden[r] = p.start.hidden if p.start is not None else None
        if step_rows:
            with torch.inference_mode():
                opened = (self._open_sessions([plans[r] for r in step_rows], [users[r] for r in step_rows])
                          if self.user_width else [(None, None)] * len(step_rows))
                h0 = torch.from_numpy(np.stack([o[0] if o[0] is not None else self._hidden_of(plans[r])
                                                for o, r in zip(opened, step_rows)]))  # (B, S)
                items = torch.tensor([plans[r].item for r in step_rows], dtype=torch.long)  # (B,)
                h1, _ = self.model.advance(h0, self._inputs(items))  # (B, S)
                h1_np = h1.numpy()
            for j, r in enumerate(step_rows):
                hidden[r] = h1_np[j].copy()
                if self.user_width:
                    users[r] = opened[j][1]
        return hidden, users

    def _open_sessions(self, plans: Sequence[Plan], users: Sequence[np.ndarray | None],
                       ) -> list[tuple[np.ndarray | None, np.ndarray | None]]:
        """Per STEP row (in order): the state a new session starts from (None where the row continues a
        session) and the user part (already folded at a gap, ``_step``)."""
        zero_u = np.zeros(self.user_width, dtype=np.float32)
        opened: list[tuple[np.ndarray | None, np.ndarray | None]] = [(None, u) for u in users]
        new = [j for j, p in enumerate(plans) if p.start is None or p.start.hidden is None]
        if new:
            u = torch.from_numpy(np.stack([users[j] if users[j] is not None else zero_u for j in new]))  # (B, U)
            h0 = self.model.session_start(u).numpy()  # type: ignore[attr-defined]  # (B, S)
            for n, j in enumerate(new):
                opened[j] = (h0[n].copy(), users[j])
        return opened

    def _inputs(self, items: torch.Tensor) -> torch.Tensor:
        """Input vectors (B, E) of item indices (B,): trained rows, and new items' rows from the catalogue."""
        table = self.model.input_table()
        new = items >= self.n_base
        if not self.catalogue.new_ids or not bool(new.any()):
            return table[items]  # (B, E)
        x = table[items.clamp(max=self.n_base - 1)].clone()  # (B, E)
        x[new] = self.catalogue.new_in[items[new] - self.n_base]
        return x

    def _rank(self, plans: Sequence[Plan], hidden: Sequence[np.ndarray | None],
              users: Sequence[np.ndarray | None] = (), user_ids: Sequence[str] = (),
              seeds: Sequence[tuple[int, int]] = ()) -> TopK:
        """One ranker call for every STEP and SCORE row (from its hidden state, user part and profile);
        popularity for the rest."""
        t0 = time.perf_counter()
        n_rows = len(plans)
        self._sources = []
        values: list[list[float]] = [[] for _ in range(n_rows)]
        indices: list[list[int]] = [[] for _ in range(n_rows)]
        exclude = [self._excluded(p) for p in plans]
        model_rows = [r for r, p in enumerate(plans) if p.action is not Action.POPULAR]
        if model_rows:
            with torch.inference_mode():
                state = torch.from_numpy(np.stack([hidden[r] if hidden[r] is not None else self._hidden_of(plans[r])
                                                   for r in model_rows]))  # (B, S)
                queries = self.model.output_vector(state)  # (B, H)
                prof = self.profiles.matrix([user_ids[r] for r in model_rows]) if self.fuses_profiles else None
                if prof is not None:  # the pooled profile joins the query (models/rnn.py user_vector)
                    zero_u = np.zeros(self.user_width, dtype=np.float32)
                    u = torch.from_numpy(np.stack([users[r] if users[r] is not None else zero_u for r in model_rows]))
                    extra = self.model.user_vector(u, torch.from_numpy(prof))  # type: ignore[attr-defined]  # (B, H)
                    if extra is not None:
                        queries = queries + extra
                rows_ex = [exclude[r] for r in model_rows]
                cat = self.catalogue
                if not cat.new_ids:
                    top = self.ranker.top_k(queries, self._fetch, rows_ex)
                else:  # the trained items by the ranker, the new ones exactly, merged
                    n = self.n_base
                    top = merge_top_k(
                        self.ranker.top_k(queries, self._fetch, [{i for i in e if i < n} for e in rows_ex]),
                        torch.addmm(cat.new_bias, queries, cat.new_out.t()),  # (B, M)
                        n, self._fetch, [{i - n for i in e if i >= n} for e in rows_ex])
            for j, r in enumerate(model_rows):
                values[r], indices[r] = top.values[j], top.indices[j]
        pop_values, pop_items = self._popular
        for r, p in enumerate(plans):
            if p.action is Action.POPULAR:
                keep = [j for j, i in enumerate(pop_items) if i not in exclude[r]][: self._fetch]
                values[r], indices[r] = [pop_values[j] for j in keep], [pop_items[j] for j in keep]
        t1 = time.perf_counter()
        self.stage_seconds = {"score": t1 - t0}
        if self.policy.also_k > 0:  # drawn from the candidates before any re-ranking (stream_app/core/explore.py)
            self._also = sample_lists(values, indices, self.policy.also_k, self.policy.also_temperature,
                                      seeds or [(0, r) for r in range(n_rows)],
                                      [p.action is Action.POPULAR for p in plans])
            t2 = time.perf_counter()
            self.stage_seconds["also_like"], t1 = t2 - t1, t2
        history = [np.asarray(((p.start.recent if p.start is not None else ())
                               + ((p.item,) if p.item is not None else ())), dtype=np.int64) for p in plans
                   ] if self.pipeline is not None or self.facts is not None else []
        if self.pipeline is not None and model_rows:  # recall sources + the learned ranker (core/candidates.py)
            with torch.inference_mode():
                ranked_v, ranked_i, bits, seconds = recall_and_rank(
                    self.pipeline, queries, self.model.out_emb, self.model.out_bias,
                    [values[r] for r in model_rows], [indices[r] for r in model_rows],
                    [plans[r].item if plans[r].item is not None else -1 for r in model_rows], rows_ex, self._off,
                    [history[r] for r in model_rows])
            self._sources = [{} for _ in range(n_rows)]
            for j, r in enumerate(model_rows):
                values[r], indices[r] = ranked_v[j], ranked_i[j]
                self._sources[r] = bits[j]
            self.stage_seconds.update(seconds)
            t1 = time.perf_counter()
        cap = self.policy.max_per_attribute
        if self.facts is not None:  # re-ranked candidates (stream_app/core/rerank.py), a few k kept for the cap
            values, indices = rerank_lists(values, indices, min(self._fetch, 4 * self.k) if cap > 0 else self.k,
                                           self.policy.rerank, self.facts, history)
            t2 = time.perf_counter()
            self.stage_seconds["rerank"], t1 = t2 - t1, t2
        if cap > 0:  # shaped lists, refilled from the next candidates (stream_app/core/shaping.py)
            for r in range(n_rows):
                values[r], indices[r] = cap_per_group(values[r], indices[r], self.catalogue.groups_of, cap, self.k)
            self.stage_seconds["cap"] = time.perf_counter() - t1
        elif self.facts is None:
            for r in range(n_rows):
                values[r], indices[r] = values[r][: self.k], indices[r][: self.k]
        return TopK(values, indices)

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
