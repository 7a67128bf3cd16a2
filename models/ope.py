"""Off-policy estimates (IPS, SNIPS, doubly robust) checked against on-policy values on the Open Bandit Dataset.

Facts from Yuta Saito, Shunsuke Aihara, Megumi Matsutani, Yusuke Narita, "Open Bandit Dataset and
Pipeline: Towards Realistic and Reproducible Off-Policy Evaluation", NeurIPS 2021 Datasets and Benchmarks
track (arXiv:2008.07146), and from the obp 0.4.1 wheel on PyPI:

* ZOZOTOWN ran two policies side by side for 7 days in late November 2019 on three campaigns (all, men,
  women): a uniform Random policy and Bernoulli Thompson Sampling (BTS). Each row of the log is one
  impression: the item shown (the action), its position (1, 2, 3: left, centre, right), the click (the
  reward) and the true propensity of that item at that position under the policy that logged it.
* The wheel ships a 10,000-row sample of each (policy, campaign) log, ``obp/dataset/obd/{random,bts}/
  {all,men,women}/{campaign}.csv``, and ``item_context.csv`` (one row per item: 80 in "all").
* The protocol ("evaluation of OPE"): estimate the value of one policy from the other policy's log and
  compare it with its on-policy value, the mean click of its own log, by the relative estimation error
  |V_hat - V_on| / V_on; the spread of that error comes from bootstrap resamples of the behaviour log,
  the regression model refitted on each.
* The evaluated BTS is obp's ``BernoulliTS(is_zozotown_prior=True, campaign=...)``: the production
  policy's Beta parameters, its action distribution per position found by Monte Carlo simulation
  (``compute_batch_action_dist``); Random puts 1 / n_actions on every item at every position.

The estimators (``obp.ope``: InverseProbabilityWeighting, SelfNormalizedInverseProbabilityWeighting,
DoublyRobust, OffPolicyEvaluation), DR's reward model (``obp.ope.RegressionModel`` over scikit-learn's
logistic regression, one per position, cross-fitted) and the two policies come from obp 0.4.1, the
optional extra ``ope`` (``pip install -e '.[ope]'``). The CSVs are read here with csv and numpy:
obp's own loader, ``OpenBanditDataset``, fails under pandas >= 2 (``DataFrame.drop("item_feature_0", 1)``:
pandas removed the positional axis argument), and obp >= 0.5 requires Python < 3.11.

Only numpy, scikit-learn and obp here: models/ never imports stream_app.
"""

from __future__ import annotations

import csv
import io
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

OBP_WHEEL = "obp==0.4.1"
OBP_WHEEL_GLOB = "obp-0.4.1-*.whl"
OBD_IN_WHEEL = "obp/dataset/obd"
POLICIES = ("random", "bts")
CAMPAIGNS = ("all", "men", "women")
LEN_LIST = 3  # three positions in the ZOZOTOWN recommendation interface
ESTIMATORS = ("ips", "snips", "dr")
OBD_TERMS = ("Open Bandit Dataset (ZOZO, Inc.; the 10,000-row sample in the obp 0.4.1 wheel, Apache-2.0): "
             "its terms apply; cite Saito et al., arXiv:2008.07146; the full data and its terms: "
             "https://research.zozo.com/data.html")
_LOG_COLUMNS = ("timestamp", "item_id", "position", "click", "propensity_score")


class OBDError(ValueError):
    """The Open Bandit Dataset wheel cannot be fetched or read."""


@dataclass(frozen=True)
class BanditLog:
    """One policy's log of one campaign, in time order. n rows, d context columns."""

    policy: str
    campaign: str
    action: np.ndarray  # (n,) int: the item shown, in [0, n_actions)
    position: np.ndarray  # (n,) int: 0, 1, 2 (left, centre, right)
    reward: np.ndarray  # (n,) int: the click, 0 or 1
    pscore: np.ndarray  # (n,) float: the logging policy's probability of that item at that position
    context: np.ndarray  # (n, d) float: the user features one-hot, the first category of each left out
    n_actions: int
    len_list: int = LEN_LIST

    @property
    def n_rounds(self) -> int:
        return int(self.action.shape[0])

    def take(self, idx: np.ndarray) -> BanditLog:
        """The rows ``idx`` (a bootstrap resample when drawn with replacement)."""
        return replace(self, action=self.action[idx], position=self.position[idx], reward=self.reward[idx],
                       pscore=self.pscore[idx], context=self.context[idx])

    def feedback(self) -> dict[str, Any]:
        """obp's bandit feedback dictionary."""
        return {"n_rounds": self.n_rounds, "n_actions": self.n_actions, "action": self.action,
                "position": self.position, "reward": self.reward, "pscore": self.pscore, "context": self.context}


