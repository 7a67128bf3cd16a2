"""Long-term users: clicks grouped into sessions per user, the user-level network, and its protocol.

The network is the session GRU of models/rnn.py with two additions (``ModelConfig.user_hidden``,
``profile_attributes``): a user-level GRU stepped once per finished session on that session's
final state (HRNN, Quadrana et al., RecSys 2017) whose output starts the next session, and the
user's profile attributes pooled into a vector added to every scored query.  The worker keeps the
user-level state beside the session state and steps it at the session gap (stream_app/core).

Protocol (session-aware evaluation as in Latifi, Mauro and Jannach, "Session-aware recommendation:
a surprising quest for the state of the art", 2021): clicks are cut into sessions at an inactivity
gap; per user with at least two sessions the last session is the test session, and among the rest
the last session of a user with at least two of them is the validation session (early stopping and
the baselines' settings are chosen on it; the network and the baselines learn from what is left).
Every method reads the user's earlier sessions, then predicts each click of the test session from
the ones before it (positions 2..n), ranking all items; the user's earlier items and the session's
own earlier items are excluded (a MovieLens user rates a movie once).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from models.data import DataError, Sessions, UserLanes
from models.evaluate import metrics_from_ranks, ranks_of
from models.prepare import Columns, gap_cuts, read_raw

KS_USERS: tuple[int, ...] = (5, 10, 20)


@dataclass
class UserHistory:
    """One user's sessions, oldest first, as item id strings."""

    user: str
    sessions: list[list[str]]


@dataclass
class Case:
    """A user to evaluate: earlier sessions (coded), the session to predict (coded, >= 2 clicks), profile."""

    history: list[np.ndarray]
    target: np.ndarray
    profile: np.ndarray  # (L,) profile attribute indices, 0 = padding


def read_user_clicks(path: str | os.PathLike[str], gap: float) -> list[UserHistory]:
    """A log with columns UserId, ItemId, Time (``streamrec prepare``'s reader: TSV here, times in seconds
    or ISO-8601) -> each user's sessions, cut at ``gap`` seconds; users in order of first appearance."""
    raw = read_raw(path, Columns(user="UserId", item="ItemId", time="Time"), fmt="tsv")
    order, new = gap_cuts(raw["key"], raw["time"], gap)
    keys, items = raw["key"][order].tolist(), raw["item"][order].tolist()
    by_user: dict[str, list[list[str]]] = {}
    for n, (user, item) in enumerate(zip(keys, items)):
        if new[n]:
            by_user.setdefault(user, []).append([])
        by_user[user][-1].append(item)
    ids, first = np.unique(raw["key"], return_index=True)
    return [UserHistory(str(u), by_user[str(u)]) for u in ids[np.argsort(first, kind="stable")]]


def drop_rare_items(users: list[UserHistory], min_support: int) -> list[UserHistory]:
    """Remove clicks on items with fewer than ``min_support`` clicks (one pass, as ``streamrec prepare``)."""
    counts: dict[str, int] = {}
    for u in users:
        for s in u.sessions:
            for i in s:
                counts[i] = counts.get(i, 0) + 1
    kept = [UserHistory(u.user, [f for f in ([i for i in s if counts[i] >= min_support] for s in u.sessions) if f])
            for u in users]
    return [u for u in kept if u.sessions]


def split_last(users: list[UserHistory]) -> tuple[list[UserHistory], list[tuple[UserHistory, list[str]]]]:
    """Per user with >= 2 sessions, take the last session out: (the rest, [(user's rest, last session)])."""
    rest: list[UserHistory] = []
    held: list[tuple[UserHistory, list[str]]] = []
    for u in users:
        if len(u.sessions) >= 2 and len(u.sessions[-1]) >= 2:
            r = UserHistory(u.user, u.sessions[:-1])
            rest.append(r)
            held.append((r, u.sessions[-1]))
        else:
            rest.append(u)
    return rest, held


def read_profiles(path: str | os.PathLike[str] | None) -> dict[str, list[str]]:
    """``user2attributes.json``: user id -> profile attribute strings (``gender:F``, ``age:25-34``)."""
    if path is None:
        return {}
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{p}: cannot read user attributes ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise DataError(f"{p}: expected a JSON object of user id -> list of attributes")
    return {str(k): [str(a) for a in v] for k, v in data.items()}


