"""Off-policy estimators on synthetic bandits whose value is known, and the Open Bandit Dataset wheel reader
on tiny wheels built here (no network)."""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from models import ope, wheels
from models.ope import BanditLog, OBDError

# the reader needs only numpy; the estimators and policies are obp's (the ope extra, in dev)
needs_obp = pytest.mark.skipif(importlib.util.find_spec("obp") is None, reason="obp 0.4.1 (the ope extra) is not installed")


def synthetic_log(n: int, theta: np.ndarray, seed: int, context_of: np.ndarray | None = None) -> BanditLog:
    """A uniform-random behaviour log: item and position drawn uniformly, click ~ Bernoulli(theta[x, a, pos])."""
    rng = np.random.default_rng(seed)
    n_x, n_actions, len_list = theta.shape
    x = rng.integers(0, n_x, n) if context_of is None else context_of
    action = rng.integers(0, n_actions, n)
    position = rng.integers(0, len_list, n)
    reward = (rng.random(n) < theta[x, action, position]).astype(np.int64)
    context = np.eye(n_x)[x]
    return BanditLog("random", "all", action, position, reward, np.full(n, 1.0 / n_actions), context, n_actions,
                     len_list)


@needs_obp
def test_ips_and_snips_are_unbiased_on_a_synthetic_bandit() -> None:
    n_actions, len_list, n = 5, 2, 100_000
    theta = np.array([[[0.05, 0.02], [0.10, 0.06], [0.20, 0.12], [0.30, 0.25], [0.40, 0.30]]])  # (1, 5, 2)
    log = synthetic_log(n, theta, seed=0)
    pi = np.array([[0.05, 0.10], [0.05, 0.20], [0.10, 0.20], [0.30, 0.20], [0.50, 0.30]])  # pi_e(a | pos), columns sum to 1
    truth = float(np.mean([(pi[:, p] * theta[0, :, p]).sum() for p in range(len_list)]))  # positions uniform
    dist = np.repeat(pi[None], n, axis=0)
    res = ope.off_policy_estimates(log, dist, np.zeros_like(dist), n_bootstrap=50, seed=1)
    w = ope.importance_weights(log, dist)
    se = float((w * log.reward).std() / np.sqrt(n))
    for name in ("ips", "snips"):
        assert abs(res[name]["estimate"] - truth) < 4 * se, (name, res[name], truth, se)
        lo, hi = res[name]["ci"]
        assert lo < res[name]["estimate"] < hi
    # the evaluation policy is far from the logging one: the estimates must move off the logged click rate
    assert abs(log.reward.mean() - truth) > 10 * se


@needs_obp
def test_dr_is_exact_when_the_reward_model_is() -> None:
    n_actions, len_list, n_x, n = 4, 3, 2, 3_000
    rng = np.random.default_rng(2)
    q = (rng.random((n_x, n_actions, len_list)) < 0.4).astype(np.float64)  # deterministic clicks: theta is 0 or 1
    x = rng.integers(0, n_x, n)
    log = synthetic_log(n, q, seed=3, context_of=x)
    pi = rng.dirichlet(np.ones(n_actions), size=(n_x, len_list)).transpose(0, 2, 1)  # (n_x, n_actions, len_list)
    dist = pi[x]
    q_hat = q[x]  # the exact reward model, every round, item and position
    truth = float(np.mean((dist[np.arange(n), :, log.position] * q_hat[np.arange(n), :, log.position]).sum(axis=1)))
    res = ope.off_policy_estimates(log, dist, q_hat, n_bootstrap=20, seed=4)
    assert res["dr"]["estimate"] == pytest.approx(truth, abs=1e-12)
    assert abs(res["ips"]["estimate"] - truth) > 1e-6  # IPS is not exact on the same rounds
    # with a reward model of zeros DR is IPS
    zero = ope.off_policy_estimates(log, dist, np.zeros_like(dist), n_bootstrap=20, seed=4)
    assert zero["dr"]["estimate"] == pytest.approx(zero["ips"]["estimate"], abs=1e-12)


