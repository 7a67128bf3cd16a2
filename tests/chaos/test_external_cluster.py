"""The fault harness against a configured cluster: no broker of its own, topics created there, a fault runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from kafka import KafkaAdminClient

from stream_app.brokers.embedded import EmbeddedBroker
from stream_app.lab.chaos import FAULTS, QUICK, run_fault
from stream_app.lab.fault_env import FaultEnv

pytestmark = pytest.mark.chaos


def test_a_configured_cluster_is_used_instead_of_an_embedded_broker(
        small_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with EmbeddedBroker() as cluster:  # stands in for a real cluster: the harness must not start its own
        monkeypatch.setenv("STREAMREC_KAFKA__BOOTSTRAP_SERVERS", cluster.bootstrap_servers)
        monkeypatch.setenv("STREAMREC_KAFKA__EMBEDDED", "true")  # its quirk settings, as for any Tansu
        env = FaultEnv(small_checkpoint, tmp_path / "env")
        try:
            assert env.broker is None
            assert env.settings.kafka.servers == [cluster.bootstrap_servers]
            admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap_servers)
            assert env.settings.topics.clicks in admin.list_topics()
            admin.close()
        finally:
            env.close()
        frozen = run_fault(FAULTS[3], QUICK, small_checkpoint, tmp_path / "frozen")
        assert "needs a local broker" in frozen.detail.get("error", ""), frozen.detail
        r = run_fault(FAULTS[2], QUICK, small_checkpoint, tmp_path / "data")
        assert r.clicks > 0 and r.lost == 0 and r.state_mismatches == 0, r.detail