class Coder:
    """Items and profile attributes of the training part -> indices (profile index 0 is padding)."""

    def __init__(self, train: list[UserHistory], profiles: dict[str, list[str]]) -> None:
        ids: dict[str, int] = {}
        for u in train:
            for s in u.sessions:
                for i in s:
                    ids.setdefault(i, len(ids))
        self.item_ids = list(ids)
        self.items = ids
        attrs = sorted({a for u in train for a in profiles.get(u.user, [])})
        self.profile_ids = attrs
        self.attrs = {a: j + 1 for j, a in enumerate(attrs)}
        self.width = max((len(v) for v in profiles.values()), default=0)
        self.profiles = profiles

    def items_of(self, session: list[str]) -> np.ndarray:
        """Coded items (unknown ones dropped)."""
        return np.array([self.items[i] for i in session if i in self.items], dtype=np.int64)

    def profile_of(self, user: str) -> np.ndarray:
        """(L,) padded profile indices of a user (unknown attributes and users: padding)."""
        codes = [self.attrs.get(a, 0) for a in self.profiles.get(user, [])]
        return np.array(codes + [0] * (self.width - len(codes)), dtype=np.int64)

    def lanes(self, train: list[UserHistory]) -> tuple[Sessions, UserLanes, np.ndarray]:
        """Each user's clicks as one run (sessions concatenated), the lanes' facts and item counts (N,)."""
        items: list[np.ndarray] = []
        starts: list[np.ndarray] = []
        lengths: list[int] = []
        for u in train:
            coded = [self.items_of(s) for s in u.sessions]
            coded = [c for c in coded if len(c)]
            items.extend(coded)
            for c in coded:
                first = np.zeros(len(c), dtype=bool)
                first[0] = True
                starts.append(first)
            lengths.append(sum(len(c) for c in coded))
        flat = np.concatenate(items)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        profiles = np.stack([self.profile_of(u.user) for u in train]) if self.width else np.zeros((len(train), 0), np.int64)
        counts = np.bincount(flat, minlength=len(self.item_ids)).astype(np.int64)
        return Sessions(flat, offsets), UserLanes(np.concatenate(starts), profiles, len(self.profile_ids)), counts

    def sessions(self, train: list[UserHistory]) -> Sessions:
        """Every training session on its own (what the session-only network learns from)."""
        coded = [c for u in train for c in (self.items_of(s) for s in u.sessions) if len(c)]
        lengths = [len(c) for c in coded]
        return Sessions(np.concatenate(coded), np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))

    def cases(self, held: list[tuple[UserHistory, list[str]]]) -> list[Case]:
        """Held-out sessions with >= 2 known clicks, coded with the users' earlier sessions."""
        out: list[Case] = []
        for u, session in held:
            target = self.items_of(session)
            if len(target) >= 2:
                history = [c for c in (self.items_of(s) for s in u.sessions) if len(c)]
                out.append(Case(history, target, self.profile_of(u.user)))
        return out


# ---------------------------------------------------------------------------------------- scoring
Method = Callable[[Case], Tensor]  # a case -> scores (T-1, N) of clicks 2..T from the clicks before each


def network_method(model: Any) -> Method:
    """The session network: earlier sessions fold into the user state (a no-op without the user-level
    GRU), the test session starts from it, and the pooled profile is added to the query."""

    def run(case: Case) -> Tensor:
        with torch.inference_mode():
            user = model.zero_user(1)  # (1, U)
            for session in case.history:
                state = model.session_start(user)  # (1, S)
                xs = model.input_vectors(torch.from_numpy(session))  # (T, E)
                for x in xs:
                    state, _ = model.advance(state, x.unsqueeze(0))
                user = model.user_step(user, state)  # (1, U)
            state = model.session_start(user)  # (1, S)
            extra = model.user_vector(user, torch.from_numpy(case.profile).unsqueeze(0))  # (1, H) or None
            states = []
            for x in model.input_vectors(torch.from_numpy(case.target[:-1])):
                state, _ = model.advance(state, x.unsqueeze(0))
                states.append(state)
            return model.score(torch.cat(states), extra)  # (T-1, N)

    return run