@needs_obp
def test_reward_model_learns_which_items_are_clicked() -> None:
    theta = np.array([[[0.02, 0.02], [0.02, 0.02], [0.5, 0.4]]])  # item 2 is clicked far more often
    log = synthetic_log(3_000, theta, seed=5)
    q_hat = ope.fit_reward_model(log, seed=0)
    assert q_hat.shape == (3_000, 3, 2)
    assert ((q_hat >= 0) & (q_hat <= 1)).all()
    assert q_hat[:, 2, :].mean() > 5 * q_hat[:, 0, :].mean()


@needs_obp
def test_relative_error_and_the_random_policy() -> None:
    assert ope.relative_error(0.006, 0.004) == pytest.approx(0.5)
    assert ope.relative_error(0.001, 0.0) is None
    dist = ope.evaluation_action_dist("random", "all", n_actions=80, n_rounds=4)
    assert dist.shape == (4, 80, 3) and np.allclose(dist, 1 / 80)


# ---------------------------------------------------------------- the wheel

HEADER = ["", "timestamp", "item_id", "position", "click", "propensity_score", "user_feature_0", "user_feature_1",
          "user-item_affinity_0", "user-item_affinity_1"]


def _csv(rows: list[list[object]]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def _items(n: int) -> str:
    return _csv([["", "item_id", "item_feature_0", "item_feature_1"]] +
                [[i, i, 0.1 * i, f"h{i % 2}"] for i in range(n)])


def build_wheel(path: Path, logs: dict[tuple[str, str], list[list[object]]], n_items: int) -> Path:
    """A zip laid out like the obp wheel: obp/dataset/obd/{policy}/{campaign}/{campaign}.csv + item_context.csv."""
    with zipfile.ZipFile(path, "w") as z:
        for (policy, campaign), rows in logs.items():
            folder = f"obp/dataset/obd/{policy}/{campaign}"
            z.writestr(f"{folder}/{campaign}.csv", _csv([HEADER] + rows))
            z.writestr(f"{folder}/item_context.csv", _items(n_items))
    return path


TINY = [  # out of time order on purpose
    [0, "2019-11-24 00:00:40.000001+00:00", 2, 3, 0, 0.3333, "ua", "vb", 0.0, 0.0],
    [1, "2019-11-24 00:00:10.000000+00:00", 0, 1, 1, 0.3333, "ub", "va", 1.0, 0.0],
    [2, "2019-11-24 00:00:20.500000+00:00", 1, 2, 0, 0.3333, "ua", "va", 0.0, 0.0],
    [3, "2019-11-24 00:00:30.000000+00:00", 2, 1, 1, 0.3333, "uc", "vb", 0.0, 1.0],
]


def test_read_log_sorts_by_time_and_encodes_the_user_features(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "obp-0.4.1-py3-none-any.whl", {("random", "all"): TINY}, n_items=3)
    log = ope.read_log(wheel, "random", "all")
    assert log.n_rounds == 4 and log.n_actions == 3 and log.len_list == 3
    assert log.action.tolist() == [0, 1, 2, 2]  # timestamps 10, 20.5, 30, 40
    assert log.position.tolist() == [0, 1, 0, 2]
    assert log.reward.tolist() == [1, 0, 1, 0]
    assert np.allclose(log.pscore, 0.3333)
    # user_feature_0 in {ua, ub, uc} -> 2 columns (ub, uc); user_feature_1 in {va, vb} -> 1 column (vb)
    assert log.context.tolist() == [[1, 0, 0], [0, 0, 0], [0, 1, 1], [0, 0, 1]]
    fb = log.feedback()
    assert fb["n_rounds"] == 4 and fb["n_actions"] == 3 and fb["pscore"] is log.pscore
    boot = log.take(np.array([3, 3, 0]))
    assert boot.action.tolist() == [2, 2, 0] and boot.context.shape == (3, 3)


def test_read_log_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "w.whl", {("random", "all"): TINY}, n_items=3)
    with pytest.raises(OBDError, match="has no obp/dataset/obd/bts/all/all.csv"):
        ope.read_log(wheel, "bts", "all")
    with pytest.raises(OBDError, match="policy must be one of"):
        ope.read_log(wheel, "epsilon", "all")
    with pytest.raises(OBDError, match="campaign must be one of"):
        ope.read_log(wheel, "random", "kids")
    small = build_wheel(tmp_path / "small.whl", {("random", "all"): TINY}, n_items=2)  # item 2 has no row
    with pytest.raises(OBDError, match="item ids outside"):
        ope.read_log(small, "random", "all")
    (tmp_path / "broken.whl").write_bytes(b"not a zip")
    with pytest.raises(OBDError, match="not a readable wheel"):
        ope.read_log(tmp_path / "broken.whl", "random", "all")


