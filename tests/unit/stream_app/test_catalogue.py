"""The live catalogue in the core: record validation, switched-off items, items added after training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.features import ItemAttributes
from models.rnn import ModelConfig, SessionRNN
from stream_app.core.catalogue import REASONS, ItemRecord, decode_item, state_code
from stream_app.core.ranking import AnnRanker, ExactRanker
from stream_app.core.recommender import Incoming, Policy, Recommender
from stream_app.core.records import Click, Source
from stream_app.core.state import decode
from stream_app.errors import InvalidRecord

N = 12
ATTRS = {str(i): [f"c{i % 3}", f"b{i % 4}"] for i in range(N)}


def network(seed: int = 0) -> SessionRNN:
    torch.manual_seed(seed)
    attrs = ItemAttributes.build([str(i) for i in range(N)], ATTRS)
    cfg = ModelConfig(n_items=N, hidden=8, constrained=False, attributes=attrs.n_attributes,
                      attribute_links=len(attrs.flat), attribute_pooling="idf")
    net = SessionRNN(cfg).eval()
    net.load_attributes(attrs)
    for pool in (net.attr_out, net.attr_in):
        torch.nn.init.normal_(pool.weight)
    with torch.no_grad():
        net.out_bias.normal_()
    return net


def recommender(net: SessionRNN, k: int = N + 5, attributes: bool = True, **policy: object) -> Recommender:
    attrs = ItemAttributes.build([str(i) for i in range(N)], ATTRS)
    return Recommender(net.folded(), [str(i) for i in range(N)], np.arange(N, 0, -1, dtype=np.float32), "v1",
                       Policy(k=k, **policy), attributes=(attrs.names, net.new_item_vectors) if attributes else None)


def click(rec: Recommender, item: str, offset: int, blob: bytes | None = None, user: str = "u") -> tuple:
    out = rec.process([Incoming(Click(user, item, 10.0 + offset), Source("clicks", 0, offset, 10.0), blob)],
                      now=10.0 + offset)[0]
    return out.recommendation, out.state_blob


@pytest.mark.parametrize("value, reason", [
    (b"not json", "not_json"), (b"[1]", "not_object"), (b'{"attributes": "c1"}', "bad_type"),
    (b'{"attributes": [true]}', "bad_type"), (b'{"available": "yes"}', "bad_type"),
    (b'{"item_id": "other"}', "key_mismatch"), (b'{"available": true, "available": false}', "duplicate_key"),
    (b"\xff", "not_utf8"), (b'{"attributes": [""]}', "bad_value"), (b"{" + b" " * 9000 + b"}", "too_large"),
])
def test_bad_catalogue_records_have_a_reason(value: bytes, reason: str) -> None:
    with pytest.raises(InvalidRecord) as err:
        decode_item(b"i1", value, max_bytes=8192)
    assert err.value.reason == reason and reason in REASONS
    with pytest.raises(InvalidRecord, match="missing_key"):
        decode_item(None, b"{}", max_bytes=8192)


def test_good_records_and_tombstones() -> None:
    assert decode_item(b"i1", b'{"attributes": ["c1", 7, "c1"], "title": "x"}', max_bytes=99) == \
        ItemRecord("i1", ("c1", "7"), True, False)
    assert decode_item(b"i1", b'{"available": false}', max_bytes=99) == ItemRecord("i1", (), False, False)
    assert decode_item(b"i1", None, max_bytes=99) == ItemRecord("i1", (), False, True)


def test_a_new_item_is_ranked_and_clicked_through_its_attributes() -> None:
    net = network()
    rec = recommender(net)
    done = rec.apply_catalogue([ItemRecord("new", ("c1", "b2")), ItemRecord("odd", ("zz",))])
    assert done.added == [N] and done.no_vector == 1 and rec.catalogue.counts()["no_vector"] == 1
    got, blob = click(rec, "4", 0)
    # reference: one exact product over the trained table and the new item's attribute vector (bias 0)
    out_new, in_new, b_new = net.new_item_vectors([[rec.catalogue.attribute_index["c1"],
                                                    rec.catalogue.attribute_index["b2"]]])
    b = net.out_bias.detach()  # the new item's bias: the mean of its attributes' mean trained bias
    peers = (b[[i for i in range(N) if i % 3 == 1]].mean() + b[[i for i in range(N) if i % 4 == 2]].mean()) / 2
    assert torch.allclose(b_new[0], peers, atol=1e-6)
    plain = net.folded()
    with torch.no_grad():
        h, _ = plain.step(plain.zero_state(1), torch.tensor([4]))
        scores = torch.cat([plain.score(h)[0], (plain.output_vector(h) @ out_new.t())[0] + b_new])
    scores[4] = float("-inf")
    want = [([str(i) for i in range(N)] + ["new"])[j] for j in torch.topk(scores, N).indices.tolist()]
    assert list(got.items) == want and "new" in got.items
    # clicking the new item steps the state with its attribute input vector
    got2, blob2 = click(rec, "new", 1, blob)
    state = decode(blob2)
    with torch.no_grad():
        h2, _ = plain.advance(h, in_new)
    assert np.allclose(state.hidden, h2[0].numpy(), atol=1e-5)
    assert "new" not in got2.items and state.recent[-1] == state_code("new")  # stored by its stable code
    # another worker that saw the catalogue in another order reads the same state
    other = recommender(net)
    other.apply_catalogue([ItemRecord("zeta", ("c0",)), ItemRecord("new", ("c1", "b2"))])
    got3, _ = click(other, "7", 2, blob2)
    assert "new" not in got3.items and "zeta" in got3.items  # "new" is still one of the recent clicks


def test_unavailable_items_leave_every_list_and_come_back() -> None:
    rec = recommender(network(), k=5)
    first, blob = click(rec, "4", 0)
    gone = first.items[0]
    rec.apply_catalogue([ItemRecord(gone, (), False), ItemRecord("new", ("c2",), False)])
    second, blob = click(rec, "5", 1, blob)
    assert gone not in second.items and "new" not in second.items and len(second.items) == 5
    popular, _ = click(rec, "unknown", 0, None, user="w")  # popularity list: the most clicked is item "0"
    assert popular.strategy == "popularity" and gone not in popular.items and len(popular.items) == 5
    rec.apply_catalogue([ItemRecord("0", (), False, True)])  # a tombstone
    assert "0" not in click(rec, "unknown", 0, None, user="x")[0].items
    rec.apply_catalogue([ItemRecord(gone, ("c1",), True), ItemRecord("0", ())])
    assert rec.catalogue.counts()["trained_unavailable"] == 0
    assert click(rec, "unknown", 0, None, user="y")[0].items[0] == "0"


def test_a_network_without_attributes_only_switches_items() -> None:
    rec = recommender(network(), attributes=False)
    done = rec.apply_catalogue([ItemRecord("new", ("c1",)), ItemRecord("3", (), False)])
    assert done.added == [] and done.no_vector == 1 and done.blocked == [3]
    got, _ = click(rec, "new", 0)
    assert got.strategy == "popularity" and "3" not in got.items and "new" not in got.items


def test_rankers_never_return_blocked_items() -> None:
    torch.manual_seed(1)
    emb, bias, q = torch.randn(400, 6), torch.randn(400), torch.randn(3, 6)
    grouped = ExactRanker(emb, bias, chunk=64, group=8)
    assert grouped._chunks  # the grouped path
    ref = grouped.full_top_k(q, 10, [(), (), ()])
    blocked = {ref.indices[0][0], ref.indices[1][3], ref.indices[2][9]}
    for ranker in (grouped, ExactRanker(emb, bias), ExactRanker(emb, None)):
        ranker.set_blocked(blocked, True)
        for row in ranker.top_k(q, 10, [(), (5,), ()]).indices:
            assert not blocked & set(row) and len(row) == 10
        ranker.set_blocked(blocked, False)
    assert grouped.top_k(q, 10, [(), (), ()]).indices == ref.indices
    faiss = pytest.importorskip("faiss")
    assert faiss is not None
    ann = AnnRanker(emb, bias, lists=4, probes=4)
    ann.set_blocked(blocked, True)
    assert all(not blocked & set(row) for row in ann.top_k(q, 10, [(), (), ()]).indices)


def test_excluded_attributes_are_never_served() -> None:
    """A business rule as data: items carrying an excluded attribute leave every list, trained or new."""
    net = network()
    attrs = ItemAttributes.build([str(i) for i in range(N)], ATTRS)
    trained = [i for i in range(N) if i % 3 == 2]  # the items of attribute c2
    rec = Recommender(net.folded(), [str(i) for i in range(N)], np.arange(N, 0, -1, dtype=np.float32), "v1",
                      Policy(k=N), attributes=(attrs.names, net.new_item_vectors), excluded=(trained, ["c2"]))
    rec.apply_catalogue([ItemRecord("n1", ("c2", "b1")), ItemRecord("n2", ("c1",)), ItemRecord("2", ())])
    rec.apply_catalogue([ItemRecord("n1", ())])  # no attributes: still excluded
    assert rec.catalogue.counts()["trained_excluded"] == len(trained)
    for user, item in (("a", "4"), ("b", "unknown")):  # a model list and a popularity list
        got, _ = click(rec, item, 0, None, user=user)
        assert not {str(i) for i in trained} & set(got.items) and "n1" not in got.items
        assert len(got.items) == N - len(trained) - (item == "4") + ("n2" in got.items)


def test_excluded_attributes_from_settings(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from models.checkpoint import load_checkpoint, save_checkpoint
    from stream_app.errors import ModelLoadError
    from stream_app.core.catalogue import excluded_by

    attrs = ItemAttributes.build([str(i) for i in range(N)], ATTRS)
    save_checkpoint(tmp_path / "a.pt", network(), [str(i) for i in range(N)], list(range(N)),
                    {"attributes": attrs.to_meta()})
    ckpt = load_checkpoint(tmp_path / "a.pt")
    items, names = excluded_by(ckpt, " c2, b0 ,zz")
    assert items == sorted({i for i in range(N) if i % 3 == 2 or i % 4 == 0}) and names == ["c2", "b0", "zz"]
    assert excluded_by(ckpt, "") == ([], [])
    plain = SessionRNN(ModelConfig(n_items=N, hidden=8))
    save_checkpoint(tmp_path / "p.pt", plain, [str(i) for i in range(N)], list(range(N)), {})
    with pytest.raises(ModelLoadError, match="EXCLUDED_ATTRIBUTES"):
        excluded_by(load_checkpoint(tmp_path / "p.pt"), "c2")


def test_a_cap_per_attribute_shapes_and_refills_lists() -> None:
    net = network()
    attrs = ItemAttributes.build([str(i) for i in range(N)], ATTRS)
    spec = (attrs.names, net.new_item_vectors, (net.attr_out.flat, net.attr_out.offsets))

    def make(**policy: object) -> Recommender:
        return Recommender(net.folded(), [str(i) for i in range(N)], np.arange(N, 0, -1, dtype=np.float32), "v1",
                           Policy(**policy), attributes=spec)  # type: ignore[arg-type]

    full, _ = click(make(k=N), "4", 0)
    brand = {str(i): i % 4 for i in range(N)}
    want, seen = [], {}  # greedy over the uncapped order: at most 2 items per brand
    for item in full.items:
        if seen.get(brand[item], 0) < 2:
            seen[brand[item]] = seen.get(brand[item], 0) + 1
            want.append(item)
    got, _ = click(make(k=5, max_per_attribute=2, capped_prefix="b"), "4", 0)
    assert list(got.items) == want[:5]  # refilled from further down the ranking: never short here
    short, _ = click(make(k=5, max_per_attribute=1, capped_prefix="c"), "4", 0)
    assert len(short.items) == 3 and len({int(i) % 3 for i in short.items}) == 3  # 3 categories: runs out
    pop, _ = click(make(k=5, max_per_attribute=1, capped_prefix="c"), "unknown", 0)
    assert pop.strategy == "popularity" and list(pop.items) == ["0", "1", "2"]
    capped = make(k=5, max_per_attribute=1, capped_prefix="c")
    capped.apply_catalogue([ItemRecord("n", ("c0",))])
    assert capped.catalogue.groups_of(N) == (capped.catalogue.attribute_index["c0"],)


def test_the_reader_isolates_a_record_the_core_fails_on() -> None:
    """A bug tripped by one catalogue record dead-letters that record (internal_error); the others apply."""
    import asyncio
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry

    from stream_app.settings import Settings
    from stream_app.worker.catalogue import CatalogueReader
    from stream_app.worker.metrics import Metrics

    rec = recommender(network())
    real = rec.apply_catalogue

    def buggy(records):  # type: ignore[no-untyped-def]
        if any(r.item_id == "boom" for r in records):
            raise RuntimeError("injected")
        return real(records)

    rec.apply_catalogue = buggy  # type: ignore[method-assign]
    sent: list[tuple[str, bytes, list]] = []

    class Producer:
        async def send_and_wait(self, topic: str, value: bytes, key: bytes, headers: list) -> None:
            sent.append((topic, key, headers))

    reader = CatalogueReader(rec, Metrics.create(CollectorRegistry()), Settings())
    msgs = [SimpleNamespace(topic="items", partition=0, offset=o, key=k, value=v) for o, (k, v) in enumerate(
        [(b"3", b'{"available": false}'), (b"boom", b"{}"), (b"x", b"nope")])]
    asyncio.run(reader._apply(msgs, Producer()))
    assert reader.applied == 1 and rec.catalogue.blocked == {3}
    assert sorted(dict(h)["streamrec-reason"] for _, _, h in sent) == [b"internal_error", b"not_json"]


def test_a_bad_catalogue_file_says_why(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from stream_app.errors import DatasetError
    from stream_app.lab.replay import catalogue_messages

    (tmp_path / "bad.jsonl").write_text('{"item_id": "1"}\nnot json\n')
    with pytest.raises(DatasetError, match="bad.jsonl:2"):
        list(catalogue_messages(tmp_path / "bad.jsonl"))
    with pytest.raises(DatasetError, match="cannot read"):
        list(catalogue_messages(tmp_path / "missing.jsonl"))


def test_rerankers_and_also_like_serve_new_catalogue_items(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from stream_app.core.rerank import Strengths
    from tests.unit.stream_app.tiny_ranker import tiny_ranker

    net = network()
    attrs = ItemAttributes.build([str(i) for i in range(N)], ATTRS)
    spec = (attrs.names, net.new_item_vectors, (net.attr_out.flat, net.attr_out.offsets))
    served = net.folded()
    counts = np.arange(N, 0, -1, dtype=np.float32)
    pipeline, _ = tiny_ranker(SimpleNamespace(version="v1", model=served, attribute_lists=lambda: None), served,
                              counts, tmp_path / "r.pt", size=N + 5)
    rec = Recommender(served, [str(i) for i in range(N)], counts, "v1",
                      Policy(k=N, rerank=Strengths(mmr=0.3, calibration=0.2, long_tail=0.2), candidates=N + 5,
                             also_k=N, max_per_attribute=N), attributes=spec, pipeline=pipeline)  # type: ignore[arg-type]
    rec.apply_catalogue([ItemRecord("new", ("c1", "b2"))])
    assert rec.facts is not None and rec.facts.n_items == N + 1 and bool(rec.facts.tail[N])
    assert rec.pipeline is not None and rec.pipeline.stats.unit.shape[0] == N + 1  # the new item has its vector
    got, blob = click(rec, "new", 0)  # a click on the new item: every other item ranked and re-ranked
    assert got.stages == ("score", "recall", "ranker", "cap", "mmr", "calibration", "long_tail")
    assert sorted(got.items) == sorted(str(i) for i in range(N)) and set(got.also) == set(got.items)
    again, _ = click(rec, "3", 1, blob)
    assert "new" not in again.items and "3" not in again.items and len(again.items) == N - 1  # recent: out
    other, _ = click(rec, "3", 2, user="v")
    assert "new" in other.items and "new" in other.also and len(other.items) == N  # the new item is served


def test_a_model_swapped_in_gets_the_catalogue_read_so_far_and_a_failed_handover_changes_nothing() -> None:
    import asyncio
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry

    from stream_app.settings import Settings
    from stream_app.worker.catalogue import CatalogueReader
    from stream_app.worker.metrics import Metrics

    old, new = recommender(network()), recommender(network(seed=1))

    class Producer:
        async def send_and_wait(self, topic: str, value: bytes, key: bytes, headers: list) -> None:
            raise AssertionError("nothing to dead-letter")

    reader = CatalogueReader(old, Metrics.create(CollectorRegistry()), Settings())
    asyncio.run(reader._apply([SimpleNamespace(topic="items", partition=0, offset=0, key=b"3",
                                               value=b'{"available": false}')], Producer()))
    reader.prepare(new)
    assert new.catalogue.blocked == {3} and reader.rec is old  # prepared, not serving yet
    reader.handover(new)
    assert reader.rec is new
    broken = recommender(network(seed=2))

    def fail(records):  # type: ignore[no-untyped-def]
        raise RuntimeError("injected")

    broken.apply_catalogue = fail  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        reader.prepare(broken)
    assert reader.rec is new  # the serving model stays
