"""inferwatch's Grafana dashboards, as code.

`python deploy/grafana/dashboards.py` writes deploy/grafana/dashboards/<uid>.json; `--check` exits 1
when those files differ from what it would write. Every query reads the daemon's raw metrics
(docs/metrics.md), so the dashboards work against a Prometheus that only scrapes inferwatch.
Standard library only.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

Json = dict[str, Any]

OUT_DIR = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
WIDTH = 24  # Grafana's grid is 24 columns wide
# Mirrors daemon.monitors.canary.METRICS (a test checks).
CANARY_METRICS = (
    "error_rate",
    "latency", "latency_tail", "latency_tail_share",
    "ttft", "ttft_tail", "ttft_tail_share",
    "tpot", "tpot_tail", "tpot_tail_share",
    "goodput",
    "accuracy",
    "prediction_shift",
)  # fmt: skip
CLASSIFICATION = "accuracy|precision|recall|f1"
BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}
# $var, ${var}, ${var:format}, [[var]]
_VARIABLE = re.compile(r"\$\{(\w+)(?::[\w-]+)?\}|\$(\w+)|\[\[(\w+)(?::[\w-]+)?\]\]")


# Panels and targets ---------------------------------------------------------------------------------


def target(expr: str, legend: str = "__auto", *, table: bool = False, heatmap: bool = False) -> Json:
    t: Json = {"datasource": DATASOURCE, "editorMode": "code", "expr": expr, "legendFormat": legend}
    if table:
        t.update(format="table", instant=True, range=False)
    else:
        t.update(instant=False, range=True)
    if heatmap:
        t["format"] = "heatmap"
    return t


def _panel(kind: str, title: str, targets: Sequence[Json], w: int, h: int, description: str, **extra: Any) -> Json:
    refs = [{**t, "refId": chr(ord("A") + i)} for i, t in enumerate(targets)]
    p: Json = {"type": kind, "title": title, "datasource": DATASOURCE, "targets": refs, "gridPos": {"w": w, "h": h}}
    if description:
        p["description"] = description
    p.update(extra)
    return p


def timeseries(
    title: str,
    *targets: Json,
    unit: str = "short",
    w: int = 12,
    h: int = 8,
    description: str = "",
    bars: bool = False,
    min_interval: str | None = None,
    overrides: Sequence[Json] = (),
    **defaults: Any,
) -> Json:
    custom: Json = {"drawStyle": "bars", "fillOpacity": 80} if bars else {"drawStyle": "line", "fillOpacity": 10}
    extra: Json = {}
    if min_interval:
        extra["interval"] = min_interval
    return _panel(
        "timeseries",
        title,
        targets,
        w,
        h,
        description,
        fieldConfig={"defaults": {"unit": unit, "custom": custom, **defaults}, "overrides": list(overrides)},
        options={
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        **extra,
    )


def stat(
    title: str,
    *targets: Json,
    unit: str = "short",
    w: int = 4,
    h: int = 4,
    description: str = "",
    mappings: Sequence[Json] = (),
    thresholds: Sequence[tuple[float | None, str]] = ((None, "green"),),
    **defaults: Any,
) -> Json:
    steps = [{"value": value, "color": color} for value, color in thresholds]
    return _panel(
        "stat",
        title,
        targets,
        w,
        h,
        description,
        fieldConfig={
            "defaults": {
                "unit": unit,
                "mappings": list(mappings),
                "thresholds": {"mode": "absolute", "steps": steps},
                "color": {"mode": "thresholds"},
                **defaults,
            },
            "overrides": [],
        },
        options={
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "none",
            "textMode": "auto",
            "justifyMode": "auto",
            "orientation": "auto",
        },
    )


def table(
    title: str,
    *targets: Json,
    columns: Mapping[str, str] | None = None,
    w: int = 24,
    h: int = 8,
    description: str = "",
    overrides: Sequence[Json] = (),
) -> Json:
    """Instant queries merged into one table; `columns` renames fields (`Value #A` is the first query's value)."""
    transformations: list[Json] = [{"id": "merge", "options": {}}] if len(targets) > 1 else []
    transformations.append(
        {
            "id": "organize",
            "options": {"excludeByName": {"Time": True, "__name__": True}, "renameByName": dict(columns or {})},
        }
    )
    return _panel(
        "table",
        title,
        [{**t, "format": "table", "instant": True, "range": False} for t in targets],
        w,
        h,
        description,
        fieldConfig={"defaults": {}, "overrides": list(overrides)},
        options={"showHeader": True, "cellHeight": "sm"},
        transformations=transformations,
    )


def heatmap(title: str, *targets: Json, w: int = 12, h: int = 8, description: str = "") -> Json:
    return _panel(
        "heatmap",
        title,
        targets,
        w,
        h,
        description,
        interval="1m",
        options={
            "calculate": False,
            "cellGap": 1,
            "color": {"mode": "scheme", "scheme": "Oranges", "exponent": 0.5, "steps": 64},
            "yAxis": {"axisPlacement": "left"},
            "rowsFrame": {"layout": "auto"},
            "tooltip": {"show": True, "yHistogram": True},
        },
    )


def row(title: str, *panels: Json) -> tuple[str, list[Json]]:
    return title, list(panels)


def value_mapping(*entries: tuple[str, str, str]) -> Json:
    """(value, text, color) entries as one Grafana value mapping."""
    return {
        "type": "value",
        "options": {v: {"text": text, "color": color, "index": i} for i, (v, text, color) in enumerate(entries)},
    }


VERDICT = value_mapping(("1", "pass", "green"), ("0", "inconclusive", "yellow"), ("-1", "fail", "red"))


def flag(ok_when: str) -> Json:
    """A 0/1 gauge's mapping: `ok_when` ("0" or "1") is green, the other red."""
    bad = "1" if ok_when == "0" else "0"
    return value_mapping(
        (ok_when, "yes" if ok_when == "1" else "no", "green"), (bad, "yes" if bad == "1" else "no", "red")
    )


def dashed(pattern: str) -> Json:
    """Override: series whose name matches `pattern` are drawn dashed, without fill (bounds)."""
    return {
        "matcher": {"id": "byRegexp", "options": pattern},
        "properties": [
            {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
            {"id": "custom.fillOpacity", "value": 0},
        ],
    }


# Template variables ---------------------------------------------------------------------------------


def datasource_variable() -> Json:
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
        "regex": "",
        "options": [],
    }


def query_variable(name: str, query: str, *, multi: bool = True, label: str | None = None) -> Json:
    """A variable from label_values(); refreshed on time range change, so chained variables follow their parents."""
    v: Json = {
        "name": name,
        "label": label or name,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"{name}-variable"},
        "definition": query,
        "current": {},
        "hide": 0,
        "refresh": 2,
        "regex": "",
        "sort": 1,
        "options": [],
        "multi": multi,
        "includeAll": multi,
    }
    if multi:
        v["allValue"] = ".*"
    return v


