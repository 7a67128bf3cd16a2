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