def _onehot(items: np.ndarray, n: int) -> Tensor:
    v = torch.zeros(n)
    v[torch.from_numpy(items)] = 1.0
    return v  # (N,)


def _prefixes(target: np.ndarray, n: int) -> Tensor:
    """(T-1, N): row t marks the session's clicks 0..t."""
    m = torch.zeros(len(target) - 1, n)
    m[torch.arange(len(target) - 1), torch.from_numpy(target[:-1])] = 1.0
    return m.cummax(dim=0).values


def sknn_method(train: Sessions, n_items: int, k: int, history_weight: float) -> Method:
    """Session-kNN with the user's history: the query is the session so far plus the user's earlier
    items at ``history_weight`` (0: plain SKNN); the ``k`` most cosine-similar training sessions vote
    for their items with their similarity (the SKNN family Latifi et al. found hard to beat)."""
    m = torch.zeros(train.n_sessions, n_items)  # (n_s, N) binary session vectors
    m[torch.repeat_interleave(torch.arange(train.n_sessions), torch.from_numpy(train.lengths)), torch.from_numpy(train.items)] = 1.0
    norms = m.sum(1).sqrt().clamp(min=1.0)  # (n_s,)

    def run(case: Case) -> Tensor:
        q = _prefixes(case.target, n_items)  # (T-1, N)
        if history_weight > 0 and case.history:
            hist = _onehot(np.concatenate(case.history), n_items)  # (N,)
            q = torch.maximum(q, history_weight * hist)  # (T-1, N)
        sims = (q @ m.t()) / (norms * q.norm(dim=1, keepdim=True).clamp(min=1e-9))  # (T-1, n_s)
        top = sims.topk(min(k, sims.shape[1]), dim=1)
        w = torch.zeros_like(sims).scatter_(1, top.indices, top.values)  # (T-1, n_s)
        return w @ m  # (T-1, N)

    return run


def popularity_method(counts: np.ndarray) -> Method:
    """The same list for everyone: training clicks per item."""
    pop = torch.as_tensor(counts, dtype=torch.float32)  # (N,)
    return lambda case: pop.expand(len(case.target) - 1, -1)


def evaluate_cases(method: Method, cases: list[Case], n_items: int, ks: tuple[int, ...] = KS_USERS) -> dict[str, float]:
    """Recall (hit rate), MRR and NDCG at ``ks`` over every predicted click of the held-out sessions;
    seen items (the user's earlier ones and the session's own) are excluded, the target never."""
    ranks: list[np.ndarray] = []
    for case in cases:
        scores = method(case).clone()  # (T-1, N)
        seen = _prefixes(case.target, n_items).bool()  # (T-1, N)
        if case.history:
            seen |= _onehot(np.concatenate(case.history), n_items).bool()
        targets = torch.from_numpy(case.target[1:])  # (T-1,)
        seen[torch.arange(len(targets)), targets] = False
        scores[seen] = float("-inf")
        ranks.append(ranks_of(scores, targets)[1].numpy())
    out = metrics_from_ranks(np.concatenate(ranks) if ranks else np.zeros(0), ks)
    out["predictions"] = float(sum(len(c.target) - 1 for c in cases))
    return out


# ---------------------------------------------------------------------------------------- user vectors
def user_vectors(model: Any, coder: Coder, users: list[UserHistory]) -> np.ndarray:
    """(n_users, U) each user's long-term state after all of its sessions (what the worker holds at the
    user's next session), stepped as the worker steps it."""
    out = np.zeros((len(users), model.config.user_hidden), dtype=np.float32)
    with torch.inference_mode():
        for n, u in enumerate(users):
            user = model.zero_user(1)  # (1, U)
            for session in (c for c in (coder.items_of(s) for s in u.sessions) if len(c)):
                state = model.session_start(user)  # (1, S)
                for x in model.input_vectors(torch.from_numpy(session)):
                    state, _ = model.advance(state, x.unsqueeze(0))
                user = model.user_step(user, state)
            out[n] = user[0].numpy()
    return out


