"""exported_metrics.WORKER_METRICS against what stream_app.worker.metrics declares.

The deploy files are checked against WORKER_METRICS; this keeps that list honest
while the worker evolves (names, types and label names). Scraping a running worker
is the integration tests' job.
"""

from __future__ import annotations

import pytest

from .exported_metrics import WORKER_METRICS


def _declared() -> dict[str, tuple[str, frozenset[str]]]:
    try:
        from prometheus_client import CollectorRegistry

        from stream_app.worker.metrics import Metrics
    except Exception as exc:  # the worker package is written in parallel
        pytest.skip(f"stream_app.worker.metrics not importable yet: {exc!r}")
    metrics = Metrics.create(CollectorRegistry())
    declared: dict[str, tuple[str, frozenset[str]]] = {}
    for value in vars(metrics).values():
        kind = getattr(value, "_type", None)
        if kind not in {"counter", "gauge", "histogram"}:
            continue
        name = value._name + ("_total" if kind == "counter" else "")
        declared[name] = (kind, frozenset(value._labelnames))
    return declared


def test_worker_declares_exactly_the_listed_metrics() -> None:
    declared = _declared()
    assert sorted(set(WORKER_METRICS) - set(declared)) == [], "listed but not declared by the worker"
    assert sorted(set(declared) - set(WORKER_METRICS)) == [], "declared by the worker but not listed"


def test_types_and_labels_match() -> None:
    declared = _declared()
    for name, metric in WORKER_METRICS.items():
        if name in declared:
            assert declared[name] == (metric.type, metric.labels), name