# ---------------------------------------------------------------- the wheel and its CSVs

def fetch_wheel(folder: Path, log: Callable[[str], None] | None = None) -> Path:
    """The obp 0.4.1 wheel in ``folder``, taken from PyPI with ``pip download --no-deps`` when missing."""
    from models.wheels import fetch_wheel as fetch

    return fetch(folder, OBP_WHEEL, OBP_WHEEL_GLOB, "the Open Bandit Dataset sample ships in it", OBDError, log)


def _rows(z: zipfile.ZipFile, name: str) -> tuple[list[str], list[list[str]]]:
    try:
        text = z.read(name).decode("utf-8")
    except KeyError:
        raise OBDError(f"{z.filename}: has no {name}") from None
    rows = [r for r in csv.reader(io.StringIO(text)) if r]
    if not rows:
        raise OBDError(f"{z.filename}: {name} is empty")
    return rows[0], rows[1:]


def _one_hot(values: list[str]) -> np.ndarray:
    """(n, k - 1): one column per category but the first in sorted order (as pandas' get_dummies(drop_first=True))."""
    arr = np.asarray(values)
    cats = np.unique(arr)
    return (arr[:, None] == cats[None, 1:]).astype(np.float64)


def read_log(wheel: Path, policy: str, campaign: str = "all") -> BanditLog:
    """One (policy, campaign) log out of the obp wheel: rows sorted by timestamp, positions from 0, the
    user features (``user_feature_*`` columns) one-hot as the context, n_actions from ``item_context.csv``."""
    if policy not in POLICIES:
        raise OBDError(f"policy must be one of {POLICIES}, got {policy!r}")
    if campaign not in CAMPAIGNS:
        raise OBDError(f"campaign must be one of {CAMPAIGNS}, got {campaign!r}")
    folder = f"{OBD_IN_WHEEL}/{policy}/{campaign}"
    if not Path(wheel).is_file():
        raise OBDError(f"{wheel}: no such file")
    try:
        with zipfile.ZipFile(wheel) as z:
            header, body = _rows(z, f"{folder}/{campaign}.csv")
            _, items = _rows(z, f"{folder}/item_context.csv")
    except zipfile.BadZipFile as exc:
        raise OBDError(f"{wheel}: not a readable wheel ({exc}); delete it to fetch it again") from None
    col = {name: i for i, name in enumerate(header)}
    missing = [c for c in _LOG_COLUMNS if c not in col]
    if missing:
        raise OBDError(f"{folder}/{campaign}.csv: no column {', '.join(missing)}")
    if not body:
        raise OBDError(f"{folder}/{campaign}.csv: no rows")
    # ISO-8601 strings with one UTC offset: their lexical order is their time order
    body.sort(key=lambda r: r[col["timestamp"]])
    try:
        action = np.array([int(r[col["item_id"]]) for r in body], dtype=np.int64)
        position = np.array([int(r[col["position"]]) for r in body], dtype=np.int64) - 1
        reward = np.array([int(float(r[col["click"]])) for r in body], dtype=np.int64)
        pscore = np.array([float(r[col["propensity_score"]]) for r in body], dtype=np.float64)
    except (ValueError, IndexError) as exc:
        raise OBDError(f"{folder}/{campaign}.csv: unreadable row ({exc})") from None
    n_actions = len(items)
    if action.min() < 0 or action.max() >= n_actions:
        raise OBDError(f"{folder}/{campaign}.csv: item ids outside [0, {n_actions}) of item_context.csv")
    if position.min() < 0 or position.max() >= LEN_LIST:
        raise OBDError(f"{folder}/{campaign}.csv: positions outside 1..{LEN_LIST}")
    if not ((pscore > 0) & (pscore <= 1)).all():
        raise OBDError(f"{folder}/{campaign}.csv: propensity scores outside (0, 1]")
    users = sorted(c for c in header if c.startswith("user_feature"))
    parts = [_one_hot([r[col[c]] for r in body]) for c in users]
    context = np.hstack(parts) if parts else np.zeros((len(body), 0))
    if context.shape[1] == 0:  # a log whose user features never vary: one constant column for the model
        context = np.ones((len(body), 1))
    return BanditLog(policy, campaign, action, position, reward, pscore, context, n_actions)


# ---------------------------------------------------------------- estimators (obp)

def _obp() -> Any:
    try:
        import obp.ope
        import obp.policy
        import obp.utils
    except ImportError as exc:
        raise RuntimeError(f"off-policy estimates need obp 0.4.1: pip install -e '.[ope]' ({exc})") from None
    return obp


