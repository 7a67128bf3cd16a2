"""A one-minute soak at half the saturated rate: no errors, no losses, bounded memory after warm-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream_app.brokers import KINDS
from stream_app.lab.soak import format_report, run_soak
from tests.support import skip_unless_broker

pytestmark = pytest.mark.chaos


@pytest.mark.parametrize("broker", KINDS)
def test_soak_at_half_the_saturated_rate(broker: str, small_checkpoint: Path, tmp_path: Path) -> None:
    skip_unless_broker(broker)
    r = run_soak(60.0, small_checkpoint, tmp_path / "soak", windows=4, saturation_clicks=1500, users=300,
                 broker_kind=broker)
    print(format_report(r))
    assert r.clicks > 0
    assert r.lost == 0
    assert r.dead_letters == 0 and r.errors == 0
    assert r.rss_growth < 0.10, r.to_dict()
