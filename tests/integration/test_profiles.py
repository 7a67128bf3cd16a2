"""Live profiles on a real broker: a profile published to the users topic is used from the user's next click,
a tombstone takes it back, bad records are dead-lettered with a reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.checkpoint import save_checkpoint
from models.rnn import ModelConfig, SessionRNN
from stream_app.core.profiles import decode_profile
from stream_app.core.recommender import Incoming
from stream_app.core.records import Click, Source
from stream_app.lab.harness import TopicReader, WorkerProcess, dead_letter_reasons, recommendations
from stream_app.lab.replay import publish_catalogue
from stream_app.settings import Settings
from stream_app.worker.start import load_recommender
from tests.integration.helpers import send_all, wait_applied

N_ITEMS = 40
VOCAB = ["gender:F", "gender:M", "age:18-24"]


@pytest.fixture(scope="module")
def profile_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight session-aware GRU whose profile vectors move the query a lot."""
    torch.manual_seed(5)
    net = SessionRNN(ModelConfig(n_items=N_ITEMS, hidden=16, user_hidden=8, profile_attributes=len(VOCAB))).eval()
    torch.nn.init.normal_(net.profile.weight, std=3.0)  # type: ignore[union-attr]
    path = tmp_path_factory.mktemp("profile-ckpt") / "profiles.pt"
    save_checkpoint(path, net, [f"i{j}" for j in range(N_ITEMS)], list(range(N_ITEMS, 0, -1)),
                    {"profile_attributes": VOCAB, "gap_seconds": 1800.0})
    return path


def _expected(settings: Settings, steps: list) -> list[list[str]]:
    """The core's lists for steps: ("click", user, item, ts) or ("profile", key, value), in order."""
    rec, _ = load_recommender(settings)
    blobs: dict[str, bytes | None] = {}
    out = []
    for n, step in enumerate(steps):
        if step[0] == "profile":
            rec.apply_profiles([decode_profile(step[1], step[2], max_bytes=8192)])
            continue
        _, user, item, ts = step
        got = rec.process([Incoming(Click(user, item, ts), Source("x", 0, n, 0.0), blobs.get(user))], 0.0)[0]
        blobs[user] = got.state_blob
        out.append(list(got.recommendation.items))
    return out


def _wait_profiles(worker: WorkerProcess, n: int) -> dict:
    return wait_applied(worker, "/profiles", n)


def test_live_profiles(settings: Settings, profile_checkpoint: Path) -> None:
    s = settings.model_copy(update={"model": settings.model.model_copy(update={"path": profile_checkpoint})})
    bad = [(b"bad1", b"not json"), (b"bad2", b'{"attributes": 5}'), (b"bad3", b'{"user_id": "other"}')]
    assert publish_catalogue(s, bad, topic=s.topics.users) == 3
    profile = (b"u0", b'{"attributes": ["gender:F", "age:18-24", "not-in-the-model"]}')
    clicks = [("click", "u0", "i1", 100.0), ("profile", *profile), ("click", "u0", "i2", 101.0),
              ("profile", b"u0", None), ("click", "u0", "i3", 102.0)]
    with_profile = _expected(s, clicks)
    without = _expected(s, [c for c in clicks if c[0] == "click"])
    assert with_profile[1] != without[1]  # the profile changes the list, so the test can see it used
    with WorkerProcess(s) as worker:
        worker.wait_ready()
        reader = TopicReader(s, s.topics.recommendations)
        send_all(s, [(b"u0", Click("u0", "i1", 100.0).to_json())])
        assert list(recommendations(reader.read_until(1, 60))[0].items) == with_profile[0]
        assert publish_catalogue(s, [profile], topic=s.topics.users) == 1
        page = _wait_profiles(worker, 1)
        assert page["users"] == 1 and page["unknown_attributes"] == 1 and page["used_by_the_model"]
        send_all(s, [(b"u0", Click("u0", "i2", 101.0).to_json())])
        assert list(recommendations(reader.read_until(1, 60))[0].items) == with_profile[1]
        assert publish_catalogue(s, [(b"u0", None)], topic=s.topics.users) == 1
        _wait_profiles(worker, 2)
        send_all(s, [(b"u0", Click("u0", "i3", 102.0).to_json())])
        assert list(recommendations(reader.read_until(1, 60))[0].items) == with_profile[2]
        dlq = TopicReader(s, s.topics.users_dead_letter).read_until(3, 30, idle_s=1)
        metrics = worker.metrics()
    assert sorted(dead_letter_reasons(dlq)) == ["bad_type", "key_mismatch", "not_json"]
    assert 'streamrec_profile_dead_letters_total{reason="not_json"} 1.0' in metrics
    assert "streamrec_profiles 0.0" in metrics and "streamrec_profile_records_total 2.0" in metrics


def test_similar_users_from_every_partition(settings: Settings, profile_checkpoint: Path) -> None:
    """Each user's vector, shared at its session gap, is ranked by /users/{id}/similar, with one written by
    'another worker' (published straight to the topic) among them."""
    import json
    import time

    import numpy as np

    from stream_app.core.similar import encode_vector
    from stream_app.lab.harness import http_get

    s = settings.model_copy(update={"model": settings.model.model_copy(update={"path": profile_checkpoint})})
    clicks = [(u, item, ts) for u, first in (("u0", "i1"), ("u1", "i5"), ("u2", "i9"))
              for item, ts in ((first, 100.0), ("i3", 10_000.0))]  # a session gap before each second click
    rec, _ = load_recommender(s)
    blobs: dict[str, bytes | None] = {}
    vectors: dict[str, np.ndarray] = {}
    for n, (user, item, ts) in enumerate(clicks):
        out = rec.process([Incoming(Click(user, item, ts), Source("x", 0, n, 0.0), blobs.get(user))], 0.0)[0]
        blobs[user] = out.state_blob
        if out.user_vector is not None:
            vectors[user] = out.user_vector
    assert set(vectors) == {"u0", "u1", "u2"}
    unit = {u: v / np.linalg.norm(v) for u, v in vectors.items()}
    with WorkerProcess(s) as worker:
        worker.wait_ready()
        send_all(s, [(u.encode(), Click(u, i, ts).to_json()) for u, i, ts in clicks])
        assert publish_catalogue(s, [(b"far-away", encode_vector(vectors["u0"]))], topic=s.topics.user_vectors) == 1
        deadline = time.monotonic() + 60
        while True:
            status, body = http_get(worker.base_url + "/users/u0/similar?k=3")
            got = json.loads(body) if status == 200 else {}
            if len(got.get("users", [])) == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert [u["user_id"] for u in got["users"]][0] == "far-away", got
        scores = {u["user_id"]: u["score"] for u in got["users"]}
        assert scores["far-away"] == pytest.approx(1.0, abs=1e-5)
        for other in ("u1", "u2"):
            assert scores[other] == pytest.approx(float(unit["u0"] @ unit[other]), abs=1e-4)
        assert http_get(worker.base_url + "/users/nobody/similar")[0] == 404
        assert http_get(worker.base_url + "/users/u0/similar?k=0")[0] == 400

    # streamrec segments: the same vectors clustered, one record per user on the segments topic
    from stream_app.lab.segments import segments

    summary = segments(s, clusters=2, seed=0)
    assert summary["users"] == 4 and sum(summary["sizes"]) == 4 and summary["published"] == 4
    got = {r.key: json.loads(r.value) for r in TopicReader(s, s.topics.segments).read_until(4, 30)}
    assert set(got) == {b"u0", b"u1", b"u2", b"far-away"} and got[b"u0"]["segment"] == got[b"far-away"]["segment"]