def popularity_vectors(coder: Coder, users: list[UserHistory], counts: np.ndarray, bins: int = 10) -> np.ndarray:
    """(n_users, bins + 1) the baseline: the share of a user's clicks in each popularity decile of the
    items, and the log of the user's click count."""
    order = np.argsort(np.argsort(-counts, kind="stable"), kind="stable")  # item -> popularity rank
    decile = np.minimum(order * bins // max(len(counts), 1), bins - 1)
    out = np.zeros((len(users), bins + 1), dtype=np.float32)
    for n, u in enumerate(users):
        items = np.concatenate([coder.items_of(s) for s in u.sessions] or [np.zeros(0, np.int64)])
        if len(items):
            out[n, :bins] = np.bincount(decile[items], minlength=bins) / len(items)
            out[n, bins] = np.log1p(len(items))
    return out


def probe_auc(x: np.ndarray, labels: list[str], folds: int = 5, seed: int = 0) -> float:
    """Macro one-vs-rest ROC AUC of a logistic-regression probe (scikit-learn), cross-validated over users."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(labels)
    keep = np.isin(y, [c for c, n in zip(*np.unique(y, return_counts=True)) if n >= folds])  # classes every fold has
    x, y = x[keep], y[keep]
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    proba = cross_val_predict(probe, x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                              method="predict_proba")
    classes = np.unique(y)
    if len(classes) == 2:
        return float(roc_auc_score(y == classes[1], proba[:, 1]))
    return float(roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=classes))


def neighbour_precision(x: np.ndarray | None, seen: list[set[int]], held: dict[int, set[int]], k: int = 10,
                        seed: int = 0) -> float:
    """For users with held-out items: the share of their ``k`` nearest users (cosine over ``x``; random
    users when ``x`` is None) whose known items include one of them."""
    rng = np.random.default_rng(seed)
    n = len(seen)
    if x is not None:
        unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9)
    hits = total = 0
    for i, items in held.items():
        if x is None:
            near = rng.choice(np.delete(np.arange(n), i), size=k, replace=False)
        else:
            sims = unit @ unit[i]
            sims[i] = -np.inf
            near = np.argpartition(-sims, k)[:k]
        hits += sum(bool(seen[j] & items) for j in near)
        total += k
    return hits / max(total, 1)


def vector_figures(model: Any, coder: Coder, train: list[UserHistory], counts: np.ndarray,
                   profiles: dict[str, list[str]], held: list[tuple[UserHistory, list[str]]]) -> dict[str, Any]:
    """Are the long-term vectors worth serving? A linear probe of each profile field from them against
    the popularity-vector baseline, and neighbour precision against random users and item-overlap kNN."""
    vec = user_vectors(model, coder, train)
    pop = popularity_vectors(coder, train, counts)
    out: dict[str, Any] = {"users": len(train)}
    fields = sorted({a.split(":", 1)[0] for v in profiles.values() for a in v if ":" in a})
    for f in fields:
        labels = [next((a.split(":", 1)[1] for a in profiles.get(u.user, []) if a.startswith(f + ":")), "?")
                  for u in train]
        out[f"probe_auc_{f}"] = {"user_vectors": probe_auc(vec, labels), "popularity_vectors": probe_auc(pop, labels)}
    seen = [set(np.concatenate([coder.items_of(s) for s in u.sessions] or [np.zeros(0, np.int64)]).tolist())
            for u in train]
    row = {u.user: n for n, u in enumerate(train)}
    held_items = {row[u.user]: set(coder.items_of(s).tolist()) for u, s in held if u.user in row}
    overlap = np.zeros((len(train), len(coder.item_ids)), dtype=np.float32)
    for n, items in enumerate(seen):
        overlap[n, list(items)] = 1.0
    out["neighbour_precision@10"] = {"user_vectors": neighbour_precision(vec, seen, held_items),
                                     "item_overlap_knn": neighbour_precision(overlap, seen, held_items),
                                     "random_users": neighbour_precision(None, seen, held_items)}
    return out


# ---------------------------------------------------------------------------------------- the experiment
SKNN_K = (10, 25, 50, 100, 200, 500)
SKNN_HISTORY = (0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


def _tune_sknn(train: Sessions, n_items: int, valid: list[Case], weights: tuple[float, ...]) -> tuple[int, float, float]:
    """The (k, history weight) with the best validation Recall@20, and that figure."""
    best = (SKNN_K[0], weights[0], -1.0)
    for k in SKNN_K:
        for w in weights:
            r = evaluate_cases(sknn_method(train, n_items, k, w), valid, n_items, ks=(20,))["recall@20"]
            if r > best[2]:
                best = (k, w, r)
    return best


def long_term_experiment(clicks_path: str, profiles_path: str | None, gap: float = 3600.0, min_support: int = 5,
                         overrides: dict[str, Any] | None = None, progress: bool = False,
                         log: Any = print, out_path: str | None = None) -> dict[str, Any]:
    """Session-aware vs session-only networks vs session-kNN with and without user history on each
    user's last session (the module docstring's protocol). Returns one JSON-able dict."""
    from models.train import TrainConfig, fit

    t0 = time.perf_counter()
    users = drop_rare_items(read_user_clicks(clicks_path, gap), min_support)
    profiles = read_profiles(profiles_path)
    rest, test_held = split_last(users)
    train, valid_held = split_last(rest)
    coder = Coder(train, profiles)
    n = len(coder.item_ids)
    valid, test = coder.cases(valid_held), coder.cases(test_held)
    if not valid or not test:
        raise DataError(f"{clicks_path}: too few users with several sessions at gap {gap:.0f} s for this protocol")
    lanes, user_lanes, counts = coder.lanes(train)
    sessions = coder.sessions(train)
    cfg = TrainConfig().updated(overrides or {})

    def validator(model: Any) -> dict[str, float]:
        m = evaluate_cases(network_method(model), valid, n, ks=(20,))
        return {"recall@20": m["recall@20"], "mrr@20": m["mrr@20"]}

    res: dict[str, Any] = {"gap_seconds": gap, "items": n, "train_users": len(train),
                           "train_sessions": sessions.n_sessions, "train_clicks": int(len(sessions.items)),
                           "valid_users": len(valid), "test_users": len(test), "train_config": cfg.__dict__}
    variants = {
        "session_aware": (lanes, user_lanes),
        "session_aware_no_profile": (lanes, UserLanes(user_lanes.starts, user_lanes.profiles[:, :0], 0)),
        "session_only": (sessions, None),
    }
    saved = None
    for name, (data, lanes_of) in variants.items():
        t = time.perf_counter()
        model, meta = fit(data, counts, cfg, progress=progress, log=None, validator=validator, users=lanes_of)
        res[name] = {**evaluate_cases(network_method(model), test, n), "train_seconds": meta["train_seconds"],
                     "best_epoch": meta["best_epoch"], "valid_recall@20": meta["epochs"][meta["best_epoch"] - 1].get("valid_recall@20")}
        if log is not None:
            log(f"{name}: test Recall@20 {res[name]['recall@20']:.4f}  MRR@20 {res[name]['mrr@20']:.4f}  "
                f"({time.perf_counter() - t:.0f} s)")
        if name == "session_aware":
            saved = (model, meta)
            res["user_vectors"] = vector_figures(model, coder, train, counts, profiles, test_held)
    for name, weights in (("sknn_user_history", SKNN_HISTORY), ("sknn", (0.0,))):
        k, w, v = _tune_sknn(sessions, n, valid, weights)
        res[name] = {**evaluate_cases(sknn_method(sessions, n, k, w), test, n), "k": k, "history_weight": w,
                     "valid_recall@20": v}
        if log is not None:
            log(f"{name} (k {k}, history weight {w}): test Recall@20 {res[name]['recall@20']:.4f}  "
                f"MRR@20 {res[name]['mrr@20']:.4f}")
    res["popularity"] = evaluate_cases(popularity_method(counts), test, n)
    if out_path and saved is not None:
        from models.checkpoint import save_checkpoint

        meta = {**saved[1], "profile_attributes": coder.profile_ids, "gap_seconds": gap, "train_path": str(Path(clicks_path).resolve())}
        res["checkpoint_version"] = save_checkpoint(out_path, saved[0], coder.item_ids, counts, meta)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    res["torch_threads"] = torch.get_num_threads()
    return res


__all__ = ["Case", "Coder", "KS_USERS", "UserHistory", "drop_rare_items", "evaluate_cases", "long_term_experiment",
           "neighbour_precision", "network_method", "popularity_method", "popularity_vectors", "probe_auc",
           "read_profiles", "read_user_clicks", "sknn_method", "split_last", "user_vectors", "vector_figures"]
