"""The live catalogue on a real broker: items switched off leave the lists, new items are served through their
attributes without retraining, bad records are dead-lettered with a reason, a restart reads the catalogue first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.checkpoint import save_checkpoint
from models.features import ItemAttributes
from models.rnn import ModelConfig, SessionRNN
from stream_app.core.catalogue import decode_item
from stream_app.core.recommender import Incoming
from stream_app.core.records import Click, Source
from stream_app.lab.harness import TopicReader, WorkerProcess, dead_letter_reasons, recommendations
from stream_app.lab.replay import catalogue_messages, publish_catalogue
from stream_app.settings import Settings
from stream_app.worker.start import load_recommender
from tests.integration.helpers import send_all, wait_applied

N_ITEMS = 40
ATTRS = {f"i{j}": [f"cat{j % 5}", f"brand{j % 7}"] for j in range(N_ITEMS)}


@pytest.fixture(scope="module")
def attribute_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight GRU whose items are an id part plus pooled category and brand vectors."""
    torch.manual_seed(3)
    ids = list(ATTRS)
    attrs = ItemAttributes.build(ids, ATTRS)
    net = SessionRNN(ModelConfig(n_items=N_ITEMS, hidden=16, constrained=False, attributes=attrs.n_attributes,
                                 attribute_links=len(attrs.flat), attribute_pooling="idf")).eval()
    net.load_attributes(attrs)
    for pool in (net.attr_out, net.attr_in):
        torch.nn.init.normal_(pool.weight)
    path = tmp_path_factory.mktemp("attr-ckpt") / "attr.pt"
    save_checkpoint(path, net, ids, list(range(N_ITEMS, 0, -1)), {"attributes": attrs.to_meta()})
    return path


@pytest.fixture()
def cat_settings(settings: Settings, attribute_checkpoint: Path) -> Settings:
    return settings.model_copy(update={"model": settings.model.model_copy(update={"path": attribute_checkpoint})})


def _click(user: str, item: str, ts: float) -> tuple[bytes, bytes]:
    return user.encode(), Click(user, item, ts).to_json()


def _publish(settings: Settings, records: list[tuple[bytes, bytes | None]]) -> None:
    assert publish_catalogue(settings, records) == len(records)


def _wait_applied(worker: WorkerProcess, n: int) -> dict:
    return wait_applied(worker, "/catalogue", n)


def _expected(settings: Settings, catalogue: list[tuple[bytes, bytes | None]], clicks: list[tuple[str, str]]) -> list:
    """The lists the core gives for ``clicks`` (user, item) in order, with the same catalogue applied."""
    rec, _ = load_recommender(settings)
    rec.apply_catalogue([decode_item(k, v, max_bytes=8192) for k, v in catalogue if not k.startswith(b"bad")])
    blobs: dict[str, bytes | None] = {}
    out = []
    for n, (user, item) in enumerate(clicks):
        got = rec.process([Incoming(Click(user, item, 100.0 + n), Source("x", 0, n, 0.0), blobs.get(user))], 0.0)[0]
        blobs[user] = got.state_blob
        out.append(list(got.recommendation.items))
    return out


def test_live_catalogue(cat_settings: Settings) -> None:
    s = cat_settings
    before = [(b"i3", b'{"available": false}'), (b"i9", None),  # switched off before the worker starts
              (b"bad1", b"not json"), (b"bad2", b'{"attributes": "cat1"}'), (b"bad3", b'{"available": 1}')]
    _publish(s, before)
    # a product added later: the attributes of i12 (cat2, brand5); chosen so the first user's list shows it
    fresh = [(b"fresh", b'{"attributes": ["cat2", "brand5"], "available": true, "title": "new in"}')]
    first = next(item for item in ATTRS if item not in ("i3", "i9")
                 and "fresh" in _expected(s, before + fresh, [("u1", item)])[0])
    with WorkerProcess(s) as worker:
        worker.wait_ready()  # ready only once the catalogue present at start is applied
        assert _wait_applied(worker, 2)["items"]["trained_unavailable"] == 2
        send_all(s, [_click("u0", first, 100.0)])
        reader = TopicReader(s, s.topics.recommendations)
        lists = recommendations(reader.read_until(1, 60))
        assert "i3" not in lists[0].items and "i9" not in lists[0].items and "fresh" not in lists[0].items
        assert lists[0].items == tuple(_expected(s, before, [("u0", first)])[0])

        _publish(s, fresh)
        _wait_applied(worker, 3)
        send_all(s, [_click("u1", first, 101.0)])
        got = recommendations(reader.read_until(1, 60))[0]
        assert "fresh" in got.items and list(got.items) == _expected(s, before + fresh, [("u1", first)])[0]

        # a click on the new item steps the user's state through its attribute vector (no unknown item)
        send_all(s, [_click("u1", "fresh", 102.0)])
        got = recommendations(reader.read_until(1, 60))[0]
        assert got.strategy == "model" and "fresh" not in got.items
        assert list(got.items) == _expected(s, before + fresh, [("u1", first), ("u1", "fresh")])[1]

        # switched off: the new item and a trained item of the last list leave every later list
        gone = got.items[0]
        off = [(b"fresh", b'{"attributes": ["cat2", "brand5"], "available": false}'), (gone.encode(), None)]
        _publish(s, off)
        _wait_applied(worker, 5)
        send_all(s, [_click("u2", first, 103.0), _click("u1", "i1", 104.0)])
        later = recommendations(reader.read_until(2, 60))
        assert all("fresh" not in r.items and gone not in r.items for r in later) and len(later) == 2
        dlq = TopicReader(s, s.topics.items_dead_letter).read_until(3, 30, idle_s=1)
        metrics = worker.metrics()
    assert sorted(dead_letter_reasons(dlq)) == ["bad_type", "bad_type", "not_json"]
    assert all(dict(r.headers)["streamrec-source"] == r.key for r in dlq)  # keyed by source: copies collapse
    assert 'streamrec_catalogue_dead_letters_total{reason="not_json"} 1.0' in metrics
    assert "streamrec_unknown_items_total 0.0" in metrics

    # a restarted worker reads the catalogue before its first list: the switched-off items stay off
    with WorkerProcess(s) as worker:
        worker.wait_ready()
        send_all(s, [_click("u3", first, 105.0)])
        again = next(r for r in recommendations(TopicReader(s, s.topics.recommendations).read_until(6, 60))
                     if r.user_id == "u3")
    assert not {"fresh", gone, "i3", "i9"} & set(again.items)
    assert list(again.items) == _expected(s, before + fresh + off, [("u3", first)])[0]


def test_replay_publishes_a_catalogue(settings: Settings, tmp_path: Path) -> None:
    s3rec = tmp_path / "S_item2attributes.json"
    s3rec.write_text(json.dumps({"1": [3, 4], "2": [4]}))
    lines = tmp_path / "items.jsonl"
    lines.write_text('{"item_id": "7", "attributes": ["a"], "available": false}\n{"item_id": "8", "deleted": true}\n')
    assert [k for k, _ in catalogue_messages(s3rec)] == [b"1", b"2"]
    _publish(settings, list(catalogue_messages(s3rec)) + list(catalogue_messages(lines)))
    got = TopicReader(settings, settings.topics.items).read_until(4, 30)
    decoded = {r.key: decode_item(r.key, r.value, max_bytes=8192) for r in got}
    assert decoded[b"1"].attributes == ("3", "4") and not decoded[b"7"].available and decoded[b"8"].removed
    assert len(decoded) == 4
