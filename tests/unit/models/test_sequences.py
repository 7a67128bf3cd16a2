"""User sequences (the S3-Rec format): reading, the leave-one-out protocol, attributes in the network."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint
from models.data import DataError, read_tsv
from models.features import AttributePool, ItemAttributes, read_attributes
from models.rnn import ModelConfig, SessionRNN
from models.sequences import (
    PopularityModel,
    evaluate_sequence_checkpoint,
    evaluate_sequences,
    hr_ndcg,
    prepare_sequences,
    read_sequences,
    score_last,
    train_sequences,
)
from stream_app.offline_cli import main as offline_main

TINY = {"hidden": 16, "batch_size": 8, "negatives": 16, "epochs": 12, "lr": 0.1}


def write_set(tmp: Path, lines: list[str], attrs: dict[str, list[int]] | None = None) -> tuple[Path, Path | None]:
    seq = tmp / "S.txt"
    seq.write_text("\n".join(lines) + "\n")
    if attrs is None:
        return seq, None
    att = tmp / "S_item2attributes.json"
    att.write_text(json.dumps(attrs))
    return seq, att


def group_world(tmp: Path, cold: bool) -> tuple[Path, Path]:
    """8 groups of 5 items; each user walks group g, g+1, ... picking any item of the group.

    With ``cold`` the first item of every group is every user's last item and
    occurs nowhere else: it has no training clicks, only its attribute (the group).
    """
    rng = np.random.default_rng(7)
    lines = []
    for u in range(240):
        g = int(rng.integers(8))
        items = []
        for t in range(6):
            pick = 0 if cold and t == 5 else int(rng.integers(1 if cold else 0, 5))
            items.append(1 + ((g + t) % 8) * 5 + pick)
        lines.append(" ".join(map(str, [u + 1] + items)))
    attrs = {str(i): [100 + (i - 1) // 5] for i in range(1, 41)}
    seq, att = write_set(tmp, lines, attrs)
    return seq, att  # type: ignore[return-value]


def test_read_codes_items_users_and_attributes(tmp_path: Path) -> None:
    seq, att = write_set(tmp_path, ["u1 10 2 10", "u2 2 30"], {"2": [5, 5, 7], "10": [7], "99": [1]})
    data = read_sequences(seq, att)
    assert data.users == ["u1", "u2"] and data.item_ids == ["2", "10", "30"]  # numeric order, all items
    assert data.seqs.items.tolist() == [1, 0, 1, 0, 2] and data.seqs.offsets.tolist() == [0, 3, 5]
    a = data.attributes
    assert a is not None and a.names == ["5", "7"]  # first appearance over the vocabulary; item 99 ignored
    assert a.flat.tolist() == [0, 1, 1] and a.offsets.tolist() == [0, 2, 3, 3]  # repeats kept once, "30" has none
    assert data.train_part(1).items.tolist() == [1, 0, 0] and data.train_part(1).offsets.tolist() == [0, 2, 3]
    assert data.counts(1).tolist() == [2, 1, 0]


@pytest.mark.parametrize("reader, text, msg", [
    (read_sequences, "u1\n", "at least one item"), (read_sequences, "u1 1 2\nu1 3 4\n", "more than one line"),
    (read_sequences, "\n", "no user"), (read_attributes, "[1, 2]", "expected an object"),
    (read_attributes, '{"1": 3}', "must be a list"), (read_attributes, "{", "not JSON"),
])
def test_bad_files_say_why(tmp_path: Path, reader, text: str, msg: str) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "bad"
    p.write_text(text)
    with pytest.raises(DataError, match=msg):
        reader(p)


def test_protocol_ranks_exclude_history_and_cut_inputs(tmp_path: Path) -> None:
    # popularity over training parts (holdout 1): item 1 x3, item 2 x2, item 3 x1, others 0
    seq, _ = write_set(tmp_path, ["a 1 2 3 4", "b 1 2 1", "c 3 1 2 5 2", "d 5 6"])
    data = read_sequences(seq)
    ranks, users = score_last(PopularityModel(data.counts(1)), data, holdout=1)
    # a: history {1,2,3} excluded -> 4 (count 0) ranks behind 5 and 6 only by the tie-break
    # b: target 1 is in the history: a miss (ranked last); c: target 2 in history too; d: target 6
    assert users.tolist() == [0, 1, 2, 3]
    assert ranks[1] == data.n_items and ranks[2] == data.n_items
    assert ranks[0] <= 3 and 1 <= ranks[3] <= data.n_items - 1
    m = hr_ndcg(np.array([1, 3, 30]))
    assert m["hr@5"] == pytest.approx(2 / 3) and m["ndcg@5"] == pytest.approx((1 + 1 / np.log2(4)) / 3)


def test_inputs_right_aligned_and_cut(tmp_path: Path) -> None:
    """A network's state after the protocol's loop equals stepping the last max_len inputs one by one."""
    seq, _ = write_set(tmp_path, ["a 1 2 3 4 5 6", "b 4 5"])
    data = read_sequences(seq)
    torch.manual_seed(0)
    model = SessionRNN(ModelConfig(n_items=data.n_items, hidden=8)).eval()
    seen: list[torch.Tensor] = []

    class Spy:
        def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
            return getattr(model, name)

        def score(self, state: torch.Tensor) -> torch.Tensor:
            seen.append(state.clone())
            return model.score(state)

    score_last(Spy(), data, holdout=1, max_len=3)
    with torch.no_grad():
        ref = model.zero_state(1)
        for i in (2, 3, 4):  # items "3 4 5" coded 2, 3, 4: the last three before the target
            ref, _ = model.step(ref, torch.tensor([i]))
        ref_b, _ = model.step(model.zero_state(1), torch.tensor([3]))
    assert torch.allclose(seen[0][0], ref[0], atol=1e-6) and torch.allclose(seen[0][1], ref_b[0], atol=1e-6)


@pytest.mark.parametrize("constrained, pooling", [(True, "mean"), (False, "idf")])
def test_folded_network_gives_the_same_outputs(constrained: bool, pooling: str) -> None:
    attrs = ItemAttributes.build([str(i) for i in range(12)], {str(i): [i % 3, 5 + i % 2] for i in range(10)})
    cfg = ModelConfig(n_items=12, hidden=8, constrained=constrained, attributes=attrs.n_attributes,
                      attribute_links=len(attrs.flat), attribute_pooling=pooling)
    model = SessionRNN(cfg).eval()
    model.load_attributes(attrs)
    for pool in (model.attr_out, model.attr_in):
        if pool is not None:
            torch.nn.init.normal_(pool.weight)
    plain = model.folded()
    assert plain.attr_out is None and plain.config.attributes == 0
    state, items = torch.randn(4, model.state_size), torch.tensor([0, 3, 10, 11])
    with torch.no_grad():
        a, b = model.step(state, items), plain.step(state, items)
    assert torch.allclose(a[0], b[0], atol=1e-6) and torch.allclose(a[1], b[1], atol=1e-5)


def test_pool_means_attributes_and_zeros_items_without() -> None:
    attrs = ItemAttributes.build(["a", "b", "c"], {"a": [1, 2], "c": [2]})
    pool = AttributePool(attrs.n_attributes, len(attrs.flat), 3, 4)
    pool.load_attributes(attrs)
    w = pool.weight.detach()
    out = pool(torch.tensor([2, 0, 1])).detach()
    assert torch.allclose(out[0], w[1]) and torch.allclose(out[1], (w[0] + w[1]) / 2) and torch.all(out[2] == 0)
    assert torch.allclose(pool.all().detach()[[2, 0, 1]], out)
    pool.load_attributes(attrs, "idf")  # attribute "2" is on both items, "1" on one: "1" weighs more
    w1, w2 = np.log1p(3 / 1), np.log1p(3 / 2)
    assert torch.allclose(pool(torch.tensor([0])).detach()[0], (w1 * w[0] + w2 * w[1]) / (w1 + w2), atol=1e-6)


def test_attributes_reach_items_without_clicks(tmp_path: Path) -> None:
    """Cold items (clicked only as test targets) are found through their group attribute, not without it."""
    seq, att = group_world(tmp_path, cold=True)
    res = {}
    for use in (True, False):
        out = tmp_path / f"m{int(use)}.pt"
        train_sequences(str(seq), str(out), str(att) if use else None, overrides=dict(TINY), progress=False, log=None)
        res[use] = evaluate_sequence_checkpoint(str(out), str(seq))
    assert res[True]["hr@5"] > 0.5 > res[False]["hr@5"] + 0.2, res


def test_checkpoint_carries_attributes_and_serves_folded(tmp_path: Path) -> None:
    seq, att = group_world(tmp_path, cold=False)
    out = tmp_path / "m.pt"
    _, meta = train_sequences(str(seq), str(out), str(att), overrides={**TINY, "epochs": 2}, progress=False, log=None)
    ckpt = load_checkpoint(out)
    assert ckpt.version == meta["version"] and ckpt.model.attr_out is None
    assert ckpt.network is not None and ckpt.network.attr_out is not None
    assert ckpt.meta["attributes"]["names"][:2] == ["100", "101"]
    direct = evaluate_sequences(ckpt.network, read_sequences(seq))
    assert direct["hr@20"] == pytest.approx(evaluate_sequence_checkpoint(str(out), str(seq))["hr@20"], abs=1e-9)


def test_cli_train_evaluate_prepare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seq, att = group_world(tmp_path, cold=False)
    ck = tmp_path / "m.pt"
    assert offline_main(["train", "--sequences", str(seq), "--item-attributes", str(att), "--out", str(ck),
                         "--epochs", "2", "--hidden", "16", "--quiet", "--validate"]) == 0
    capsys.readouterr()
    assert offline_main(["evaluate", str(ck), "--sequences", str(seq), "--json", "--baselines"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert {"hr@5", "hr@10", "hr@20", "ndcg@5", "ndcg@10", "ndcg@20"} <= set(res) and res["users"] == 240
    assert res["attributes"] is True and "popularity" in res["baselines"]
    assert res["lists"]["miscalibration@20"] is not None and 0 < res["lists"]["coverage@20"] <= 1
    assert offline_main(["evaluate", str(ck), "--sequences", str(seq), "--json", "--rerank", "calibration=0.5"]) == 0
    shaped = json.loads(capsys.readouterr().out)["lists"]
    assert shaped["miscalibration@20"] <= res["lists"]["miscalibration@20"] + 1e-9
    assert {"hr@5", "hr@20", "ndcg@20", "mrr@20"} <= set(shaped)
    assert offline_main(["train", str(seq), "--sequences", str(seq), "--out", str(ck)]) == 2
    assert "either TRAIN_TSV or --sequences" in capsys.readouterr().err
    assert offline_main(["prepare", "--sequences", str(seq), "--item-attributes", str(att), "--out-dir", str(tmp_path / "p")]) == 0
    full = read_tsv(tmp_path / "p" / "sequences.tsv")
    assert len(full) == 240 * 6 and len(read_tsv(tmp_path / "p" / "train_full.tsv")) == 240 * 5


def test_prepare_keeps_order_as_time(tmp_path: Path) -> None:
    seq, _ = write_set(tmp_path, ["u 3 1 2", "v 2 2"])
    prepare_sequences(str(seq), str(tmp_path / "o"))
    log = read_tsv(tmp_path / "o" / "sequences.tsv")
    assert log.session.tolist() == ["u"] * 3 + ["v"] * 2 and log.item.tolist() == ["3", "1", "2", "2", "2"]
    assert log.time.tolist() == [0, 1, 2, 0, 1]


def test_coldstart_ranks_held_out_items_by_their_attributes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seq, att = group_world(tmp_path, cold=False)
    assert offline_main(["coldstart", "--sequences", str(seq), "--item-attributes", str(att), "--share", "0.25",
                         "--epochs", "12", "--hidden", "16", "--batch-size", "8", "--negatives", "16", "--lr", "0.1",
                         "--json", "--quiet"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["held_out_items"] == 10 and res["users"] > 20
    # the held-out targets have no clicks: only the attribute part can find them
    assert res["network"]["hr@20"] > res["network_without_attributes"]["hr@20"] + 0.3, res
    among = res["network"]["among_held_out"]
    assert among["hr@5"] >= res["network"]["hr@5"] and among["hr@5"] > res["popularity"]["among_held_out"]["hr@5"]


def test_worker_core_serves_an_attribute_checkpoint(tmp_path: Path) -> None:
    """The stream core takes a checkpoint trained with attributes as it is: its lists are the network's top-k."""
    from stream_app.core.recommender import Incoming, Policy, Recommender
    from stream_app.core.records import Click, Source

    seq, att = group_world(tmp_path, cold=True)
    out = tmp_path / "m.pt"
    train_sequences(str(seq), str(out), str(att), overrides={**TINY, "epochs": 3}, progress=False, log=None)
    ckpt = load_checkpoint(out)
    rec = Recommender(ckpt.model, ckpt.item_ids, np.asarray(ckpt.item_counts, dtype=np.float32), ckpt.version,
                      Policy(k=5, exclude_clicked=False))
    got = rec.process([Incoming(Click("u", "7", 10.0), Source("clicks", 0, 0, 10.0), None)], now=10.0)[0]
    net = ckpt.network
    assert net is not None
    with torch.no_grad():
        _, scores = net.step(net.zero_state(1), torch.tensor([ckpt.item_index["7"]]))
    want = [ckpt.item_ids[j] for j in torch.topk(scores[0], 5).indices.tolist()]
    assert list(got.recommendation.items) == want


def test_click_log_training_takes_attributes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`streamrec train TSV --item-attributes F`: the checkpoint can give new items vectors (the live catalogue)."""
    seq, att = group_world(tmp_path, cold=False)
    prepare_sequences(str(seq), str(tmp_path / "p"))
    ck = tmp_path / "m.pt"
    assert offline_main(["train", str(tmp_path / "p" / "train_full.tsv"), "--item-attributes", str(att),
                         "--out", str(ck), "--epochs", "1", "--hidden", "16", "--quiet"]) == 0
    ckpt = load_checkpoint(ck)
    assert ckpt.network is not None and ckpt.network.attr_out is not None and ckpt.model.attr_out is None
    names = ckpt.meta["attributes"]["names"]
    out, inp, _ = ckpt.network.new_item_vectors([[names.index("103")]])
    assert out.shape == (1, ckpt.model.out_emb.shape[1]) and torch.isfinite(inp).all()
    with torch.no_grad():  # a new item of group 103 gets exactly the attribute part of that group's items
        assert torch.allclose(out[0], ckpt.network.attr_out.all()[ckpt.item_index["16"]], atol=1e-6)
