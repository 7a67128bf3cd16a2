"""Fuzzed input against the running worker: every message gets its list or its dead letter, the worker goes on.

One hypothesis-generated batch (300 messages, derandomized) goes to a real
worker. Each message's expected outcome is set by its category (docs/input.md)
and cross-checked with the decoder: a list for a valid click, a dead letter
with the documented reason for anything else.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings as hsettings, strategies as st

from stream_app.errors import InvalidClick
from stream_app.lab.harness import TopicReader, WorkerProcess, http_get, recommendations
from stream_app.core.records import DEAD_LETTER_REASON_HEADER, DEAD_LETTER_SOURCE_HEADER
from stream_app.settings import Settings
from stream_app.core.validate import decode_click
from tests.integration.helpers import click, send_all

MAX_BYTES = 2048
NOW = time.time()
LIST = "list"  # expected outcome of a valid click

ids = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)
items = st.one_of(st.sampled_from([f"i{j}" for j in range(50)]), st.integers(0, 10**12), ids)
good_ts = st.floats(1.0, NOW, allow_nan=False)


def _msg(user: str, body: dict[str, Any] | str, expected: str, key: bytes | None = None) -> tuple:
    raw = body if isinstance(body, str) else json.dumps(body)
    return (user.encode() if key is None else key, raw.encode("utf-8"), expected)


@st.composite
def valid_click(draw: Any) -> tuple:
    user = draw(ids)
    body = {"user_id": user, "item_id": draw(items), "ts": draw(st.one_of(good_ts, st.just(0.0)))}
    if draw(st.booleans()):
        body["event_type"] = draw(ids)
    if draw(st.booleans()):
        body["extra"] = draw(st.lists(st.integers(), max_size=3))  # unknown fields are ignored
    return _msg(user, body, LIST)


@st.composite
def bad_time(draw: Any) -> tuple:
    user = draw(ids)
    kind = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "future", "negative"]))
    if kind == "future":
        return _msg(user, {"user_id": user, "item_id": "i1", "ts": NOW + draw(st.floats(1e6, 1e12))}, "future_time")
    if kind == "negative":
        return _msg(user, {"user_id": user, "item_id": "i1", "ts": -draw(st.floats(1.0, 1e12))}, "bad_value")
    return _msg(user, f'{{"user_id": {json.dumps(user)}, "item_id": "i1", "ts": {kind}}}', "non_finite_time")


@st.composite
def wrong_type(draw: Any) -> tuple:
    user = draw(ids)
    field = draw(st.sampled_from(["user_id", "item_id", "ts", "event_type"]))
    odd = draw(st.one_of(st.booleans(), st.lists(st.integers(), max_size=2), st.dictionaries(ids, st.integers(),
                                                                                           max_size=2),
                         st.none(), st.floats(allow_nan=False, allow_infinity=False) if field != "ts" else st.text()))
    body: dict[str, Any] = {"user_id": user, "item_id": "i1", "ts": 100.0, field: odd}
    if field == "event_type" and odd is None:
        return _msg(user, body, LIST)  # an absent-like null event_type is accepted
    return _msg(user, body, "bad_type")


@st.composite
def bad_id(draw: Any) -> tuple:
    user = draw(ids)
    field = draw(st.sampled_from(["user_id", "item_id"]))
    value = draw(st.sampled_from(["", "x" * 257, "y" * 600]))
    body = {"user_id": user, "item_id": "i1", "ts": 100.0, field: value}
    return _msg(body["user_id"], body, "bad_value")


@st.composite
def malformed_bytes(draw: Any) -> tuple:
    user = draw(ids)
    kind = draw(st.sampled_from(["huge", "not_utf8", "duplicate_key", "not_object", "random"]))
    if kind == "huge":
        size = draw(st.integers(MAX_BYTES + 1, 200_000))
        body = {"user_id": user, "item_id": "i1", "ts": 100.0, "pad": "p" * size}
        return _msg(user, body, "too_large")
    if kind == "not_utf8":
        return (user.encode(), b'{"user_id": "\xff\xfe' + draw(st.binary(max_size=50)) + b'"}', "not_utf8")
    if kind == "duplicate_key":
        dup = draw(st.sampled_from(["user_id", "item_id", "ts", "other"]))
        return _msg(user, f'{{"user_id": {json.dumps(user)}, "item_id": "i1", "ts": 1, "{dup}": 2, "{dup}": 3}}',
                    "duplicate_key")
    if kind == "not_object":
        return _msg(user, json.dumps(draw(st.one_of(st.lists(st.integers(), max_size=3), st.integers(), ids))),
                    "not_object")
    return (draw(st.one_of(st.none(), st.binary(max_size=20))), draw(st.binary(max_size=300)), "")  # oracle decides


@st.composite
def key_mismatch(draw: Any) -> tuple:
    user = draw(ids)
    other = draw(st.one_of(st.none(), st.binary(max_size=20)).filter(lambda k: k != user.encode()))
    return (other, click(user, "i1", 100.0)[1], "key_mismatch")


message = st.one_of(valid_click(), valid_click(), bad_time(), wrong_type(), bad_id(), malformed_bytes(),
                    key_mismatch())


def _oracle(key: bytes | None, value: bytes) -> str:
    try:
        decode_click(value, key, max_bytes=MAX_BYTES, now=time.time(), max_future_skew_s=86400.0)
    except InvalidClick as exc:
        return exc.reason
    return LIST


def _read(settings: Settings, topic: str, count: int, timeout_s: float) -> list:
    reader = TopicReader(settings, topic)
    try:
        return reader.read_until(count, timeout_s, idle_s=0.5)
    finally:
        reader.close()


def generated_batch(n: int = 300) -> list[tuple[bytes | None, bytes, str]]:
    """``n`` hypothesis examples (derandomized: the same batch every run), each with its decided outcome.

    The property checked while generating: a message's category and the decoder agree.
    """
    batch: list[tuple[bytes | None, bytes, str]] = []

    @hsettings(max_examples=n, phases=[Phase.generate], derandomize=True, deadline=None, database=None,
               suppress_health_check=list(HealthCheck))
    @given(message)
    def collect(m: tuple) -> None:
        key, value, want = m
        decided = _oracle(key, value)
        assert want in ("", decided), (key, value[:200], want, decided)
        batch.append((key, value, decided))

    collect()
    return batch[:n]


def test_fuzzed_batch_gets_lists_and_dead_letters_and_the_worker_goes_on(settings: Settings) -> None:
    settings = settings.model_copy(update={"worker": settings.worker.model_copy(update={"max_event_bytes": MAX_BYTES})})
    batch = generated_batch()
    expected = [decided for _, _, decided in batch]
    messages = [(k, v) for k, v, _ in batch]
    with WorkerProcess(settings) as worker:
        worker.wait_ready()
        positions = send_all(settings, messages)
        n_lists = sum(1 for e in expected if e == LIST)
        recs = _read(settings, settings.topics.recommendations, n_lists, 90)
        dlq = _read(settings, settings.topics.dead_letter, len(batch) - n_lists, 60)
        # the worker never stops: alive, healthy, and a valid click afterwards still gets its list
        assert worker.proc is not None and worker.proc.poll() is None
        assert http_get(worker.base_url + "/healthz")[0] == 200
        [after] = send_all(settings, [click("after-fuzz", "i3", 100.0)])
        tail = recommendations(_read(settings, settings.topics.recommendations, n_lists + 1, 60))
        assert after in {(r.source.partition, r.source.offset) for r in tail}
    got_lists = {(r.source.partition, r.source.offset) for r in recommendations(recs)}
    got_dead = {dict(r.headers)[DEAD_LETTER_SOURCE_HEADER].decode(): dict(r.headers)[DEAD_LETTER_REASON_HEADER].decode()
                for r in dlq}
    outcome = []
    for (part, off), want in zip(positions, expected):
        src = f"{settings.topics.clicks}/{part}/{off}"
        outcome.append(LIST if (part, off) in got_lists else got_dead.get(src, "nothing"))
    wrong = [(m[0], m[1][:80], e, o) for m, e, o in zip(messages, expected, outcome) if e != o]
    assert not wrong, wrong[:10]
    # a spread of outcomes, so the batch really exercises the rules
    assert len(Counter(expected)) >= 8, Counter(expected)
