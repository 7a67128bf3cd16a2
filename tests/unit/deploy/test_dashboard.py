"""deploy/grafana: the dashboard and its provisioning."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from .conftest import DASHBOARD, DEPLOY
from .exported_metrics import WORKER_METRICS, resolve
from .metric_refs import unknown_references
from .promql import dashboard_expressions, dashboard_panels, metric_names

GENERATOR = DEPLOY / "grafana" / "generate_dashboard.py"


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def test_dashboard_is_generated_from_the_script() -> None:
    proc = subprocess.run([sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_dashboard_queries_only_exported_metrics() -> None:
    exprs = dashboard_expressions(_dashboard())
    assert len(exprs) >= 20
    assert unknown_references(exprs) == []


def test_dashboard_covers_the_operational_signals() -> None:
    referenced = {resolve(n)[0] for n in metric_names(dashboard_expressions(_dashboard())) if resolve(n)}
    # everything the worker exports has a panel ...
    assert set(WORKER_METRICS) - referenced == set()
    # ... and so has the brokers' view of the lag
    assert "kafka_consumergroup_lag" in referenced
    exprs = dashboard_expressions(_dashboard())
    assert any('source="popularity"' in e for e in exprs), "cold-start (popularity) rate"
    for q in ("0.5", "0.95", "0.99"):
        assert any(f"histogram_quantile({q}, " in e and "streamrec_click_to_publish_seconds_bucket" in e
                   for e in exprs), f"latency p{q}"


def test_dashboard_structure() -> None:
    d = _dashboard()
    assert d["uid"] == "streamrec" and d["title"]
    panels = dashboard_panels(d)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    types = {p["type"] for p in panels}
    assert {"timeseries", "heatmap", "stat", "row"} <= types
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p["targets"], p["title"]
            ref_ids = [t["refId"] for t in p["targets"]]
            assert len(ref_ids) == len(set(ref_ids)), p["title"]
    # no two panels overlap
    cells = set()
    for p in panels:
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps another panel"
                cells.add((x, y))
    heatmaps = [p for p in panels if p["type"] == "heatmap"]
    assert all(t.get("format") == "heatmap" for p in heatmaps for t in p["targets"])


def test_datasource_variable_defaults_to_the_provisioned_one() -> None:
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    (prom,) = ds["datasources"]
    assert prom["type"] == "prometheus" and prom["url"] == "http://prometheus:9090"
    var = next(v for v in _dashboard()["templating"]["list"] if v["name"] == "datasource")
    assert var["query"] == "prometheus" and var["current"]["value"] == prom["uid"]


def test_dashboard_provider_points_at_the_mounted_folder() -> None:
    prov = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/streamrec.yml").read_text())
    (provider,) = prov["providers"]
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in mounts
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in mounts