# Dashboards -----------------------------------------------------------------------------------------


def dashboard(
    uid: str, title: str, description: str, variables: Sequence[Json], rows: Sequence[tuple[str, list[Json]]]
) -> Json:
    """Lays the rows out top to bottom, each row's panels left to right, wrapping at 24 columns."""
    panels: list[Json] = []
    y = 0
    for row_title, members in rows:
        panels.append(
            {
                "type": "row",
                "title": row_title,
                "collapsed": False,
                "panels": [],
                "gridPos": {"x": 0, "y": y, "w": WIDTH, "h": 1},
            }
        )
        y += 1
        x = line_height = 0
        for p in members:
            w, h = p["gridPos"]["w"], p["gridPos"]["h"]
            if x + w > WIDTH:
                x, y, line_height = 0, y + line_height, 0
            p["gridPos"] = {"x": x, "y": y, "w": w, "h": h}
            panels.append(p)
            x, line_height = x + w, max(line_height, h)
        y += line_height
    for i, p in enumerate(panels, start=1):
        p["id"] = i
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["inferwatch"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "links": [
            {
                "type": "dashboards",
                "title": "inferwatch",
                "tags": ["inferwatch"],
                "asDropdown": True,
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "templating": {"list": [datasource_variable(), *variables]},
        "panels": panels,
    }


def rate(series: str, by: str) -> str:
    return f"sum by ({by}) (rate({series}[$__rate_interval]))"


def by_label(counter: str, label: str) -> Json:
    """A key's counter rate per value of one of its labels."""
    return target(rate(counter, f"{BY_KEY}, {label}"), f"{{{{{label}}}}} {KEY_LEGEND}")


def quantiles(
    histogram: str, selector: str, by: str, legend: str, qs: Sequence[float] = (0.5, 0.95, 0.99)
) -> list[Json]:
    return [
        target(
            f"histogram_quantile({q}, sum by ({by}, le) (rate({histogram}_bucket{selector}[$__rate_interval])))",
            f"p{round(q * 100)} {legend}",
        )
        for q in qs
    ]


def overview() -> Json:
    error_ratio = (
        "(sum by (model) (rate(inferwatch_errors_total[$__rate_interval]))"
        " or sum by (model) (rate(inferwatch_events_total[$__rate_interval])) * 0)"
        " / sum by (model) (rate(inferwatch_events_total[$__rate_interval]))"
    )
    invalid_ratio = (
        "sum(rate(inferwatch_events_invalid_total[$__rate_interval])) / (sum(rate(inferwatch_events_invalid_total"
        "[$__rate_interval])) + sum(rate(inferwatch_events_total[$__rate_interval])))"
    )
    freshness = "time() - max by (model, version, variant) (inferwatch_last_event_timestamp_seconds)"
    return dashboard(
        "inferwatch-overview",
        "inferwatch / Overview",
        "Every model at a glance: traffic, errors, latency, ingestion health, drift and label joins.",
        [query_variable("job", "label_values(inferwatch_build_info, job)", multi=False)],
        [
            row(
                "Summary",
                stat(
                    "Events/s", target("sum(rate(inferwatch_events_total[$__rate_interval]))", "events/s"), unit="reqps"
                ),
                stat(
                    "Error ratio",
                    target(
                        "(sum(rate(inferwatch_errors_total[$__rate_interval])) or vector(0))"
                        " / sum(rate(inferwatch_events_total[$__rate_interval]))",
                        "errors",
                    ),
                    unit="percentunit",
                    thresholds=((None, "green"), (0.01, "yellow"), (0.05, "red")),
                ),
                stat(
                    "Invalid records",
                    target(invalid_ratio, "invalid"),
                    unit="percentunit",
                    thresholds=((None, "green"), (0.001, "yellow"), (0.01, "red")),
                    description="Share of records that failed decoding or validation.",
                ),
                stat(
                    "Total consumer lag",
                    target("sum(inferwatch_consumer_lag_records)", "records"),
                    thresholds=((None, "green"), (10000, "yellow"), (100000, "red")),
                ),
                stat(
                    "Stalest key",
                    target(f"max({freshness})", "seconds"),
                    unit="s",
                    thresholds=((None, "green"), (300, "yellow"), (1800, "red")),
                    description="Seconds since the newest event of the key that has been silent longest.",
                ),
                stat(
                    "Drifting streams",
                    target("count(inferwatch_drift_detected == 1) or vector(0)", "streams"),
                    thresholds=((None, "green"), (1, "red")),
                ),
            ),
            row(
                "Traffic",
                timeseries(
                    "Events/s per model", target(rate("inferwatch_events_total", "model"), "{{model}}"), unit="reqps"
                ),
                timeseries(
                    "Error ratio per model",
                    target(error_ratio, "{{model}}"),
                    unit="percentunit",
                    description="Events with status=error over all valid events.",
                ),
            ),
            row(
                "Latency",
                timeseries(
                    "Request latency per model",
                    *quantiles("inferwatch_request_latency_seconds", "", "model", "{{model}}"),
                    unit="s",
                    description="From the logged latency_ms histogram.",
                ),
                timeseries(
                    "Batch processing time",
                    *quantiles("inferwatch_batch_duration_seconds", "", "instance", "{{instance}}", (0.5, 0.99)),
                    unit="s",
                    description="Time to decode, route and fold one polled batch, per daemon replica.",
                ),
            ),
            row(
                "Ingestion",
                timeseries(
                    "Invalid records/s by reason",
                    target(rate("inferwatch_events_invalid_total", "reason"), "{{reason}}"),
                    unit="reqps",
                ),
                timeseries(
                    "Events away from their model's partition/s",
                    target(rate("inferwatch_events_unkeyed_total", "model"), "{{model}}"),
                    unit="reqps",
                    description="Producers do not key by model: set source.kafka.repartition (docs/operations.md).",
                ),
                timeseries(
                    "Implausible values/s by field",
                    target(rate("inferwatch_values_out_of_range_total", "field"), "{{field}}"),
                    unit="reqps",
                    description="Values dropped from valid events as past plausibility.* (the events still count).",
                ),
                timeseries(
                    "Consumer lag",
                    target("max by (topic, partition) (inferwatch_consumer_lag_records)", "{{topic}}/{{partition}}"),
                    description="High watermark minus the consumer's position, per partition.",
                ),
                timeseries(
                    "Freshness per key",
                    target(freshness, "{{model}} {{version}}/{{variant}}"),
                    unit="s",
                    description="Seconds since the newest event of each (model, version, variant).",
                ),
                timeseries(
                    "Source errors/s",
                    target(rate("inferwatch_source_errors_total", "operation"), "{{operation}}"),
                    target(rate("inferwatch_dead_letter_records_total", "outcome"), "dead letter {{outcome}}"),
                    unit="reqps",
                    description="Failed Kafka operations, and invalid records copied to the dead-letter topic.",
                ),
                timeseries(
                    "Cardinality overflow/s",
                    target(rate("inferwatch_cardinality_overflow_total", "dimension"), "{{dimension}}"),
                    unit="reqps",
                    description="Values folded into __other__ because a cap (limits.*) was reached.",
                ),
                timeseries(
                    "Broker contact per replica",
                    target("min by (instance) (inferwatch_source_up)", "{{instance}} up"),
                    target(
                        "time() - max by (instance) (inferwatch_source_last_contact_timestamp_seconds)",
                        "{{instance}} since the last answer",
                    ),
                    min=0,
                    overrides=[
                        {
                            "matcher": {"id": "byFrameRefID", "options": "B"},
                            "properties": [
                                {"id": "unit", "value": "s"},
                                {"id": "custom.axisPlacement", "value": "right"},
                            ],
                        }
                    ],
                    description="Left: 1 while a Kafka broker has answered within source.kafka.session_timeout_ms,"
                    " 0 during an outage. Right: seconds since a broker last answered.",
                ),
            ),
            row(
                "Drift and labels",
                timeseries(
                    "Drifting streams per model",
                    target("count by (model) (inferwatch_drift_detected == 1)", "{{model}}"),
                    description="Streams whose latest drift detection is younger than drift.hold_seconds.",
                ),
                timeseries(
                    "Drift streams by state",
                    target("sum by (state) (inferwatch_drift_streams)", "{{state}}"),
                ),
                timeseries(
                    "Label join outcomes/s",
                    target(rate("inferwatch_labels_total", "outcome"), "{{outcome}}"),
                    unit="reqps",
                ),
                timeseries(
                    "Label join entries",
                    target("sum by (store) (inferwatch_label_join_entries)", "{{store}}"),
                    description="Predictions waiting for labels, and labels waiting for predictions.",
                ),
            ),
            row(
                "Daemon",
                table(
                    "Build info",
                    target("max by (job, instance, version, python_version) (inferwatch_build_info)", "{{instance}}"),
                    columns={"version": "inferwatch", "python_version": "Python", "Value": "info"},
                    w=8,
                ),
                timeseries(
                    "Scrape target up",
                    target('up{job=~"$job"}', "{{instance}}"),
                    description="Prometheus' up for the scrape job that exports inferwatch_build_info.",
                    w=8,
                    min=0,
                    max=1,
                ),
                timeseries(
                    "Alertmanager pushes/s",
                    target(rate("inferwatch_alertmanager_pushes_total", "url, outcome"), "{{outcome}} {{url}}"),
                    unit="reqps",
                    w=8,
                    description="Pushes of the firing alerts to each Alertmanager (alertmanager_push.urls).",
                ),
            ),
            row(
                "Checkpoints",
                timeseries(
                    "Checkpoints written",
                    target("sum by (outcome) (inferwatch_checkpoints_total)", "{{outcome}}"),
                    description="Failed ones leave offsets uncommitted until one succeeds: nothing is lost.",
                    w=8,
                ),
                timeseries(
                    "Checkpoint duration and write in flight",
                    target("max by (instance) (inferwatch_checkpoint_duration_seconds)", "took {{instance}}"),
                    target("max by (instance) (inferwatch_checkpoint_write_age_seconds)", "in flight {{instance}}"),
                    unit="s",
                    w=8,
                    description="A write in flight for long (the broker away) holds the commits back.",
                ),
                stat(
                    "Checkpoint age",
                    target("time() - max(inferwatch_checkpoint_last_timestamp_seconds)"),
                    unit="s",
                    w=8,
                ),
            ),
            row(
                "Retraining webhooks",
                timeseries(
                    "Alertmanager notifications received",
                    target("sum by (outcome) (inferwatch_alertmanager_notifications_total)", "{{outcome}}"),
                    description="POST /v1/alertmanager by outcome: accepted, unauthorized, malformed.",
                    w=8,
                ),
                timeseries(
                    "Retraining triggers",
                    target("sum by (policy, outcome) (inferwatch_retraining_triggers_total)", "{{policy}} {{outcome}}"),
                    description="Alerts matched by a retraining policy: fired, duplicate (a re-send), cooldown, ...",
                    w=8,
                ),
                stat(
                    "Alerts waiting to be sustained",
                    target("sum(inferwatch_retraining_pending_alerts)"),
                    w=8,
                ),
                timeseries(
                    "Webhook deliveries",
                    target(
                        "sum by (endpoint, outcome) (inferwatch_webhook_deliveries_total)", "{{outcome}} {{endpoint}}"
                    ),
                    w=6,
                ),
                timeseries(
                    "Webhook attempts",
                    target("sum by (endpoint, result) (inferwatch_webhook_attempts_total)", "{{result}} {{endpoint}}"),
                    description="Every POST, by result: 2xx, 4xx, 5xx, timeout, error. Retries are attempts too.",
                    w=6,
                ),
                timeseries(
                    "Webhooks pending and oldest age",
                    target("max by (endpoint) (inferwatch_webhook_pending)", "pending {{endpoint}}"),
                    target(
                        "max by (endpoint) (inferwatch_webhook_oldest_pending_age_seconds)",
                        "oldest age (s) {{endpoint}}",
                    ),
                    w=6,
                ),
                stat(
                    "Endpoints disabled (410)",
                    target("max by (endpoint) (inferwatch_webhook_endpoint_disabled)", "{{endpoint}}"),
                    w=6,
                    thresholds=((None, "green"), (1, "red")),
                ),
            ),
        ],
    )


KEY = 'model=~"$model", version=~"$version", variant=~"$variant"'
KEY_LEGEND = "{{model}} {{version}}/{{variant}}"
BY_KEY = "model, version, variant"


def model() -> Json:
    sel = "{" + KEY + "}"
    events = f"inferwatch_events_total{sel}"
    return dashboard(
        "inferwatch-model",
        "inferwatch / Model",
        "One model in detail: traffic, errors, latency, predictions, quality and drift, per version and variant.",
        [
            query_variable("model", "label_values(inferwatch_events_total, model)"),
            query_variable("version", 'label_values(inferwatch_events_total{model=~"$model"}, version)'),
            query_variable(
                "variant", 'label_values(inferwatch_events_total{model=~"$model", version=~"$version"}, variant)'
            ),
        ],
        [
            row(
                "Traffic",
                timeseries("Events/s", target(rate(events, BY_KEY), KEY_LEGEND), unit="reqps", w=8),
                timeseries(
                    "Errors/s by error type",
                    by_label(f"inferwatch_errors_total{sel}", "error_type"),
                    unit="reqps",
                    w=8,
                ),
                timeseries(
                    "Freshness",
                    target(f"time() - max by ({BY_KEY}) (inferwatch_last_event_timestamp_seconds{sel})", KEY_LEGEND),
                    unit="s",
                    w=8,
                    description="Seconds since the newest event.",
                ),
            ),
            row(
                "Latency",
                timeseries(
                    "Request latency",
                    *quantiles("inferwatch_request_latency_seconds", sel, BY_KEY, KEY_LEGEND),
                    unit="s",
                    w=8,
                ),
                timeseries(
                    "LLM time to first token",
                    *quantiles("inferwatch_llm_time_to_first_token_seconds", sel, BY_KEY, KEY_LEGEND),
                    unit="s",
                    w=8,
                    description="Only for models that log ttft_ms.",
                ),
                timeseries(
                    "LLM tokens/s",
                    target(rate(f"inferwatch_llm_input_tokens_total{sel}", BY_KEY), f"in {KEY_LEGEND}"),
                    target(rate(f"inferwatch_llm_output_tokens_total{sel}", BY_KEY), f"out {KEY_LEGEND}"),
                    w=8,
                    description="Only for models that log tokens_in or tokens_out.",
                ),
            ),
            row(
                "LLM serving",
                timeseries(
                    "LLM time per output token",
                    *quantiles("inferwatch_llm_time_per_output_token_seconds", sel, BY_KEY, KEY_LEGEND),
                    unit="s",
                    w=8,
                    description="tpot_ms as logged, else (latency - TTFT) / (output tokens - 1).",
                ),
                timeseries(
                    "LLM output tokens per second of a request",
                    *quantiles("inferwatch_llm_output_tokens_per_second", sel, BY_KEY, KEY_LEGEND, (0.5, 0.05)),
                    w=8,
                    description="tokens_per_second as logged, else output tokens / latency. p5: the slow tail.",
                ),
                timeseries(
                    "LLM finish reasons",
                    by_label(f"inferwatch_llm_finish_reasons_total{sel}", "finish_reason"),
                    unit="reqps",
                    w=8,
                ),
                timeseries(
                    "Goodput",
                    target(
                        f'sum by ({BY_KEY}) (rate(inferwatch_slo_good_requests_total{{{KEY}, slo="goodput"}}'
                        "[$__rate_interval]))"
                        f' / sum by ({BY_KEY}) (rate(inferwatch_slo_requests_total{{{KEY}, slo="goodput"}}'
                        "[$__rate_interval]))",
                        f"goodput {KEY_LEGEND}",
                    ),
                    target(
                        'inferwatch_slo_objective{model=~"$model", slo="goodput"} * on (model) group_right ()'
                        f' group by ({BY_KEY}) (inferwatch_slo_requests_total{{{KEY}, slo="goodput"}})',
                        f"objective {KEY_LEGEND}",
                    ),
                    unit="percentunit",
                    w=12,
                    max=1,
                    description="The share of requests that are good: not an error, and within every per-request"
                    " objective of the model (config slo: latency, or TTFT, time per output token and e2e for LLM"
                    ' requests). The objective: inferwatch_slo_objective{slo="goodput"}.',
                ),
                timeseries(
                    "Requests within each objective",
                    target(
                        f"sum by ({BY_KEY}, slo) (rate(inferwatch_slo_good_requests_total{sel}[$__rate_interval]))"
                        f" / sum by ({BY_KEY}, slo) (rate(inferwatch_slo_requests_total{sel}[$__rate_interval]))",
                        f"{{{{slo}}}} {KEY_LEGEND}",
                    ),
                    unit="percentunit",
                    w=12,
                    max=1,
                    description="Per objective, the share of the requests judged against it that met it.",
                ),
                timeseries(
                    "LLM prompt and output length",
                    *quantiles("inferwatch_llm_prompt_length_tokens", sel, BY_KEY, f"prompt {KEY_LEGEND}", (0.5, 0.95)),
                    *quantiles("inferwatch_llm_output_length_tokens", sel, BY_KEY, f"output {KEY_LEGEND}", (0.5, 0.95)),
                    w=12,
                    description="Tokens.",
                ),
                timeseries(
                    "LLM queue and decode time",
                    *quantiles("inferwatch_llm_queue_time_seconds", sel, BY_KEY, f"queue {KEY_LEGEND}", (0.5, 0.95)),
                    *quantiles("inferwatch_llm_decode_time_seconds", sel, BY_KEY, f"decode {KEY_LEGEND}", (0.5, 0.95)),
                    unit="s",
                    w=12,
                    description="Only for models that log queue_ms or decode_ms.",
                ),
            ),
            row(
                "Predictions",
                heatmap(
                    "Prediction score distribution",
                    target(
                        f"sum by (le) (increase(inferwatch_prediction_score_bucket{sel}[$__interval]))",
                        "{{le}}",
                        heatmap=True,
                    ),
                    w=8,
                    description="Score, or the top class probability, of the selected keys together.",
                ),
                timeseries(
                    "Prediction score quantiles",
                    *quantiles("inferwatch_prediction_score", sel, BY_KEY, KEY_LEGEND, (0.1, 0.5, 0.9)),
                    w=8,
                ),
                timeseries(
                    "Predictions/s by class",
                    target(
                        rate(f"inferwatch_predictions_total{sel}", f"{BY_KEY}, class"), f"{{{{class}}}} {KEY_LEGEND}"
                    ),
                    unit="reqps",
                    w=8,
                ),
                timeseries(
                    "Missing features/s",
                    target(
                        rate(f"inferwatch_feature_missing_total{sel}", f"{BY_KEY}, feature") + " > 0",
                        f"{{{{feature}}}} {KEY_LEGEND}",
                    ),
                    unit="reqps",
                    w=24,
                    description="Events that lacked a tracked feature or had it null (never-missing ones hidden).",
                ),
            ),
            row(
                "Quality",
                timeseries(
                    "Realized quality (classification)",
                    target(
                        f'max by ({BY_KEY}, metric) (inferwatch_model_performance{{{KEY}, slice_feature="__all__",'
                        f' metric=~"{CLASSIFICATION}"}})',
                        f"{{{{metric}}}} {KEY_LEGEND}",
                    ),
                    unit="percentunit",
                    w=8,
                    description="Over the window of labelled predictions.",
                ),
                timeseries(
                    "Realized error metrics",
                    target(
                        f'max by ({BY_KEY}, metric) (inferwatch_model_performance{{{KEY}, slice_feature="__all__",'
                        f' metric!~"{CLASSIFICATION}"}})',
                        f"{{{{metric}}}} {KEY_LEGEND}",
                    ),
                    w=8,
                    description="log_loss, brier, ece (classifiers with scores); mae, rmse, mape (regressors).",
                ),
                timeseries(
                    "Estimated vs realized accuracy",
                    target(
                        f'max by ({BY_KEY}) (inferwatch_model_performance_estimated{{{KEY}, metric="accuracy"}})',
                        f"estimated {KEY_LEGEND}",
                    ),
                    target(
                        f'max by ({BY_KEY}) (inferwatch_model_performance{{{KEY}, metric="accuracy",'
                        ' slice_feature="__all__"})',
                        f"realized {KEY_LEGEND}",
                    ),
                    unit="percentunit",
                    w=8,
                    description="Label-free CBPE estimate over the latest predictions, next to the labelled accuracy.",
                    overrides=[dashed("^estimated")],
                ),
                timeseries(
                    "Labelled predictions in the window",
                    target(
                        f'max by ({BY_KEY}) (inferwatch_model_performance_samples{{{KEY}, slice_feature="__all__"}})',
                        f"labelled {KEY_LEGEND}",
                    ),
                    w=8,
                    min=0,
                    description="Realized figures are exported from accuracy.min_samples (100) labels in the window.",
                ),
                table(
                    "Quality by slice",
                    target(
                        f"max by ({BY_KEY}, metric, slice_feature, slice_value) (inferwatch_model_performance{{{KEY},"
                        ' slice_feature!="__all__"})',
                        "{{slice_feature}}={{slice_value}}",
                    ),
                    columns={"Value": "value"},
                ),
            ),
            row(
                "Drift",
                timeseries(
                    "Drift score per stream",
                    target(
                        f"max by ({BY_KEY}, stream, detector) (inferwatch_drift_score{sel})",
                        f"{{{{stream}}}} ({{{{detector}}}}) {KEY_LEGEND}",
                    ),
                    w=8,
                    description="The scans' evidence (their statistic over its threshold: 1 fires), or the last window"
                    " statistic of a window test (absent for River detectors).",
                ),
                timeseries(
                    "Drift detected per stream",
                    target(
                        f"max by ({BY_KEY}, stream, detector) (inferwatch_drift_detected{sel})",
                        f"{{{{stream}}}} ({{{{detector}}}}) {KEY_LEGEND}",
                    ),
                    w=8,
                    min=0,
                    max=1,
                    description="1 from a detection until the stream has learned a new reference, and for"
                    " drift.hold_seconds after it.",
                ),
                timeseries(
                    "Drift detections",
                    target(
                        f"sum by ({BY_KEY}, stream) (increase(inferwatch_drift_events_total{sel}[$__interval]))",
                        f"{{{{stream}}}} {KEY_LEGEND}",
                    ),
                    w=8,
                    bars=True,
                    min_interval="1m",
                ),
            ),
        ],
    )


def canary() -> Json:
    sel = 'model=~"$model", variant=~"$variant"'
    legend = "{{model}}/{{variant}} vs {{baseline}}"
    by = "model, variant, baseline"

    def per_metric(family: str, extra: str = "") -> str:
        return f"max by ({by}, metric) (inferwatch_canary_metric_{family}{{{sel}{extra}}})"

    effects = [
        timeseries(
            f"Effect: {metric}",
            target(per_metric("effect", f', metric="{metric}"'), f"effect {legend}"),
            target(per_metric("effect_lower", f', metric="{metric}"'), f"lower {legend}"),
            target(per_metric("effect_upper", f', metric="{metric}"'), f"upper {legend}"),
            w=8,
            description="Candidate minus baseline, with its confidence sequence (lower, upper).",
            overrides=[dashed("^(lower|upper) ")],
        )
        for metric in CANARY_METRICS
    ]
    return dashboard(
        "inferwatch-canary",
        "inferwatch / Canary",
        "Always-valid canary verdicts of each variant against the model's baseline variant.",
        [
            query_variable("model", "label_values(inferwatch_canary_verdict, model)"),
            query_variable("variant", 'label_values(inferwatch_canary_verdict{model=~"$model"}, variant)'),
        ],
        [
            row(
                "Verdict",
                stat(
                    "Verdict",
                    target(f"min by ({by}) (inferwatch_canary_verdict{{{sel}}})", legend),
                    w=8,
                    mappings=[VERDICT],
                    description="1 pass, 0 inconclusive, -1 fail; the worst over replicas.",
                ),
                stat(
                    "Score",
                    target(f"min by ({by}) (inferwatch_canary_score{{{sel}}})", legend),
                    w=8,
                    min=0,
                    max=100,
                    thresholds=((None, "red"), (50, "yellow"), (75, "green")),
                    description="100 x the mean over judged metrics of 1 (pass), 0.5 (inconclusive), 0 (fail);"
                    " 0 for a fail verdict.",
                ),
                stat(
                    "Requests per arm",
                    target(f"sum by ({by}, arm) (inferwatch_canary_requests{{{sel}}})", f"{{{{arm}}}} {legend}"),
                    w=8,
                    description="Since the comparison (re)started.",
                ),
                timeseries(
                    "Verdict over time",
                    target(f"min by ({by}) (inferwatch_canary_verdict{{{sel}}})", legend),
                    min=-1,
                    max=1,
                    mappings=[VERDICT],
                ),
                timeseries(
                    "Requests per arm over time",
                    target(f"sum by ({by}, arm) (inferwatch_canary_requests{{{sel}}})", f"{{{{arm}}}} {legend}"),
                ),
            ),
            row(
                "Metrics",
                table(
                    "Per-metric verdict",
                    target(per_metric("verdict"), "verdict {{metric}}"),
                    target(per_metric("effect"), "effect {{metric}}"),
                    target(per_metric("effect_lower"), "lower {{metric}}"),
                    target(per_metric("effect_upper"), "upper {{metric}}"),
                    target(per_metric("p_value"), "p-value {{metric}}"),
                    columns={
                        "Value #A": "verdict",
                        "Value #B": "effect",
                        "Value #C": "lower",
                        "Value #D": "upper",
                        "Value #E": "p-value",
                    },
                    overrides=[
                        {
                            "matcher": {"id": "byName", "options": "verdict"},
                            "properties": [
                                {"id": "mappings", "value": [VERDICT]},
                                {"id": "custom.cellOptions", "value": {"type": "color-background"}},
                            ],
                        }
                    ],
                    description="Per metric: 1 within tolerance, 0 undecided, -1 worse beyond tolerance.",
                ),
                *effects,
                timeseries(
                    "p-values",
                    target(per_metric("p_value"), f"{{{{metric}}}} {legend}"),
                    w=8,
                    min=0,
                    max=1,
                    description="Always-valid mSPRT p-value of 'difference = tolerance' (running minimum).",
                ),
            ),
            row(
                "Quantiles",
                *(
                    timeseries(
                        f"Quantile effects: {measure}",
                        *(
                            target(
                                f"max by ({by}, percentile) (inferwatch_canary_quantile_{family}"
                                f'{{{sel}, metric="{measure}"}})',
                                f"{label} {{{{percentile}}}} {legend}",
                            )
                            for family, label in (
                                ("effect", "effect"),
                                ("effect_lower", "lower"),
                                ("effect_upper", "upper"),
                            )
                        ),
                        w=8,
                        unit="percentunit",
                        description="The candidate's p50, p90 and p99 over the baseline's, minus 1, with bands valid"
                        " at every look (quantile confidence sequences; +Inf while unbounded).",
                        overrides=[dashed("^(lower|upper) ")],
                    )
                    for measure in ("latency", "ttft", "tpot")
                ),
            ),
        ],
    )


def shadow() -> Json:
    sel = '{model=~"$model"}'
    legend = "{{model}} ({{role}})"

    def gauge(name: str, labels: str = "") -> str:
        by = "model, role" + (f", {labels}" if labels else "")
        return f"max by ({by}) ({name}{sel})"

    def pair(name: str) -> str:
        return f"max by (model, production) ({name}{sel})"

    pair_legend = "{{model}} vs {{production}}"
    return dashboard(
        "inferwatch-shadow",
        "inferwatch / Shadow benchmarks",
        "Shadow benchmarks: logged inputs replayed against production and candidate models.",
        [query_variable("model", "label_values(inferwatch_shadow_latency_seconds, model)")],
        [
            row(
                "Runs",
                stat(
                    "Last run age",
                    target("time() - max(inferwatch_shadow_last_run_timestamp_seconds)", "age"),
                    unit="s",
                    description="Since the latest successful run started.",
                ),
                stat("Run duration", target("max(inferwatch_shadow_run_duration_seconds)", "duration"), unit="s"),
                stat(
                    "Runs in range",
                    target("sum by (outcome) (increase(inferwatch_shadow_runs_total[$__range]))", "{{outcome}}"),
                    decimals=0,
                ),
                table(
                    "Environment",
                    target(
                        "max by (cpu, gpu, onnxruntime, torch, providers) (inferwatch_shadow_environment_info)",
                        "{{cpu}}",
                    ),
                    columns={"Value": "info"},
                    w=12,
                    h=4,
                ),
                timeseries(
                    "Runs by outcome",
                    target(
                        "sum by (outcome) (increase(inferwatch_shadow_runs_total[$__interval]))",
                        "{{outcome}}",
                    ),
                    bars=True,
                    min_interval="5m",
                    w=24,
                ),
            ),
            row(
                "Status",
                table(
                    "Model status",
                    target(gauge("inferwatch_shadow_model_status", "status") + " == 1", legend),
                    columns={"Value": "current"},
                    w=8,
                    description="ok, skipped (fewer than shadow.min_samples logged inputs) or failed.",
                ),
                stat(
                    "Regression",
                    target(gauge("inferwatch_shadow_regression"), legend),
                    w=8,
                    mappings=[flag("0")],
                    description="p99 worse than the model's recent stable runs on this hardware beyond their noise.",
                ),
                stat(
                    "Stable",
                    target(gauge("inferwatch_shadow_stable"), legend),
                    w=8,
                    mappings=[flag("1")],
                    description="No: the single-stream run was flagged unstable and should not be trusted.",
                ),
                stat(
                    "Skew detected",
                    target(gauge("inferwatch_shadow_skew_detected"), legend),
                    w=8,
                    mappings=[flag("0")],
                ),
                stat(
                    "Server latency bound met",
                    target(gauge("inferwatch_shadow_server_latency_bound_met"), legend),
                    w=8,
                    mappings=[flag("1")],
                ),
                stat("Samples", target(gauge("inferwatch_shadow_samples"), legend), w=8),
                stat(
                    "Mapped features never seen",
                    target(gauge("inferwatch_shadow_unseen_features"), legend),
                    w=8,
                    thresholds=[(None, "green"), (1, "red")],
                ),
            ),
            row(
                "Latency",
                timeseries(
                    "Latency quantiles per scenario",
                    target(
                        gauge("inferwatch_shadow_latency_seconds", "scenario, quantile"),
                        "{{model}} ({{role}}) {{scenario}} q{{quantile}}",
                    ),
                    unit="s",
                ),
                timeseries(
                    "Throughput by batch size",
                    target(
                        gauge("inferwatch_shadow_throughput_inferences_per_second", "batch_size"),
                        "{{model}} ({{role}}) batch {{batch_size}}",
                    ),
                    unit="ops",
                ),
                timeseries(
                    "Cold start by phase",
                    target(gauge("inferwatch_shadow_cold_start_seconds", "phase"), "{{model}} ({{role}}) {{phase}}"),
                    unit="s",
                ),
                timeseries(
                    "Latency ratio (candidate / production p50)",
                    target(pair("inferwatch_shadow_latency_ratio"), f"ratio {pair_legend}"),
                    target(pair("inferwatch_shadow_latency_ratio_lower"), f"lower {pair_legend}"),
                    target(pair("inferwatch_shadow_latency_ratio_upper"), f"upper {pair_legend}"),
                    description="Lower above 1: the candidate is slower. Upper below 1: it is faster.",
                    overrides=[dashed("^(lower|upper) ")],
                ),
            ),
            row(
                "Outputs",
                timeseries(
                    "Agreement with production",
                    target(pair("inferwatch_shadow_agreement"), pair_legend),
                    unit="percentunit",
                    w=8,
                    description="Classifiers: share of samples where both predict the same class.",
                ),
                timeseries(
                    "Mean absolute difference",
                    target(pair("inferwatch_shadow_mean_abs_difference"), pair_legend),
                    w=8,
                    description="Regressors: mean absolute difference of the two models' outputs.",
                ),
                timeseries(
                    "Serving skew",
                    target(gauge("inferwatch_shadow_skew"), legend),
                    unit="percentunit",
                    w=8,
                    description="Share of samples whose replayed output differs from the one logged in production.",
                ),
                timeseries(
                    "Quality on replayed samples",
                    target(gauge("inferwatch_shadow_quality", "metric"), "{{metric}} " + legend),
                    w=24,
                ),
            ),
            row(
                "Cost",
                timeseries(
                    "Model size", target(gauge("inferwatch_shadow_model_size_bytes"), legend), unit="bytes", w=8
                ),
                timeseries(
                    "Cost per 1,000 inferences",
                    target(gauge("inferwatch_shadow_cost_per_thousand_inferences"), legend),
                    w=8,
                    description="shadow.hourly_price at the best offline throughput (absent without a price).",
                ),
                timeseries(
                    "Energy per inference",
                    target(gauge("inferwatch_shadow_energy_per_inference_joules"), legend),
                    unit="joule",
                    w=8,
                    description="From the GPU's energy counter; absent where the hardware reports none.",
                ),
            ),
        ],
    )


# Public API -----------------------------------------------------------------------------------------


def build() -> dict[str, Json]:
    """File name → dashboard."""
    return {f"{d['uid']}.json": d for d in (overview(), model(), canary(), shadow())}


def panels(dashboard: Json) -> list[Json]:
    """Every panel, those nested in collapsed rows included."""
    out: list[Json] = []
    for p in dashboard.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def queries(dashboard: Json) -> list[tuple[str, str]]:
    """(panel title, expr) for every target of every panel."""
    return [(p["title"], t["expr"]) for p in panels(dashboard) for t in p.get("targets", []) if t.get("expr")]


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Replaces Grafana variables ($var, ${var}, ${var:fmt}, [[var]]) by `values`, builtins by defaults.

    Unknown variables are left as they are.
    """
    merged = {**BUILTINS, **values}

    def replace(m: re.Match[str]) -> str:
        name = next(g for g in m.groups() if g)
        return merged.get(name, m.group(0))

    return _VARIABLE.sub(replace, expr)


def render() -> dict[str, str]:
    return {name: json.dumps(d, indent=2, ensure_ascii=False) + "\n" for name, d in build().items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the files differ from what would be written")
    parser.add_argument("--dir", type=Path, default=OUT_DIR, help=f"output directory (default {OUT_DIR})")
    args = parser.parse_args(argv)
    out: Path = args.dir
    files = render()
    stale = sorted(p.name for p in out.glob("*.json") if p.name not in files) if out.is_dir() else []
    if args.check:
        differ = [n for n, text in files.items() if not (out / n).is_file() or (out / n).read_text() != text]
        for name in differ + stale:
            print(f"{out / name}: out of date; run python deploy/grafana/dashboards.py", file=sys.stderr)
        return 1 if differ or stale else 0
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out / name).write_text(text)
    for name in stale:
        (out / name).unlink()
    print(f"wrote {len(files)} dashboards to {out}" + (f", removed {', '.join(stale)}" if stale else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
