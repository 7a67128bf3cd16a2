"""deploy/prometheus: config, alert rules and their promtool unit tests."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from .conftest import DASHBOARD, OPERATIONS_DOC, PROMETHEUS_CONFIG, PROMETHEUS_DIR, RULES, RULES_TEST
from .metric_refs import unknown_references
from .promql import dashboard_expressions, rules_expressions, substitute_grafana_variables


def _promtool(promtool: str, *args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def _alerts() -> list[dict]:
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [r for g in rules["groups"] for r in g["rules"] if "alert" in r]


def test_promtool_check_rules(promtool: str) -> None:
    proc = _promtool(promtool, "check", "rules", RULES.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_test_rules(promtool: str) -> None:
    proc = _promtool(promtool, "test", "rules", RULES_TEST.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_check_config(promtool: str) -> None:
    # rule_files are resolved next to prometheus.yml, so this also loads rules.yml
    proc = _promtool(promtool, "check", "config", PROMETHEUS_CONFIG.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dashboard_promql_parses(promtool: str, tmp_path: Path) -> None:
    """Every dashboard query, its Grafana variables filled in, is valid PromQL."""
    exprs = [substitute_grafana_variables(e) for e in dashboard_expressions(DASHBOARD)
             if not e.startswith("label_values(")]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    proc = _promtool(promtool, "check", "rules", str(path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rules_query_only_exported_metrics() -> None:
    exprs, recorded = rules_expressions(RULES)
    assert unknown_references(exprs, defined=recorded) == []


def test_every_alert_has_severity_summary_and_runbook() -> None:
    alerts = _alerts()
    assert len(alerts) >= 7
    names = [a["alert"] for a in alerts]
    assert len(names) == len(set(names))
    for a in alerts:
        assert a["labels"]["severity"] in {"critical", "warning", "info"}, a["alert"]
        assert a["annotations"]["summary"].strip(), a["alert"]
        assert a["annotations"]["runbook_url"] == f"docs/operations.md#{a['alert'].lower()}", a["alert"]


def test_required_alerts_exist() -> None:
    exprs = {a["alert"]: a["expr"] for a in _alerts()}
    assert 'up{job="streamrec"} == 0' in exprs["StreamrecWorkerDown"]
    assert "streamrec_consumer_lag_messages" in exprs["StreamrecStalled"]
    assert "streamrec_clicks_consumed_total" in exprs["StreamrecStalled"]
    assert "streamrec_consumer_lag_seconds" in exprs["StreamrecConsumerLagHigh"]
    assert "histogram_quantile(0.99" in exprs["StreamrecLatencyP99High"]
    assert "> 0.25" in exprs["StreamrecLatencyP99High"]
    assert "streamrec_dead_letters_total" in exprs["StreamrecDeadLettersHigh"]
    assert "streamrec_ready" in exprs["StreamrecNotReady"]
    assert "streamrec_recovery_seconds" in exprs["StreamrecSlowRecovery"]
    assert "streamrec_online_hits_at_20_total" in exprs["StreamrecOnlineRecallDrop"]
    assert "streamrec_online_reciprocal_rank_at_20_total" in exprs["StreamrecOnlineMRRDrop"]


def test_every_alert_has_a_promtool_test() -> None:
    tests = yaml.safe_load(RULES_TEST.read_text(encoding="utf-8"))
    assert tests["rule_files"] == [RULES.name]
    firing: set[str] = set()
    quiet: set[str] = set()
    for t in tests["tests"]:
        for case in t.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {a["alert"] for a in _alerts()}
    assert names - firing == set(), "alerts without a firing test case"
    assert names - quiet == set(), "alerts without a quiet test case"


def _github_anchor(heading: str) -> str:
    slug = heading.strip().lower()
    slug = re.sub(r"[^\w\- ]", "", slug)
    return slug.replace(" ", "-")


def test_runbook_anchors_exist_in_operations_doc() -> None:
    text = OPERATIONS_DOC.read_text(encoding="utf-8")
    anchors = {_github_anchor(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", text, re.M)}
    anchors |= set(re.findall(r'<a (?:name|id)="([^"]+)"', text))
    missing = [a["alert"] for a in _alerts()
               if a["annotations"]["runbook_url"].split("#", 1)[1] not in anchors]
    assert missing == []