def _estimators() -> list[Any]:
    ope = _obp().ope
    return [ope.InverseProbabilityWeighting(estimator_name="ips"),
            ope.SelfNormalizedInverseProbabilityWeighting(estimator_name="snips"),
            ope.DoublyRobust(estimator_name="dr")]


def evaluation_action_dist(policy: str, campaign: str, n_actions: int, n_rounds: int, len_list: int = LEN_LIST,
                           n_sim: int = 100_000, seed: int = 12345) -> np.ndarray:
    """(n_rounds, n_actions, len_list): the evaluation policy's probability of each item at each position.

    ``random``: 1 / n_actions everywhere. ``bts``: Bernoulli TS with the ZOZOTOWN production prior of the
    campaign, simulated ``n_sim`` times (context-free, so every round gets the same distribution)."""
    pol = _obp().policy
    if policy == "random":
        return pol.Random(n_actions=n_actions, len_list=len_list, random_state=seed).compute_batch_action_dist(
            n_rounds=n_rounds)
    if policy != "bts":
        raise OBDError(f"policy must be one of {POLICIES}, got {policy!r}")
    bts = pol.BernoulliTS(n_actions=n_actions, len_list=len_list, is_zozotown_prior=True, campaign=campaign,
                          random_state=seed)
    if len(bts.alpha) != n_actions:
        raise OBDError(f"the ZOZOTOWN prior of {campaign!r} has {len(bts.alpha)} items, the log {n_actions}")
    one = bts.compute_batch_action_dist(n_rounds=1, n_sim=n_sim)
    return np.repeat(one, n_rounds, axis=0)


def fit_reward_model(log: BanditLog, seed: int = 12345, n_folds: int = 3) -> np.ndarray:
    """(n, n_actions, len_list): P(click | user context, item, position) for every round, item and position,
    by obp's RegressionModel (logistic regression on the context and the item one-hot, one per position),
    each round predicted by the model of the folds it is not in (``n_folds`` > 1)."""
    from sklearn.linear_model import LogisticRegression

    model = _obp().ope.RegressionModel(n_actions=log.n_actions, len_list=log.len_list,
                                       base_model=LogisticRegression(max_iter=1000, random_state=seed))
    return model.fit_predict(context=log.context, action=log.action, reward=log.reward, pscore=log.pscore,
                             position=log.position, n_folds=n_folds, random_state=seed)


def importance_weights(log: BanditLog, action_dist: np.ndarray) -> np.ndarray:
    """(n,): pi_e(a_t | position_t) / pscore_t for every logged round."""
    return action_dist[np.arange(log.n_rounds), log.action, log.position] / log.pscore


def off_policy_estimates(log: BanditLog, action_dist: np.ndarray, reward_model: np.ndarray, n_bootstrap: int = 1000,
                         alpha: float = 0.05, seed: int = 12345) -> dict[str, dict[str, Any]]:
    """Each estimator's value of the evaluation policy ``action_dist`` on the behaviour ``log``, with the
    (1 - alpha) bootstrap interval of the rounds (the reward model held fixed)."""
    ope = _obp().ope.OffPolicyEvaluation(bandit_feedback=log.feedback(), ope_estimators=_estimators())
    values = ope.estimate_policy_values(action_dist=action_dist, estimated_rewards_by_reg_model=reward_model)
    intervals = ope.estimate_intervals(action_dist=action_dist, estimated_rewards_by_reg_model=reward_model,
                                       alpha=alpha, n_bootstrap_samples=n_bootstrap, random_state=seed)
    return {name: {"estimate": float(values[name]), "ci": _ci(intervals[name], alpha)} for name in ESTIMATORS}


def _ci(interval: dict[str, float], alpha: float) -> list[float]:
    level = 100 * (1.0 - alpha)
    return [float(interval[f"{level}% CI (lower)"]), float(interval[f"{level}% CI (upper)"])]


def on_policy_value(log: BanditLog, n_bootstrap: int = 1000, alpha: float = 0.05, seed: int = 12345) -> dict[str, Any]:
    """The mean click of a policy's own log, with its (1 - alpha) bootstrap interval."""
    interval = _obp().utils.estimate_confidence_interval_by_bootstrap(
        samples=log.reward.astype(np.float64), alpha=alpha, n_bootstrap_samples=n_bootstrap, random_state=seed)
    return {"value": float(log.reward.mean()), "ci": _ci(interval, alpha), "clicks": int(log.reward.sum())}


def relative_error(estimate: float, truth: float) -> float | None:
    """|estimate - truth| / truth (None for a truth of 0)."""
    return abs(estimate - truth) / truth if truth else None


