"""The PromQL metric-name extractor itself."""

from __future__ import annotations

import pytest

from .exported_metrics import resolve
from .promql import Selector, metric_names, selectors, substitute_grafana_variables


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("up", {Selector("up")}),
        ('up{job="streamrec"} == 0', {Selector("up", frozenset({"job"}))}),
        (
            "sum by (job, reason) (rate(streamrec_dead_letters_total{reason!=\"x\"}[10m]))"
            " / ignoring (reason) group_left sum by (job) (rate(streamrec_clicks_consumed_total[10m])) > 0.01",
            {Selector("streamrec_dead_letters_total", frozenset({"reason"})),
             Selector("streamrec_clicks_consumed_total")},
        ),
        (
            "histogram_quantile(0.99, sum by (le) (rate(streamrec_click_to_publish_seconds_bucket"
            "{job=\"$job\", instance=~\"$instance\"}[$__rate_interval])))",
            {Selector("streamrec_click_to_publish_seconds_bucket", frozenset({"job", "instance"}))},
        ),
        ("sum(rate(a_total[1h] offset 1d)) without (x) * on () group_left (version) b_info",
         {Selector("a_total"), Selector("b_info")}),
        ("count by (job) (count by (job, version) (streamrec_model_info))", {Selector("streamrec_model_info")}),
        ('label_values(streamrec_ready{job="$job"}, instance)', {Selector("streamrec_ready", frozenset({"job"}))}),
        ('{__name__="foo_total", a=~"b"}', {Selector("foo_total", frozenset({"a"}))}),
        ("max_over_time(x_seconds[5m:1m]) > 1e-3 and bool 2 > Inf", {Selector("x_seconds")}),
        ("rate(x_total[1h30m]) > 5", {Selector("x_total")}),
        ("absent(up{job=\"streamrec\"})", {Selector("up", frozenset({"job"}))}),
        ("vector(1) + time()", set()),
    ],
)
def test_selectors(expr: str, expected: set[Selector]) -> None:
    assert set(selectors(expr)) == expected


def test_metric_names_over_many_expressions() -> None:
    assert metric_names(["a + b", "rate(c_total[5m])"]) == {"a", "b", "c_total"}


def test_unparseable_expression_raises() -> None:
    with pytest.raises(ValueError):
        selectors("sum(rate(x[5m]) ~ y")


def test_substitute_grafana_variables() -> None:
    assert substitute_grafana_variables('rate(x{job="$job"}[$__rate_interval])') == 'rate(x{job="x"}[5m])'
    assert substitute_grafana_variables("y{a=\"${instance:regex}\"}") == 'y{a="x"}'


def test_resolve_histogram_series_and_defaults() -> None:
    base, metric = resolve("streamrec_click_to_publish_seconds_bucket")  # type: ignore[misc]
    assert base == "streamrec_click_to_publish_seconds" and "le" in metric.labels
    assert resolve("streamrec_click_to_publish_seconds_count")[0] == "streamrec_click_to_publish_seconds"  # type: ignore[index]
    assert resolve("streamrec_click_to_publish_seconds") is None  # no series of a histogram's bare name
    assert resolve("streamrec_users_bucket") is None  # a gauge has no buckets
    assert resolve("process_resident_memory_bytes") is not None
    assert resolve("streamrec_clicks_total") is None
