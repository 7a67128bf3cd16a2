"""Profile records: the catalogue's rules, coding against the network's vocabulary, replay's files."""

from __future__ import annotations

from pathlib import Path


def test_profile_records_follow_the_catalogue_rules_and_code_only_known_attributes() -> None:
    import pytest

    from stream_app.core.profiles import Profiles, decode_profile
    from stream_app.errors import InvalidRecord

    assert decode_profile(b"u", None, max_bytes=100).removed
    for key, value, reason in ((None, b"{}", "missing_key"), (b"u", b"[1]", "not_object"),
                               (b"u", b'{"attributes": [true]}', "bad_type"), (b"u", b"x" * 200, "too_large")):
        with pytest.raises(InvalidRecord) as err:
            decode_profile(key, value, max_bytes=100)
        assert err.value.reason == reason
    profiles = Profiles(["a", "b"])
    profiles.apply([decode_profile(b"u", b'{"attributes": ["b", "zz"]}', max_bytes=100)])
    assert profiles.matrix(["u", "v"]).tolist() == [[2], [0]] and profiles.unknown == 1
    profiles.apply([decode_profile(b"u", None, max_bytes=100)])
    assert profiles.matrix(["u"]) is None


def test_replay_reads_profiles_as_users_records(tmp_path: Path) -> None:
    import json

    from stream_app.lab.replay import catalogue_messages

    whole = tmp_path / "user2attributes.json"
    whole.write_text(json.dumps({"7": ["gender:F"]}))
    lines = tmp_path / "users.jsonl"
    lines.write_text('{"user_id": "8", "attributes": ["age:18-24"]}\n{"user_id": "9", "deleted": true}\n')
    assert list(catalogue_messages(whole, "user_id")) == [(b"7", b'{"attributes":["gender:F"]}')]
    assert [k for k, v in catalogue_messages(lines, "user_id") if v is not None] == [b"8"]
