"""The worker's HTTP side, scraped for real: metric names used by the dashboard and the alert
rules exist on a running worker, a real Prometheus reads the counters back, and the pages answer."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream_app.brokers.process import free_port
from stream_app.lab.harness import TopicReader, WorkerProcess, http_get, recommendations
from stream_app.settings import Settings
from tests.integration.helpers import click, send_all
from tests.unit.deploy.promql import dashboard_expressions, metric_names, rules_expressions

ROOT = Path(__file__).resolve().parents[2]
FROM_OTHER_EXPORTERS = {"up", "kafka_consumergroup_lag", "kafka_consumergroup_lag_sum"}


def _traffic(settings: Settings) -> list[tuple[bytes | None, bytes]]:
    msgs = [click(f"u{i % 7}", f"i{i % 50}", 1_600_000_000.0 + i) for i in range(60)]
    msgs += [click("u1", "not-in-catalogue", 1_600_000_100.0), (b"u1", b"{broken"), click("u1", "i3", 1_600_009_000.0)]
    return msgs


def _exported_sample_names(text: str) -> set[str]:
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def test_every_metric_in_dashboard_and_rules_is_exported(settings: Settings) -> None:
    with WorkerProcess(settings) as worker:
        worker.wait_ready()
        send_all(settings, _traffic(settings))
        TopicReader(settings, settings.topics.recommendations).read_until(62, 60)
        time.sleep(1.5)  # one gauge refresh
        text = worker.metrics()
    exported = _exported_sample_names(text)
    rule_exprs, recorded = rules_expressions(ROOT / "deploy/prometheus/rules.yml")
    used = metric_names(dashboard_expressions(ROOT / "deploy/grafana/dashboards/streamrec.json")) | metric_names(rule_exprs)
    missing = sorted(used - exported - recorded - FROM_OTHER_EXPORTERS)
    assert not missing, f"dashboard/rules use metrics the worker does not export: {missing}"


def test_pages_and_latest_list(settings: Settings) -> None:
    with WorkerProcess(settings) as worker:
        worker.wait_ready()
        assert http_get(worker.base_url + "/healthz")[0] == 200
        send_all(settings, [click("alice", "i1", 100.0), click("alice", "i2", 101.0)])
        recs = recommendations(TopicReader(settings, settings.topics.recommendations).read_until(2, 60))
        last = max(recs, key=lambda r: r.source.offset)
        status, body = http_get(worker.base_url + "/users/alice/recommendations")
        assert status == 200
        assert json.loads(body)["items"] == list(last.items)
        assert http_get(worker.base_url + "/users/nobody/recommendations")[0] == 404
        spec = json.loads(http_get(worker.base_url + "/openapi.json")[1])
        assert {"/users/{user_id}/recommendations", "/users/{user_id}/similar", "/profiles"} <= set(spec["paths"])


@pytest.mark.skipif(shutil.which("prometheus") is None,
                    reason="Debian's prometheus package is not installed (deploy/install-ci-deps.sh installs it)")
def test_real_prometheus_scrapes_the_worker(settings: Settings, tmp_path: Path) -> None:
    with WorkerProcess(settings) as worker:
        worker.wait_ready()
        port = free_port()
        target = worker.base_url.removeprefix("http://")
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"rule_files: ['{ROOT / 'deploy/prometheus/rules.yml'}']\n"
            "scrape_configs:\n"
            f"  - job_name: streamrec\n    static_configs: [{{targets: ['{target}']}}]\n"
        )
        prom = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            messages = _traffic(settings)
            send_all(settings, messages)
            TopicReader(settings, settings.topics.recommendations).read_until(62, 60)
            api = f"http://127.0.0.1:{port}/api/v1/query?"
            wanted = {"streamrec_clicks_consumed_total": float(len(messages)),
                      'sum(streamrec_dead_letters_total{reason="not_json"})': 1.0,
                      "sum(streamrec_recommendations_published_total)": 62.0,
                      "streamrec_unknown_items_total": 1.0,
                      'up{job="streamrec"}': 1.0}
            got: dict[str, float] = {}
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and got != wanted:
                time.sleep(1)
                for query in wanted:
                    try:
                        status, body = http_get(api + urllib.parse.urlencode({"query": query}))
                    except (OSError, socket.timeout):
                        continue
                    result = json.loads(body)["data"]["result"] if status == 200 else []
                    if result:
                        got[query] = float(result[0]["value"][1])
            targets = http_get(f"http://127.0.0.1:{port}/api/v1/targets")[1].decode()
            assert got == wanted, targets
            status, body = http_get(f"http://127.0.0.1:{port}/api/v1/rules")
            rules = [r for g in json.loads(body)["data"]["groups"] for r in g["rules"]]
            assert rules and all(r["health"] in ("ok", "unknown") for r in rules)
        finally:
            prom.terminate()
            prom.wait(10)
