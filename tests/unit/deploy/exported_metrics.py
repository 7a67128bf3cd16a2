"""The metrics the deploy files may query: the one list to keep in step with the worker.

WORKER_METRICS is what the streamrec worker exports on /metrics (name -> type and
label names, the Prometheus target labels job/instance not included). The deploy
tests check that every metric named in the Grafana dashboard and the Prometheus
rules is here; an integration test can scrape a real worker and check the converse.
"""

from __future__ import annotations

from typing import NamedTuple


class Metric(NamedTuple):
    type: str  # counter | gauge | histogram
    labels: frozenset[str] = frozenset()


def _m(type_: str, *labels: str) -> Metric:
    return Metric(type_, frozenset(labels))


WORKER_METRICS: dict[str, Metric] = {
    "streamrec_clicks_consumed_total": _m("counter"),
    "streamrec_recommendations_published_total": _m("counter", "source"),  # source: model | popularity
    "streamrec_dead_letters_total": _m("counter", "reason"),
    "streamrec_unknown_items_total": _m("counter"),
    "streamrec_state_resets_total": _m("counter", "reason"),  # session_gap | undecodable | model_version | ttl
    "streamrec_replayed_clicks_total": _m("counter"),
    "streamrec_processing_seconds": _m("histogram"),
    "streamrec_stage_seconds": _m("histogram", "stage"),
    "streamrec_click_to_publish_seconds": _m("histogram"),
    "streamrec_receive_to_publish_seconds": _m("histogram"),
    "streamrec_batch_size": _m("histogram"),
    "streamrec_state_bytes": _m("histogram"),
    "streamrec_users": _m("gauge"),
    "streamrec_online_predictions_total": _m("counter"),
    "streamrec_online_hits_at_20_total": _m("counter"),
    "streamrec_online_reciprocal_rank_at_20_total": _m("counter"),
    "streamrec_model_info": _m("gauge", "version", "cell", "hidden", "items"),
    "streamrec_model_swaps_total": _m("counter", "outcome"),  # swapped | failed
    "streamrec_states_carried_total": _m("counter"),
    "streamrec_consumer_lag_messages": _m("gauge", "partition"),
    "streamrec_consumer_lag_seconds": _m("gauge"),
    "streamrec_ready": _m("gauge"),
    "streamrec_rebalances_total": _m("counter"),
    "streamrec_recovery_seconds": _m("gauge"),
    "streamrec_catalogue_records_total": _m("counter"),
    "streamrec_catalogue_items": _m("gauge", "state"),
    "streamrec_catalogue_dead_letters_total": _m("counter", "reason"),
    "streamrec_profile_records_total": _m("counter"),
    "streamrec_profiles": _m("gauge"),
    "streamrec_profile_dead_letters_total": _m("counter", "reason"),
    "streamrec_user_vector_records_total": _m("counter"),
    "streamrec_user_vectors": _m("gauge"),
    "streamrec_short_lists_total": _m("counter"),
}

# prometheus_client's default collectors (ProcessCollector, PlatformCollector, GCCollector):
# any name with these prefixes is accepted.
DEFAULT_COLLECTOR_PREFIXES: tuple[str, ...] = ("process_", "python_")

# Exported by kafka-exporter (danielqsj/kafka-exporter), scraped as job="kafka-exporter".
KAFKA_EXPORTER_METRICS: dict[str, Metric] = {
    "kafka_consumergroup_lag": _m("gauge", "consumergroup", "topic", "partition"),
}

# Series Prometheus itself makes for every scrape target.
SCRAPE_METRICS: dict[str, Metric] = {
    "up": _m("gauge"),
}

# Labels every scraped series carries.
TARGET_LABELS: frozenset[str] = frozenset({"job", "instance"})

HISTOGRAM_SUFFIXES: tuple[str, ...] = ("_bucket", "_sum", "_count")


def all_metrics() -> dict[str, Metric]:
    return {**WORKER_METRICS, **KAFKA_EXPORTER_METRICS, **SCRAPE_METRICS}


def resolve(series_name: str) -> tuple[str, Metric] | None:
    """The exported metric a series name belongs to (a histogram's _bucket/_sum/_count
    series resolve to the histogram), or None if nothing exports it."""
    known = all_metrics()
    if series_name in known:
        metric = known[series_name]
        if metric.type == "histogram":
            return None  # a histogram has no series of its bare name
        return series_name, metric
    for suffix in HISTOGRAM_SUFFIXES:
        if series_name.endswith(suffix):
            base = series_name[: -len(suffix)]
            metric = known.get(base)
            if metric is not None and metric.type == "histogram":
                labels = metric.labels | {"le"} if suffix == "_bucket" else metric.labels
                return base, Metric(metric.type, labels)
    if series_name.startswith(DEFAULT_COLLECTOR_PREFIXES):
        return series_name, Metric("default", frozenset())
    return None
