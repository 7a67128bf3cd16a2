"""The offline sub-commands end to end on tiny data (in-process, via register())."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from stream_app.offline_cli import register


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="streamrec")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_register_adds_subcommands() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    register(sub)
    assert {"train", "evaluate", "prepare", "tune", "report"} <= set(sub.choices)


def test_train_evaluate_report(tmp_path: Path, cyclic_tsv: Path, cyclic_test_tsv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tmp_path / "m.pt"
    assert run(["train", str(cyclic_tsv), "--out", str(ckpt), "--epochs", "3", "--hidden", "16", "--batch-size", "8",
                "--negatives", "4", "--constrained", "--threads", "1", "--quiet", "--lr", "0.1"]) == 0
    out = capsys.readouterr().out
    assert str(ckpt) in out and "training" in out
    assert run(["evaluate", str(ckpt), str(cyclic_test_tsv), "--json", "--baselines"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert {"recall@20", "mrr@20", "ndcg@20", "standard", "baselines"} <= set(res)
    assert set(res["baselines"]) == {"popularity", "markov"}
    assert {"coverage@20", "gini@20", "tail_share@20", "novelty@20", "ild@20"} <= set(res["lists"])
    assert run(["evaluate", str(ckpt), str(cyclic_test_tsv), "--json", "--rerank", "mmr=0.2,long_tail=0.3",
                "--candidates", "10"]) == 0
    shaped = json.loads(capsys.readouterr().out)["lists"]
    assert 0.0 <= shaped["hr@20"] <= 1.0 and shaped["coverage@20"] > 0
    assert run(["evaluate", str(ckpt), str(cyclic_test_tsv), "--rerank", "spice=1"]) == 2
    assert "--rerank" in capsys.readouterr().err
    assert run(["report", str(ckpt), str(cyclic_test_tsv), "--out", str(tmp_path / "rep")]) == 0
    for f in ("index.html", "recall_at_k.png", "mrr_at_k.png", "loss.png"):
        assert (tmp_path / "rep" / f).stat().st_size > 0


@pytest.mark.parametrize("attributes", [False, True])
def test_report_tradeoff(tmp_path: Path, cyclic_tsv: Path, cyclic_test_tsv: Path, capsys: pytest.CaptureFixture[str],
                         attributes: bool) -> None:
    ckpt = tmp_path / "m.pt"
    extra = []
    if attributes:  # two attribute groups: even and odd item ids
        (tmp_path / "attrs.json").write_text(json.dumps({str(1000 + i): [i % 2] for i in range(12)}))
        extra = ["--item-attributes", str(tmp_path / "attrs.json")]
    assert run(["train", str(cyclic_tsv), "--out", str(ckpt), "--epochs", "1", "--hidden", "8", "--batch-size", "8",
                "--negatives", "4", "--threads", "1", "--quiet", *extra]) == 0
    rep = tmp_path / "rep"
    assert run(["report", str(ckpt), str(cyclic_test_tsv), "--out", str(rep), "--tradeoff", "--strengths", "0,0.3",
                "--candidates", "10"]) == 0
    for f in ("tradeoff_coverage.png", "tradeoff_ild.png", "index.html", "recall_at_k.png"):
        assert (rep / f).stat().st_size > 0
    data = json.loads((rep / "tradeoff.json").read_text())
    points = data["points"]
    settings = ["mmr", "calibration", "long_tail"] if attributes else ["mmr", "long_tail"]
    assert [(p["setting"], p["strength"]) for p in points] == [(s, v) for s in settings for v in (0.0, 0.3)]
    page = (rep / "index.html").read_text()
    assert "tradeoff_ild.png" in page and "tail share@20" in page
    # without item attributes calibration is skipped, and the page says so
    assert ("calibration skipped" in page) == (not attributes)
    assert any("calibration skipped" in n for n in data["notes"]) == (not attributes)
    zero = [{k: v for k, v in p.items() if k != "setting"} for p in points if p["strength"] == 0]
    assert len(zero) == len(settings) and all(z == zero[0] for z in zero)  # one accuracy-only run, every curve's start
    for p in points:
        assert 0.0 <= p["hr@20"] <= 1.0 and 0.0 < p["coverage@20"] <= 1.0 and p["ild@20"] is not None
        assert (p["miscalibration@20"] is not None) == attributes
    assert run(["report", str(ckpt), str(cyclic_test_tsv), "--out", str(rep), "--tradeoff", "--strengths", "1.2"]) == 2
    assert "--strengths" in capsys.readouterr().err


def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_text("garbage")
    assert run(["evaluate", str(bad), str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1
    assert run(["train", str(tmp_path / "none.tsv"), "--out", str(tmp_path / "x.pt")]) == 2


def test_prepare_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = tmp_path / "log.csv"
    raw.write_text("user,item,time\n" + "".join(f"u{u},i{(u + j) % 4},{u * 5000 + j * 10}\n" for u in range(40) for j in range(3)))
    assert run(["prepare", str(raw), "--out-dir", str(tmp_path / "p"), "--min-item-support", "2"]) == 0
    assert (tmp_path / "p" / "train_valid.tsv").is_file()


def test_tune_writes_loadable_preset(tmp_path: Path, cyclic_tsv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("optuna")
    args = ["tune", str(cyclic_tsv), "--out-dir", str(tmp_path / "t"), "--name", "tiny", "--presets-dir",
            str(tmp_path / "presets"), "--trials", "2", "--epochs", "1", "--threads", "1"]
    assert run(args) == 0
    preset = tmp_path / "presets" / "tiny.json"
    assert json.loads(preset.read_text())["config"]["epochs"] == 1
    assert run(args) == 0  # resumes: the study already has its 2 trials
    ckpt = tmp_path / "m.pt"
    assert run(["train", str(cyclic_tsv), "--out", str(ckpt), "--preset", str(preset), "--quiet",
                "--hidden", "8", "--batch-size", "8", "--negatives", "4"]) == 0
