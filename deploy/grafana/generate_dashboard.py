#!/usr/bin/env python3
"""Writes deploy/grafana/dashboards/streamrec.json (the Grafana dashboard).

The JSON is generated so that its queries stay consistent (one selector, one
place per metric); edit this file, then run

    python deploy/grafana/generate_dashboard.py

tests/unit/deploy checks that the committed JSON equals this script's output and
that every metric it queries is one the worker (or kafka-exporter) exports.
Standard library only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards" / "streamrec.json"

DS = {"type": "prometheus", "uid": "${datasource}"}
# Every worker series is selected through the job and instance variables.
SEL = 'job="$job", instance=~"$instance"'
RATE = "$__rate_interval"
QUALITY_WINDOW = "30m"
LATENCY_OBJECTIVE_S = 0.25  # as in deploy/prometheus/rules.yml (StreamrecLatencyP99High)


def target(expr: str, legend: str = "", **extra: Any) -> dict[str, Any]:
    t: dict[str, Any] = {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto", "range": True}
    t.update(extra)
    return t


def quantiles(metric: str, qs: tuple[float, ...] = (0.5, 0.95, 0.99)) -> list[dict[str, Any]]:
    return [
        target(
            f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{{{SEL}}}[{RATE}])))",
            f"p{round(q * 100)}",
        )
        for q in qs
    ]


def timeseries(title: str, targets: list[dict[str, Any]], unit: str = "short", description: str = "",
               thresholds: list[dict[str, Any]] | None = None, stack: bool = False,
               bars: bool = False, min_zero: bool = True) -> dict[str, Any]:
    custom: dict[str, Any] = {
        "drawStyle": "bars" if bars else "line",
        "lineWidth": 1,
        "fillOpacity": 10,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
    }
    defaults: dict[str, Any] = {"unit": unit, "custom": custom}
    if min_zero:
        defaults["min"] = 0
    if thresholds:
        defaults["thresholds"] = {"mode": "absolute", "steps": thresholds}
        custom["thresholdsStyle"] = {"mode": "line+area"}
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def stat(title: str, targets: list[dict[str, Any]], unit: str = "short", description: str = "",
         mappings: list[dict[str, Any]] | None = None,
         thresholds: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "mappings": mappings or [],
                "thresholds": {"mode": "absolute",
                               "steps": thresholds or [{"color": "green", "value": None}]},
            },
            "overrides": [],
        },
        "options": {
            "colorMode": "background",
            "graphMode": "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": "value_and_name",
        },
    }


def heatmap(title: str, expr: str, description: str = "") -> dict[str, Any]:
    return {
        "type": "heatmap",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": [target(expr, "{{le}}", format="heatmap")],
        "fieldConfig": {"defaults": {"custom": {"scaleDistribution": {"type": "linear"}}}, "overrides": []},
        "options": {
            "calculate": False,
            "cellGap": 1,
            "color": {"mode": "scheme", "scheme": "Oranges", "scale": "exponential", "exponent": 0.5,
                      "steps": 64, "fill": "dark-orange", "reverse": False},
            "yAxis": {"axisPlacement": "left", "unit": "s"},
            "rowsFrame": {"layout": "auto"},
            "tooltip": {"mode": "single", "yHistogram": False},
            "legend": {"show": True},
            "filterValues": {"le": 1e-9},
        },
    }


def table(title: str, expr: str, columns: list[str], description: str = "") -> dict[str, Any]:
    return {
        "type": "table",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": [target(expr, "", format="table", instant=True, range=False)],
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {"showHeader": True, "cellHeight": "sm"},
        "transformations": [
            {"id": "organize", "options": {
                "excludeByName": {"Time": True, "Value": True, "__name__": True},
                "indexByName": {c: i for i, c in enumerate(columns)},
                "renameByName": {},
            }},
        ],
    }


READY_MAPPINGS = [{
    "type": "value",
    "options": {"0": {"text": "NOT READY", "color": "red", "index": 0},
                "1": {"text": "READY", "color": "green", "index": 1}},
}]
RED_AT_0 = [{"color": "red", "value": None}, {"color": "green", "value": 1}]


def rows() -> list[tuple[str, list[tuple[dict[str, Any], int, int]]]]:
    """(row title, [(panel, width, height)])"""
    ratio = "sum(rate({num}{{{sel}}}[{w}])) / sum(rate({den}{{{sel}}}[{w}]))"
    return [
        ("Overview", [
            (stat("Ready workers", [target(f"streamrec_ready{{{SEL}}}", "{{instance}}")],
                  description="/readyz: 1 once the table is recovered and the model loaded.",
                  mappings=READY_MAPPINGS, thresholds=RED_AT_0), 8, 4),
            (stat("Scrape targets up", [target('up{job="$job"}', "{{instance}}")],
                  mappings=[{"type": "value", "options": {"0": {"text": "DOWN", "color": "red", "index": 0},
                                                          "1": {"text": "UP", "color": "green", "index": 1}}}],
                  thresholds=RED_AT_0), 8, 4),
            (table("Model", f"streamrec_model_info{{{SEL}}}",
                   ["instance", "version", "cell", "hidden", "items"],
                   description="streamrec_model_info: the checkpoint each worker serves."), 8, 4),
        ]),
        ("Traffic", [
            (timeseries("Clicks in, lists out", [
                target(f"sum(rate(streamrec_clicks_consumed_total{{{SEL}}}[{RATE}]))", "clicks/s in"),
                target(f"sum by (source) (rate(streamrec_recommendations_published_total{{{SEL}}}[{RATE}]))",
                       "lists/s out ({{source}})"),
            ], unit="reqps", description="Clicks consumed and recommendation lists published, per second."), 12, 8),
            (timeseries("Clicks in per worker", [
                target(f"sum by (instance) (rate(streamrec_clicks_consumed_total{{{SEL}}}[{RATE}]))",
                       "{{instance}}"),
            ], unit="reqps", stack=True), 12, 8),
            (timeseries("Micro-batch size (events)", quantiles("streamrec_batch_size") + [
                target(f"sum(rate(streamrec_batch_size_sum{{{SEL}}}[{RATE}])) / "
                       f"sum(rate(streamrec_batch_size_count{{{SEL}}}[{RATE}]))", "mean"),
            ], description="Events per micro-batch: near 1 when idle, up to WORKER__BATCH_MAX under load."), 12, 8),
            (timeseries("Processing time per micro-batch", quantiles("streamrec_processing_seconds"),
                        unit="s"), 12, 8),
            (timeseries("Time per list stage (p99 over a micro-batch)", [
                target(f"histogram_quantile(0.99, sum by (le, stage) (rate(streamrec_stage_seconds_bucket{{{SEL}}}"
                       f"[{RATE}])))", "{{stage}}"),
            ], unit="s", description="score: the ranker's candidates for every list of the batch; also_like: the "
                                     "sampled list (STREAMREC_MODEL__ALSO_K); rerank: the re-rankers (STREAMREC_MODEL__RERANK_*, off by default); cap: the "
                                     "per-attribute cap."), 24, 8),
        ]),
        ("Latency", [
            (timeseries("Click to publish latency", quantiles("streamrec_click_to_publish_seconds"), unit="s",
                        description="From the click's event time to its recommendation being produced. "
                                    f"Objective: p99 under {int(LATENCY_OBJECTIVE_S * 1000)} ms.",
                        thresholds=[{"color": "green", "value": None},
                                    {"color": "red", "value": LATENCY_OBJECTIVE_S}]), 12, 9),
            (heatmap("Click to publish latency (heatmap)",
                     f"sum by (le) (increase(streamrec_click_to_publish_seconds_bucket{{{SEL}}}[{RATE}]))"), 12, 9),
            (timeseries("Worker's share: receive to publish", quantiles("streamrec_receive_to_publish_seconds"),
                        unit="s",
                        description="From a stream taking a click (after the consumer's buffer) to its list "
                                    "being handed to the producer: micro-batching and processing. When click to "
                                    "publish grows and neither this nor the lag does, the time is spent upstream "
                                    "or in the broker."), 12, 9),
        ]),
        ("Lag", [
            (timeseries("Consumer lag (messages, worker view)", [
                target(f"sum by (instance) (streamrec_consumer_lag_messages{{{SEL}}})", "{{instance}}"),
            ], stack=True, description="High watermark minus position, from the worker's fetches."), 8, 8),
            (timeseries("Consumer lag (seconds)", [
                target(f"max by (instance) (streamrec_consumer_lag_seconds{{{SEL}}})", "{{instance}}"),
            ], unit="s", description="Now minus the event time of the last processed click; grows when idle too."),
             8, 8),
            (timeseries("Consumer group lag (kafka-exporter)", [
                target('sum by (partition) (kafka_consumergroup_lag{consumergroup="$consumergroup", '
                       'topic="$clicks_topic"})', "partition {{partition}}"),
            ], stack=True, description="Committed offsets behind the log end, as the brokers see them."), 8, 8),
        ]),
        ("Input", [
            (timeseries("Dead letters by reason", [
                target(f"sum by (reason) (rate(streamrec_dead_letters_total{{{SEL}}}[{RATE}]))", "{{reason}}"),
            ], unit="reqps", stack=True, bars=False), 8, 8),
            (timeseries("Unknown items and cold start", [
                target(ratio.format(num="streamrec_unknown_items_total", den="streamrec_clicks_consumed_total",
                                    sel=SEL, w=RATE), "unknown items / clicks"),
                target(f"sum(rate(streamrec_recommendations_published_total{{{SEL}, source=\"popularity\"}}[{RATE}]))"
                       f" / sum(rate(streamrec_recommendations_published_total{{{SEL}}}[{RATE}]))",
                       "popularity lists / lists"),
            ], unit="percentunit", description="Clicks on items the model does not know, and lists served from "
                                               "the popularity fallback (cold start)."), 8, 8),
            (timeseries("State resets and replayed clicks", [
                target(f"sum by (reason) (rate(streamrec_state_resets_total{{{SEL}}}[{RATE}]))", "reset: {{reason}}"),
                target(f"sum(rate(streamrec_replayed_clicks_total{{{SEL}}}[{RATE}]))", "replayed (skipped)"),
                target(f"sum(rate(streamrec_states_carried_total{{{SEL}}}[{RATE}]))", "carried into a new model"),
            ], unit="reqps"), 8, 8),
            (timeseries("Model swaps", [
                target(f"sum by (outcome) (increase(streamrec_model_swaps_total{{{SEL}}}[{RATE}]))", "{{outcome}}"),
            ], description="New checkpoints seen by STREAMREC_MODEL__WATCH_S: swapped in without a restart, or "
                           "failed to load (the old model keeps serving; the worker's log says why)."), 8, 8),
        ]),
        ("Catalogue", [
            (timeseries("Catalogue items by state", [
                target(f"max by (state) (streamrec_catalogue_items{{{SEL}}})", "{{state}}"),
            ], description="The live catalogue (items topic) as each worker holds it: trained items available or "
                           "switched off, items added since training (recommendable through their attributes), "
                           "and new items without a known attribute (not recommendable until retraining)."), 8, 8),
            (timeseries("Catalogue records applied and dead-lettered", [
                target(f"sum(rate(streamrec_catalogue_records_total{{{SEL}}}[{RATE}]))", "applied"),
                target(f"sum by (reason) (rate(streamrec_catalogue_dead_letters_total{{{SEL}}}[{RATE}]))",
                       "dead letter: {{reason}}"),
            ], unit="reqps", description="Every worker reads the whole items topic, so each record is counted "
                                         "once per worker."), 8, 8),
            (timeseries("Short lists", [
                target(ratio.format(num="streamrec_short_lists_total", den="streamrec_clicks_consumed_total",
                                    sel=SEL, w=RATE), "lists under k / clicks"),
            ], unit="percentunit", description="Lists published with fewer than k items: the candidates ran out "
                                               "after recent clicks, unavailable or excluded items and the "
                                               "per-attribute cap (STREAMREC_MODEL__MAX_PER_ATTRIBUTE)."), 8, 8),
            (timeseries("Profiles and user vectors", [
                target(f"max(streamrec_profiles{{{SEL}}})", "users with a profile"),
                target(f"sum(rate(streamrec_profile_records_total{{{SEL}}}[{RATE}]))", "applied /s"),
                target(f"sum by (reason) (rate(streamrec_profile_dead_letters_total{{{SEL}}}[{RATE}]))",
                       "dead letter /s: {{reason}}"),
                target(f"max(streamrec_user_vectors{{{SEL}}})", "users in the similar-users index"),
                target(f"sum(rate(streamrec_user_vector_records_total{{{SEL}}}[{RATE}]))", "user vectors applied /s"),
            ], description="The live profiles (users topic), read whole by every worker: a record is counted "
                           "once per worker; a session-aware model trained with profiles uses them from the "
                           "user's next click. The similar-users index holds the user-vectors topic, also "
                           "read whole."), 8, 8),
        ]),
        ("State", [
            (timeseries("Users in the local tables", [
                target(f"sum by (instance) (streamrec_users{{{SEL}}})", "{{instance}}"),
            ], stack=True), 8, 8),
            (timeseries("Encoded state size", quantiles("streamrec_state_bytes", (0.5, 0.99)) + [
                target(f"sum(rate(streamrec_state_bytes_sum{{{SEL}}}[{RATE}])) / "
                       f"sum(rate(streamrec_state_bytes_count{{{SEL}}}[{RATE}]))", "mean"),
            ], unit="bytes"), 8, 8),
            (timeseries("Estimated table size", [
                target(f"sum(streamrec_users{{{SEL}}}) * sum(rate(streamrec_state_bytes_sum{{{SEL}}}[1h])) / "
                       f"sum(rate(streamrec_state_bytes_count{{{SEL}}}[1h]))", "users x mean state bytes"),
            ], unit="bytes", description="Sizing aid: see docs/operations.md#sizing."), 8, 8),
        ]),
        ("Online quality", [
            (timeseries(f"Online Recall@20 and MRR@20 ({QUALITY_WINDOW} windows)", [
                target(ratio.format(num="streamrec_online_hits_at_20_total",
                                    den="streamrec_online_predictions_total", sel=SEL, w=QUALITY_WINDOW),
                       "Recall@20"),
                target(ratio.format(num="streamrec_online_reciprocal_rank_at_20_total",
                                    den="streamrec_online_predictions_total", sel=SEL, w=QUALITY_WINDOW),
                       "MRR@20"),
                target(ratio.format(num="streamrec_online_hits_at_20_total",
                                    den="streamrec_online_predictions_total", sel=SEL, w=QUALITY_WINDOW)
                       .replace(f"[{QUALITY_WINDOW}]", f"[{QUALITY_WINDOW}] offset 1d"),
                       "Recall@20 a day earlier"),
            ], unit="percentunit", description="Each served list scored against the user's next click."), 16, 8),
            (timeseries("Lists scored", [
                target(f"sum(rate(streamrec_online_predictions_total{{{SEL}}}[{RATE}]))", "predictions/s"),
            ], unit="reqps"), 8, 8),
        ]),
        ("Cluster", [
            (timeseries("Rebalances", [
                target(f"sum by (instance) (increase(streamrec_rebalances_total{{{SEL}}}[{RATE}]))",
                       "{{instance}}"),
            ], bars=True), 8, 8),
            (timeseries("Last table recovery duration", [
                target(f"streamrec_recovery_seconds{{{SEL}}}", "{{instance}}"),
            ], unit="s"), 8, 8),
            (timeseries("Ready", [
                target(f"streamrec_ready{{{SEL}}}", "{{instance}}"),
            ], stack=False), 8, 8),
        ]),
        ("Process", [
            (timeseries("CPU", [
                target(f"rate(process_cpu_seconds_total{{{SEL}}}[{RATE}])", "{{instance}}"),
            ], unit="percentunit", description="One worker process per core: 100% means this worker is saturated."),
             8, 8),
            (timeseries("Resident memory", [
                target(f"process_resident_memory_bytes{{{SEL}}}", "{{instance}}"),
            ], unit="bytes"), 8, 8),
            (timeseries("Python GC collections", [
                target(f"sum by (instance, generation) (rate(python_gc_collections_total{{{SEL}}}[{RATE}]))",
                       "{{instance}} gen {{generation}}"),
            ]), 8, 8),
        ]),
    ]


def templating() -> dict[str, Any]:
    def query_var(name: str, label: str, query: str, multi: bool = False) -> dict[str, Any]:
        v: dict[str, Any] = {
            "name": name, "label": label, "type": "query", "datasource": DS,
            "query": {"query": query, "refId": f"{name}-var"}, "definition": query,
            "refresh": 2, "sort": 1, "hide": 0, "includeAll": multi, "multi": multi,
        }
        if multi:
            v["allValue"] = ".*"
            v["current"] = {"selected": True, "text": ["All"], "value": ["$__all"]}
        return v

    def constant(name: str, label: str, value: str) -> dict[str, Any]:
        return {"name": name, "label": label, "type": "custom", "query": value, "hide": 0,
                "current": {"selected": True, "text": value, "value": value},
                "options": [{"selected": True, "text": value, "value": value}]}

    return {"list": [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {"selected": True, "text": "Prometheus", "value": "prometheus"}, "hide": 0,
         "refresh": 1, "regex": ""},
        query_var("job", "Job", "label_values(streamrec_ready, job)"),
        query_var("instance", "Worker", 'label_values(streamrec_ready{job="$job"}, instance)', multi=True),
        constant("consumergroup", "Consumer group (WORKER__APP_ID)", "streamrec"),
        constant("clicks_topic", "Clicks topic", "clicks"),
    ]}


def dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    next_id = 1
    y = 0
    for title, members in rows():
        panels.append({"type": "row", "title": title, "collapsed": False, "id": next_id,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        next_id += 1
        y += 1
        x = 0
        line_h = 0
        for panel, w, h in members:
            if x + w > 24:
                x, y, line_h = 0, y + line_h, 0
            panel = dict(panel)
            panel["id"] = next_id
            panel["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
            for i, t in enumerate(panel["targets"]):
                t["refId"] = chr(ord("A") + i)
            panels.append(panel)
            next_id += 1
            x += w
            line_h = max(line_h, h)
        y += line_h
    return {
        "uid": "streamrec",
        "title": "streamrec",
        "description": "Streaming session recommender: traffic, latency, lag, input quality, state, "
                       "online quality and the cluster. Runbooks: docs/operations.md",
        "tags": ["streamrec", "kafka", "faust"],
        "timezone": "utc",
        "editable": False,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-3h", "to": "now"},
        "timepicker": {},
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "links": [],
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
            "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard",
        }]},
        "templating": templating(),
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUT.exists() or OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} is out of date: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