def compare(behaviour: BanditLog, evaluation: BanditLog, action_dist: np.ndarray, runs: int = 20,
            n_bootstrap: int = 1000, alpha: float = 0.05, seed: int = 12345) -> dict[str, Any]:
    """Estimate ``evaluation``'s policy (``action_dist``, one row per round of ``behaviour``) from the
    ``behaviour`` log and compare with its on-policy value: each estimator's estimate, interval and
    relative error on the whole log, then the mean and standard deviation of the relative error over
    ``runs`` bootstrap resamples of the behaviour log (the reward model refitted on each)."""
    truth = on_policy_value(evaluation, n_bootstrap, alpha, seed)
    estimates = off_policy_estimates(behaviour, action_dist, fit_reward_model(behaviour, seed), n_bootstrap, alpha, seed)
    for est in estimates.values():
        est["relative_error"] = relative_error(est["estimate"], truth["value"])
    rng = np.random.default_rng(seed)
    errors: dict[str, list[float]] = {name: [] for name in ESTIMATORS}
    for k in range(runs):
        idx = rng.integers(0, behaviour.n_rounds, behaviour.n_rounds)
        boot = behaviour.take(idx)
        ope = _obp().ope.OffPolicyEvaluation(bandit_feedback=boot.feedback(), ope_estimators=_estimators())
        values = ope.estimate_policy_values(action_dist=action_dist[idx],
                                            estimated_rewards_by_reg_model=fit_reward_model(boot, seed + k + 1))
        for name in ESTIMATORS:
            err = relative_error(float(values[name]), truth["value"])
            if err is not None:
                errors[name].append(err)
    for name in ESTIMATORS:
        e = np.asarray(errors[name])
        estimates[name]["relative_error_runs"] = (
            {"mean": float(e.mean()), "std": float(e.std(ddof=1)) if len(e) > 1 else 0.0, "runs": len(e)}
            if len(e) else None)
    w = importance_weights(behaviour, action_dist)
    return {"behaviour": behaviour.policy, "evaluation": evaluation.policy,
            "rounds": {"behaviour": behaviour.n_rounds, "evaluation": evaluation.n_rounds},
            "on_policy": truth, "estimators": estimates,
            "weights": {"mean": float(w.mean()), "max": float(w.max()),
                        "effective_sample_size": float(w.sum() ** 2 / (w ** 2).sum())}}


def obd_check(wheel: Path, campaign: str = "all", runs: int = 20, n_bootstrap: int = 1000, n_sim: int = 100_000,
              alpha: float = 0.05, seed: int = 12345) -> dict[str, Any]:
    """Both directions on one campaign: Bernoulli TS estimated from the Random log, Random from the BTS log."""
    logs = {p: read_log(wheel, p, campaign) for p in POLICIES}
    n_actions = logs["random"].n_actions
    if logs["bts"].n_actions != n_actions:
        raise OBDError(f"{campaign}: the Random log has {n_actions} items, the BTS log {logs['bts'].n_actions}")
    bts_dist = evaluation_action_dist("bts", campaign, n_actions, 1, n_sim=n_sim, seed=seed)[0]  # (n_actions, len_list)
    rnd, bts = logs["random"], logs["bts"]
    to_bts = compare(rnd, bts, np.repeat(bts_dist[None], rnd.n_rounds, axis=0), runs, n_bootstrap, alpha, seed)
    # how far the simulated production BTS is from the propensities the BTS log records (they move in time)
    sim = bts_dist[bts.action, bts.position]
    to_bts["simulated_vs_logged_pscore"] = {"correlation": float(np.corrcoef(sim, bts.pscore)[0, 1]),
                                            "median_ratio": float(np.median(sim / bts.pscore))}
    to_random = compare(bts, rnd, evaluation_action_dist("random", campaign, n_actions, bts.n_rounds, seed=seed),
                        runs, n_bootstrap, alpha, seed)
    return _rounded({"campaign": campaign, "wheel": Path(wheel).name,
            "rounds": {p: logs[p].n_rounds for p in POLICIES}, "items": n_actions,
            "settings": {"runs": runs, "bootstrap": n_bootstrap, "alpha": alpha, "n_sim": n_sim, "seed": seed,
                         "reward_model": "obp RegressionModel, logistic regression per position, 3-fold cross-fitting"},
            "random_to_bts": to_bts, "bts_to_random": to_random, "terms": OBD_TERMS})


def _rounded(obj: Any, digits: int = 6) -> Any:
    """Floats to ``digits`` significant digits, all the way down (the figures carry no more)."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}")
    if isinstance(obj, dict):
        return {k: _rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v, digits) for v in obj]
    return obj
