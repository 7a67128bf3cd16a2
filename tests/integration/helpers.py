"""Test helpers: re-exported from stream_app.lab.verify, which the chaos suite shares."""

from __future__ import annotations

from stream_app.lab.verify import (  # noqa: F401 - re-exports
    Delivery,
    assert_same_states,
    click,
    delivery,
    final_states,
    reference_states,
    scenario,
    send_all,
    state_mismatches,
)


def wait_applied(worker, page: str, n: int, timeout_s: float = 30.0) -> dict:  # type: ignore[no-untyped-def]
    """A worker's /catalogue or /profiles page once it has applied ``n`` records (later lists reflect them)."""
    import json
    import time

    from stream_app.lab.harness import http_get

    deadline = time.monotonic() + timeout_s
    while True:
        status, body = http_get(worker.base_url + page)
        got = json.loads(body) if status == 200 else {}
        if got.get("records_applied", 0) >= n or time.monotonic() > deadline:
            assert got.get("records_applied", 0) >= n, got
            return got
        time.sleep(0.2)
