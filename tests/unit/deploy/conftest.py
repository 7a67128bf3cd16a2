"""Shared paths and helpers for the deploy tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
RULES = PROMETHEUS_DIR / "rules.yml"
RULES_TEST = PROMETHEUS_DIR / "rules_test.yml"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "streamrec.json"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
OPERATIONS_DOC = REPO / "docs" / "operations.md"


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not found: install it with deploy/install-ci-deps.sh "
                    "(Debian package 'prometheus')")
    return path
