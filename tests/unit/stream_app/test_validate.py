"""Click validation: every bad input has a reason; valid input is normalised."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from stream_app.errors import InvalidClick
from stream_app.core import validate
from stream_app.core.validate import decode_click

NOW = 1_700_000_000.0


def dec(value: bytes | None, key: bytes | None = b"u1", max_bytes: int = 4096):
    return decode_click(value, key, max_bytes=max_bytes, now=NOW, max_future_skew_s=3600)


def reason(value: bytes | None, key: bytes | None = b"u1", max_bytes: int = 4096) -> str:
    with pytest.raises(InvalidClick) as info:
        dec(value, key, max_bytes)
    return info.value.reason


def test_valid_click_with_int_item() -> None:
    c = dec(b'{"user_id":"u1","item_id":42,"ts":1600000000,"event_type":"view"}')
    assert (c.user_id, c.item_id, c.ts, c.event_type) == ("u1", "42", 1.6e9, "view")


@pytest.mark.parametrize(
    "value,expected",
    [
        (b"not json", "not_json"),
        (b"[1,2]", "not_object"),
        (b'"str"', "not_object"),
        (b'{"item_id":1,"ts":1}', "missing_field"),
        (b'{"user_id":"u1","ts":1}', "missing_field"),
        (b'{"user_id":"u1","item_id":1}', "missing_field"),
        (b'{"user_id":5,"item_id":1,"ts":1}', "bad_type"),
        (b'{"user_id":"u1","item_id":true,"ts":1}', "bad_type"),
        (b'{"user_id":"u1","item_id":1.5,"ts":1}', "bad_type"),
        (b'{"user_id":"u1","item_id":1,"ts":"yesterday"}', "bad_type"),
        (b'{"user_id":"u1","item_id":1,"ts":NaN}', "non_finite_time"),
        (b'{"user_id":"u1","item_id":1,"ts":Infinity}', "non_finite_time"),
        (b'{"user_id":"u1","item_id":1,"ts":-5}', "bad_value"),
        (b'{"user_id":"u1","item_id":1,"ts":1e300}', "future_time"),
        (b'{"user_id":"","item_id":1,"ts":1}', "bad_value"),
        (b'{"user_id":"u1","item_id":"","ts":1}', "bad_value"),
        (b'{"user_id":"u1","user_id":"u1","item_id":1,"ts":1}', "duplicate_key"),
        (b'{"user_id":"u1","item_id":1,"ts":1,"event_type":3}', "bad_type"),
        (b"\xff\xfe{}", "not_utf8"),
        (None, "empty"),
    ],
)
def test_bad_input_reasons(value: bytes | None, expected: str) -> None:
    assert reason(value) == expected


def test_too_large_is_checked_before_parsing() -> None:
    assert reason(b" " * 5000, max_bytes=4096) == "too_large"


def test_key_must_match_user() -> None:
    body = b'{"user_id":"u1","item_id":1,"ts":1}'
    assert reason(body, key=b"u2") == "key_mismatch"
    assert reason(body, key=None) == "key_mismatch"


def test_very_long_ids_are_refused() -> None:
    body = json.dumps({"user_id": "u1", "item_id": "x" * 300, "ts": 1}).encode()
    assert reason(body) == "bad_value"


def test_deep_nesting_is_not_json() -> None:
    assert reason(b"[" * 100000, max_bytes=10**6) in {"not_json", "not_object"}


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_invalid_click(value: bytes) -> None:
    try:
        dec(value)
    except InvalidClick as exc:
        assert exc.reason


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["user_id", "item_id", "ts", "event_type", "x"]),
                       st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                                 st.text(max_size=20), st.lists(st.integers(), max_size=3))))
def test_random_objects_only_raise_invalid_click(body: dict) -> None:
    try:
        dec(json.dumps(body).encode(), key=str(body.get("user_id")).encode())
    except InvalidClick as exc:
        assert exc.reason


def outcome(value: bytes | None, key: bytes | None) -> tuple:
    try:
        c = dec(value, key)
    except InvalidClick as exc:
        return ("invalid", exc.reason, exc.detail)
    return ("click", c.user_id, c.item_id, c.ts, c.event_type)


def exact_outcome(value: bytes | None, key: bytes | None, monkeypatch: pytest.MonkeyPatch) -> tuple:
    with monkeypatch.context() as m:
        m.setattr(validate, "_fast_parse", lambda raw: None)  # every payload through json.loads + duplicate check
        return outcome(value, key)


KEYS = st.sampled_from(["user_id", "item_id", "ts", "event_type", "x", "u\u00e9", "%s"])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                    st.sampled_from(["user_id", "u1", "\"ts\"", "a\\b"]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
                      max_leaves=6)


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    """Objects written with duplicates, escapes, odd spacing and NaN, then sometimes cut or altered."""
    pairs = draw(st.lists(st.tuples(KEYS, VALUES), max_size=6))
    if draw(st.booleans()):
        pairs += [("user_id", "u1"), ("item_id", draw(st.integers(0, 9))), ("ts", 1.6e9)]
    pairs = draw(st.permutations(pairs))
    sep = draw(st.sampled_from([",", ", ", " ,\n"]))
    ascii_only = draw(st.booleans())
    text = "{" + sep.join(f"{json.dumps(k, ensure_ascii=ascii_only)}:{json.dumps(v, ensure_ascii=ascii_only)}"
                          for k, v in pairs) + "}"
    raw = text.encode("utf-8", "surrogatepass")
    cut = draw(st.integers(0, 3))
    if cut == 1 and raw:
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif cut == 2:
        raw = b"\xef\xbb\xbf" + raw  # a byte-order mark
    return raw


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(value=payloads(), key=st.sampled_from([b"u1", None, b"u2"]))
def test_fast_parse_accepts_and_rejects_exactly_as_the_standard_library(value: bytes, key: bytes | None,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    assert outcome(value, key) == exact_outcome(value, key, monkeypatch)


@pytest.mark.parametrize("value", [
    b'{"user_id":"u1","item_id":1,"ts":1,"user_id":"u1"}',
    b'{"user_id":"u1","item_id":"user_id","ts":1}',
    b'{"user_id":"u1","item_id":1,"ts":1,"x":{"a":1,"a":2}}',
    b'[{"a":1,"a":2}]',
    b'{"user_id":"u1","item_id":1,"ts":NaN}',
    b'{"user_id":"u1","item_\\u0069d":1,"ts":1,"item_id":2}',
    b'{"user_id":"u1","item_id":1,"ts":1e400}',
    b'{"user_id":"u1","item_id":123456789012345678901234567890,"ts":1}',
    b'\xef\xbb\xbf{"user_id":"u1","item_id":1,"ts":1}',
])
def test_fast_parse_edge_cases_match(value: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    assert outcome(value, b"u1") == exact_outcome(value, b"u1", monkeypatch)