def test_fetch_wheel_uses_the_cached_one_and_reports_a_failed_download(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(args, 1, "", "ERROR: No matching distribution found for obp==0.4.1\n")

    monkeypatch.setattr(wheels.subprocess, "run", no_network)
    with pytest.raises(OBDError, match="cannot fetch obp==0.4.1.*No matching distribution"):
        ope.fetch_wheel(tmp_path / "wheels")
    cached = tmp_path / "wheels" / "obp-0.4.1-py3-none-any.whl"
    cached.write_bytes(b"")
    assert ope.fetch_wheel(tmp_path / "wheels") == cached  # no download when it is there


def _log_rows(policy: str, n: int, n_items: int, seed: int) -> list[list[object]]:
    rng = np.random.default_rng(seed)
    rows: list[list[object]] = []
    for t in range(n):
        item = int(rng.integers(0, n_items))
        click = int(rng.random() < (0.3 if item % 4 == 0 else 0.05))
        pscore = 1.0 / n_items if policy == "random" else float(rng.uniform(0.001, 0.2))
        rows.append([t, f"2019-11-24 {t // 3600:02d}:{t // 60 % 60:02d}:{t % 60:02d}.000000+00:00", item,
                     int(rng.integers(1, 4)), click, pscore, f"u{rng.integers(0, 3)}", f"v{rng.integers(0, 2)}", 0.0, 0.0])
    return rows


@needs_obp
def test_streamrec_ope_end_to_end_on_a_synthetic_wheel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from stream_app.offline_cli import register

    n_items = 80  # the ZOZOTOWN prior of the "all" campaign has 80 items
    wheel = build_wheel(tmp_path / "obp-0.4.1-py3-none-any.whl",
                        {("random", "all"): _log_rows("random", 1200, n_items, 0),
                         ("bts", "all"): _log_rows("bts", 1000, n_items, 1)}, n_items)

    def run(argv: list[str]) -> int:
        parser = argparse.ArgumentParser(prog="streamrec")
        register(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(argv)
        return int(args.func(args))

    base = ["ope", "--wheel", str(wheel), "--runs", "2", "--bootstrap", "20", "--n-sim", "500", "--threads", "1"]
    assert run(base + ["--json"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1
    res = json.loads(lines[0])
    assert "Open Bandit Dataset" in captured.err  # the terms
    assert res["campaign"] == "all" and res["rounds"] == {"random": 1200, "bts": 1000} and res["items"] == 80
    for key, behaviour, evaluation in (("random_to_bts", "random", "bts"), ("bts_to_random", "bts", "random")):
        d = res[key]
        assert (d["behaviour"], d["evaluation"]) == (behaviour, evaluation)
        assert d["rounds"] == {"behaviour": res["rounds"][behaviour], "evaluation": res["rounds"][evaluation]}
        on = d["on_policy"]
        assert on["ci"][0] <= on["value"] <= on["ci"][1] and on["clicks"] > 0
        assert set(d["estimators"]) == {"ips", "snips", "dr"}
        for e in d["estimators"].values():
            assert e["estimate"] >= 0 and e["ci"][0] <= e["ci"][1]
            assert e["relative_error"] == pytest.approx(abs(e["estimate"] - on["value"]) / on["value"], rel=1e-4)
            assert e["relative_error_runs"]["runs"] == 2
        assert 0 < d["weights"]["effective_sample_size"] <= d["rounds"]["behaviour"]
    assert -1 <= res["random_to_bts"]["simulated_vs_logged_pscore"]["correlation"] <= 1
    assert run(["ope", "--wheel", str(wheel), "--runs", "0", "--bootstrap", "20", "--n-sim", "500"]) == 0
    text = capsys.readouterr().out
    assert "bts from the random log" in text and "random from the bts log" in text and "relative error" in text
    assert run(["ope", "--wheel", str(wheel), "--runs", "-1"]) == 2
    assert "--runs" in capsys.readouterr().err
    assert run(["ope", "--wheel", str(tmp_path / "missing.whl")]) == 2
    assert "no such file" in capsys.readouterr().err
