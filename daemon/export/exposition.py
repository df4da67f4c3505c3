"""The Prometheus exposition: reads pipeline state at scrape time, never per event.

It writes the text format (0.0.4) directly. prometheus_client's generic Collector path builds a
Sample object per series and took ~1 s per scrape at 1,000 keys (42k series); this takes tens of
milliseconds (bench/scrape.py). Every family it can emit is listed in FAMILIES, which
`docs/metrics.md` mirrors (a test checks).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

from daemon import __version__
from daemon.config import MetricsConfig
from daemon.ingest.sources import TopicPartition
from daemon.monitors.canary import VERDICT_VALUE, CanaryMonitor
from daemon.monitors.drift import STREAM_STATES, KeyDrift
from daemon.monitors.quality import KeyPerformance
from daemon.monitors.traffic import Histogram
from daemon.pipeline import KeyState, Pipeline
from daemon.state.routing import Key

KEY_LABELS = ["model", "version", "variant"]
DRIFT_LABELS = [*KEY_LABELS, "stream", "detector"]
CANARY_LABELS = ["model", "variant", "baseline"]
CANARY_METRIC_LABELS = [*CANARY_LABELS, "metric"]
SHADOW_LABELS = ["model", "role"]
SHADOW_PAIR_LABELS = ["model", "production"]

# name (without _total for counters) → (type, help, labels)
FAMILIES: dict[str, tuple[str, str, list[str]]] = {
    "inferwatch_build_info": ("gauge", "inferwatch build; always 1.", ["version", "python_version"]),
    "inferwatch_events": ("counter", "Valid inference events consumed.", KEY_LABELS),
    "inferwatch_events_invalid": (
        "counter",
        "Records that failed decoding or validation, by reason.",
        ["reason"],
    ),
    "inferwatch_errors": ("counter", "Events with status=error, by error_type.", [*KEY_LABELS, "error_type"]),
    "inferwatch_request_latency_seconds": ("histogram", "Logged request latency (latency_ms).", KEY_LABELS),
    "inferwatch_llm_time_to_first_token_seconds": (
        "histogram",
        "LLM time to first token (ttft_ms).",
        KEY_LABELS,
    ),
    "inferwatch_llm_input_tokens": ("counter", "LLM prompt tokens (tokens_in).", KEY_LABELS),
    "inferwatch_llm_output_tokens": ("counter", "LLM generated tokens (tokens_out).", KEY_LABELS),
    "inferwatch_prediction_score": (
        "histogram",
        "Prediction score, or the top class probability.",
        KEY_LABELS,
    ),
    "inferwatch_predictions": (
        "counter",
        "Predictions by class (bounded; overflow is __other__).",
        [*KEY_LABELS, "class"],
    ),
    "inferwatch_feature_missing": (
        "counter",
        "Events that lacked a feature or had it null, counted from the feature's first sighting.",
        [*KEY_LABELS, "feature"],
    ),
    "inferwatch_last_event_timestamp_seconds": ("gauge", "Timestamp of the newest event seen.", KEY_LABELS),
    "inferwatch_cardinality_overflow": (
        "counter",
        "Values folded into __other__ because a cap was reached, by dimension.",
        ["dimension"],
    ),
    "inferwatch_consumer_lag_records": (
        "gauge",
        "Records between the processed position and the high watermark.",
        ["topic", "partition"],
    ),
    "inferwatch_source_errors": (
        "counter",
        "Failed source operations (broker unreachable, commit refused), by operation.",
        ["operation"],
    ),
    "inferwatch_source_up": (
        "gauge",
        "1 while a Kafka broker has answered (any response: fetch, heartbeat, metadata, commit, join) within "
        "source.kafka.session_timeout_ms; 0 during an outage, and before the first connection.",
        [],
    ),
    "inferwatch_source_last_contact_timestamp_seconds": (
        "gauge",
        "When a Kafka broker last answered (absent before the first connection).",
        [],
    ),
    "inferwatch_dead_letter_records": (
        "counter",
        "Invalid records copied to the dead-letter topic.",
        ["outcome"],
    ),
    "inferwatch_batch_duration_seconds": ("histogram", "Time to process one polled batch.", []),
    "inferwatch_drift_score": (
        "gauge",
        "Last window statistic of a stream's drift test (absent for River detectors, which expose none).",
        DRIFT_LABELS,
    ),
    "inferwatch_drift_detected": (
        "gauge",
        "1 while a stream's last drift detection is younger than drift.hold_seconds, else 0.",
        DRIFT_LABELS,
    ),
    "inferwatch_drift_events": ("counter", "Drift detections per stream.", DRIFT_LABELS),
    "inferwatch_drift_streams": (
        "gauge",
        "Streams by drift-monitoring state: reference, calibrating, active, failed.",
        ["state"],
    ),
    "inferwatch_model_performance": (
        "gauge",
        "Quality over the window of labelled predictions, per metric and slice (__all__ = every event).",
        [*KEY_LABELS, "metric", "slice_feature", "slice_value"],
    ),
    "inferwatch_model_performance_estimated": (
        "gauge",
        "Label-free estimate (CBPE) over the latest predictions.",
        [*KEY_LABELS, "metric"],
    ),
    "inferwatch_labels": (
        "counter",
        "Labels by join outcome: joined, inline, late, unmatched, expired, evicted, duplicate.",
        ["outcome"],
    ),
    "inferwatch_label_join_entries": ("gauge", "Entries waiting in the label join, by store.", ["store"]),
    "inferwatch_canary_verdict": (
        "gauge",
        "Always-valid canary verdict of a variant against the baseline: 1 pass, 0 inconclusive, -1 fail.",
        CANARY_LABELS,
    ),
    "inferwatch_canary_score": ("gauge", "Kayenta-like canary score, 0-100.", CANARY_LABELS),
    "inferwatch_canary_requests": (
        "gauge",
        "Requests per arm since the comparison (re)started.",
        [*CANARY_LABELS, "arm"],
    ),
    "inferwatch_canary_metric_verdict": (
        "gauge",
        "Per-metric verdict: 1 within tolerance, 0 undecided, -1 worse beyond tolerance.",
        CANARY_METRIC_LABELS,
    ),
    "inferwatch_canary_metric_p_value": (
        "gauge",
        "Always-valid p-value (mSPRT) of the metric at its tolerance.",
        CANARY_METRIC_LABELS,
    ),
    "inferwatch_canary_metric_effect": (
        "gauge",
        "Candidate minus baseline (latency: of ln latency, about the relative change).",
        CANARY_METRIC_LABELS,
    ),
    "inferwatch_canary_metric_effect_lower": (
        "gauge",
        "Lower bound of the (1 - alpha) confidence sequence of the effect.",
        CANARY_METRIC_LABELS,
    ),
    "inferwatch_canary_metric_effect_upper": (
        "gauge",
        "Upper bound of the (1 - alpha) confidence sequence of the effect.",
        CANARY_METRIC_LABELS,
    ),
    "inferwatch_alertmanager_pushes": (
        "counter",
        "Pushes of the firing alerts to an Alertmanager (alertmanager_push), by outcome: ok, rejected, error.",
        ["url", "outcome"],
    ),
    "inferwatch_alertmanager_notifications": (
        "counter",
        "Alertmanager webhooks received at POST /v1/alertmanager: accepted, unauthorized, malformed.",
        ["outcome"],
    ),
    "inferwatch_retraining_triggers": (
        "counter",
        "Alerts matched by a retraining policy: fired, duplicate, cooldown, no_model, resolved_early.",
        ["policy", "outcome"],
    ),
    "inferwatch_retraining_pending_alerts": (
        "gauge",
        "Firing alerts waiting to have lasted their policy's sustained_seconds.",
        [],
    ),
    "inferwatch_webhook_deliveries": (
        "counter",
        "Retraining webhooks finished, by outcome: delivered (2xx), failed (given up, or the endpoint answered 410).",
        ["endpoint", "outcome"],
    ),
    "inferwatch_webhook_attempts": (
        "counter",
        "Retraining webhook attempts, by result: 2xx, 4xx, 5xx, timeout, error.",
        ["endpoint", "result"],
    ),
    "inferwatch_webhook_pending": ("gauge", "Deliveries waiting in the outbox.", ["endpoint"]),
    "inferwatch_webhook_oldest_pending_age_seconds": (
        "gauge",
        "Age of the oldest delivery waiting in the outbox (0 when none waits).",
        ["endpoint"],
    ),
    "inferwatch_webhook_endpoint_disabled": (
        "gauge",
        "1 once the endpoint answered 410 Gone: nothing more is sent to it.",
        ["endpoint"],
    ),
    "inferwatch_checkpoints": (
        "counter",
        "Checkpoints written (ok) or not (failed: offsets stay uncommitted until one is written).",
        ["outcome"],
    ),
    "inferwatch_checkpoint_duration_seconds": ("gauge", "Time the latest checkpoint took to write.", []),
    "inferwatch_checkpoint_last_timestamp_seconds": ("gauge", "When the latest checkpoint was written.", []),
    "inferwatch_checkpoint_write_age_seconds": (
        "gauge",
        "How long the checkpoint now being written has been on its way to the store (0: none is); offsets wait for it.",
        [],
    ),
    "inferwatch_shadow_runs": ("counter", "Shadow benchmark runs, by outcome (ok, failed).", ["outcome"]),
    "inferwatch_shadow_last_run_timestamp_seconds": ("gauge", "When the latest successful run started.", []),
    "inferwatch_shadow_run_duration_seconds": ("gauge", "How long the latest successful run took.", []),
    "inferwatch_shadow_model_status": (
        "gauge",
        "1 for the status of the model in the latest run: ok, skipped (too few samples), failed.",
        [*SHADOW_LABELS, "status"],
    ),
    "inferwatch_shadow_latency_seconds": (
        "summary",
        "Replayed latency per scenario (single_stream; server under Poisson load), from the latest run.",
        [*SHADOW_LABELS, "scenario", "quantile"],
    ),
    "inferwatch_shadow_stable": (
        "gauge",
        "1 when the single-stream run was stable (last 3 windows' p50 within the tolerance), else 0.",
        SHADOW_LABELS,
    ),
    "inferwatch_shadow_server_latency_bound_met": (
        "gauge",
        "1 when the server scenario's p99 met shadow.server.latency_bound_ms, else 0.",
        SHADOW_LABELS,
    ),
    "inferwatch_shadow_throughput_inferences_per_second": (
        "gauge",
        "Offline throughput at each batch size.",
        [*SHADOW_LABELS, "batch_size"],
    ),
    "inferwatch_shadow_cold_start_seconds": (
        "gauge",
        "Cold start, by phase: session (model load) and first_inference.",
        [*SHADOW_LABELS, "phase"],
    ),
    "inferwatch_shadow_regression": (
        "gauge",
        "1 when the single-stream p99 is worse than the model's recent runs on this hardware beyond their noise.",
        SHADOW_LABELS,
    ),
    "inferwatch_shadow_samples": ("gauge", "Logged inputs replayed in the latest run.", SHADOW_LABELS),
    "inferwatch_shadow_quality": (
        "gauge",
        "Quality on the replayed samples that have labels (accuracy, or mae for regressors).",
        [*SHADOW_LABELS, "metric"],
    ),
    "inferwatch_shadow_skew": (
        "gauge",
        "Share of samples whose replayed output differs from the prediction logged in production.",
        SHADOW_LABELS,
    ),
    "inferwatch_shadow_skew_detected": (
        "gauge",
        "1 when the skew exceeds shadow.skew_tolerance, else 0.",
        SHADOW_LABELS,
    ),
    "inferwatch_shadow_latency_ratio": (
        "gauge",
        "Candidate p50 over production p50 on identical interleaved inputs.",
        SHADOW_PAIR_LABELS,
    ),
    "inferwatch_shadow_latency_ratio_lower": (
        "gauge",
        "Lower bound of the bootstrap confidence interval of the latency ratio.",
        SHADOW_PAIR_LABELS,
    ),
    "inferwatch_shadow_latency_ratio_upper": (
        "gauge",
        "Upper bound of the bootstrap confidence interval of the latency ratio.",
        SHADOW_PAIR_LABELS,
    ),
    "inferwatch_shadow_agreement": (
        "gauge",
        "Share of samples where candidate and production predict the same class (classifiers).",
        SHADOW_PAIR_LABELS,
    ),
    "inferwatch_shadow_mean_abs_difference": (
        "gauge",
        "Mean absolute difference of candidate and production outputs (regressors).",
        SHADOW_PAIR_LABELS,
    ),
    "inferwatch_shadow_model_size_bytes": ("gauge", "Size of the model file.", SHADOW_LABELS),
    "inferwatch_shadow_cost_per_thousand_inferences": (
        "gauge",
        "shadow.hourly_price per 1,000 inferences at the best offline throughput (absent without a price).",
        SHADOW_LABELS,
    ),
    "inferwatch_shadow_energy_per_inference_joules": (
        "gauge",
        "Energy per single-stream inference from the GPU's counter (NVML); absent where none is reported.",
        SHADOW_LABELS,
    ),
    "inferwatch_shadow_environment_info": (
        "gauge",
        "The hardware and runtimes of the latest run; always 1.",
        ["cpu", "gpu", "onnxruntime", "torch", "providers"],
    ),
}


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Batch processing takes ~1-50 ms at normal batch sizes; the top buckets catch stalls.
BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


NOTIFICATION_OUTCOMES = ("accepted", "unauthorized", "malformed")


@dataclass
class CheckpointStats:
    written: int = 0
    failed: int = 0
    last_duration: float = 0.0
    last_timestamp: float = 0.0
    # Unix time the checkpoint now on its way to the store was started; 0.0 while none is.
    writing_since: float = 0.0


@dataclass
class RetrainingStats:
    """The receiver's and the retraining outbox's figures (empty but notifications without retraining)."""

    notifications: Mapping[str, int]
    triggers: Mapping[tuple[str, str], int] = field(default_factory=dict)
    pending_alerts: int = 0
    delivered: Mapping[str, int] = field(default_factory=dict)
    failed: Mapping[str, int] = field(default_factory=dict)
    attempts: Mapping[tuple[str, str], int] = field(default_factory=dict)
    endpoints: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass
class LoopStats:
    """What the main loop reports about itself and its source."""

    lag: Mapping[TopicPartition, int]
    source_errors: dict[str, int]
    dead_letter: dict[str, int]
    batch_duration: Histogram
    # ShadowService.report() when shadow runs are on.
    shadow: Mapping[str, Any] | None = None
    # AlertPusher.sent: (url, outcome) -> pushes.
    pushes: Mapping[tuple[str, str], int] = field(default_factory=dict)
    retraining: RetrainingStats | None = None
    checkpoint: CheckpointStats | None = None
    # The Kafka source's broker contact (None without a Kafka source, as in tests).
    source_up: bool | None = None
    source_last_contact: float | None = None


def escape(value: str) -> str:
    """A label value as the text format wants it."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(x: float) -> str:
    if isinstance(x, int):
        return str(x)
    if x != x:
        return "NaN"
    if x in (float("inf"), float("-inf")):
        return "+Inf" if x > 0 else "-Inf"
    return repr(x)


# (internal name, family) of the per-key histograms.
KEY_HISTOGRAMS = (
    ("latency", "inferwatch_request_latency_seconds"),
    ("ttft", "inferwatch_llm_time_to_first_token_seconds"),
    ("score", "inferwatch_prediction_score"),
)
# The per-key families, in exposition order; _KeyLines.render() returns one chunk for each.
KEY_FAMILIES = (
    "inferwatch_events",
    "inferwatch_errors",
    *(family for _, family in KEY_HISTOGRAMS),
    "inferwatch_llm_input_tokens",
    "inferwatch_llm_output_tokens",
    "inferwatch_predictions",
    "inferwatch_feature_missing",
    "inferwatch_last_event_timestamp_seconds",
    "inferwatch_drift_score",
    "inferwatch_drift_detected",
    "inferwatch_drift_events",
    "inferwatch_model_performance",
    "inferwatch_model_performance_estimated",
)


class _KeyLines:
    """One key's lines as %-templates, built once: a scrape only fills in the numbers.

    One C-level `template % values` per (family, key) is what keeps a 1,000-key scrape fast.
    """

    __slots__ = ("_labelled", "events", "histograms", "last_ts", "lbl", "llm", "rendered")

    def __init__(self, key: Key, les: Mapping[str, Sequence[str]]) -> None:
        model, version, variant = map(escape, key)
        lbl = self.lbl = f'model="{model}",version="{version}",variant="{variant}"'
        self.events = f"inferwatch_events_total{{{lbl}}} "
        self.last_ts = f"inferwatch_last_event_timestamp_seconds{{{lbl}}} "
        self.llm = (f"inferwatch_llm_input_tokens_total{{{lbl}}} ", f"inferwatch_llm_output_tokens_total{{{lbl}}} ")
        self.histograms = {h: histogram_template(family, lbl, les[h]) for h, family in KEY_HISTOGRAMS}
        # family → (label values, template); rebuilt when a key gains a class, feature or error type.
        self._labelled: dict[str, tuple[tuple[str, ...], str]] = {}
        # (version(), one chunk per KEY_FAMILIES entry): an idle key is not re-rendered.
        self.rendered: tuple[tuple[object, ...], list[str]] = ((), [])

    def render(self, state: KeyState, hold_s: float, now: float) -> list[str]:
        """This key's lines, one chunk per KEY_FAMILIES entry ("" where it has none)."""
        s = state.stats
        hist = [
            _histogram(self.histograms[name], h.counts, h.sum) if name == "latency" or h.sum or any(h.counts) else ""
            for name, h in (("latency", s.latency), ("ttft", s.ttft), ("score", s.score))
        ]
        tokens = s.tokens_in or s.tokens_out
        missing = {name: fs.missing(s.events) for name, fs in s.features.items()}
        return [
            self.events + str(s.events),
            self.labelled("inferwatch_errors_total", "error_type", s.errors.counts) if s.errors.counts else "",
            *hist,
            self.llm[0] + str(s.tokens_in) if tokens else "",
            self.llm[1] + str(s.tokens_out) if tokens else "",
            self.labelled("inferwatch_predictions_total", "class", s.classes.counts) if s.classes.counts else "",
            self.labelled("inferwatch_feature_missing_total", "feature", missing) if missing else "",
            self.last_ts + _num(s.last_event_timestamp) if s.last_event_timestamp is not None else "",
            *self._drift(state.drift, hold_s, now),
            *self._quality(state.quality),
        ]

    def _drift(self, drift: KeyDrift | None, hold_s: float, now: float) -> list[str]:
        # Active streams, and those re-learning their reference after a detection (still held).
        active = [m for m in drift.streams.values() if m.state == "active" or m.detections] if drift else []
        if not active:
            return ["", "", ""]
        lbl = self.lbl
        series = [f'{lbl},stream="{escape(m.stream)}",detector="{m.detector}"' for m in active]
        pairs = list(zip(series, active, strict=True))
        score = [f"inferwatch_drift_score{{{ls}}} {_num(m.score)}" for ls, m in pairs if m.score is not None]
        detected = [
            f"inferwatch_drift_detected{{{ls}}} {int(m.last_detection is not None and now - m.last_detection < hold_s)}"
            for ls, m in pairs
        ]
        events = [f"inferwatch_drift_events_total{{{ls}}} {m.detections}" for ls, m in pairs]
        return ["\n".join(score), "\n".join(detected), "\n".join(events)]

    def _quality(self, quality: KeyPerformance) -> list[str]:
        rows = quality.rows() if quality.labelled else []
        if not rows:
            return ["", ""]
        lbl = self.lbl
        realized = [
            f'inferwatch_model_performance{{{lbl},metric="{metric}",slice_feature="{escape(feature)}",'
            f'slice_value="{escape(level)}"}} {_num(value)}'
            for metric, feature, level, value in rows
            if not metric.endswith("_estimated")
        ]
        family = "inferwatch_model_performance_estimated"
        estimated = [
            f'{family}{{{lbl},metric="{metric.removesuffix("_estimated")}"}} {_num(value)}'
            for metric, _, _, value in rows
            if metric.endswith("_estimated")
        ]
        return ["\n".join(realized), "\n".join(estimated)]

    def version(self, state: KeyState, hold_s: float, now: float) -> tuple[object, ...]:
        """What the rendered chunk depends on: it is re-rendered only when this changes."""
        drift = state.drift
        if drift is None:
            return (state.stats.version, state.quality.version)
        # Which streams are still held: looked at only while some detection is recent.
        newest = drift.last_detection
        held: tuple[bool, ...] = ()
        if newest is not None and now - newest < hold_s:
            held = tuple(now - m.last_detection < hold_s for m in drift.streams.values() if m.last_detection)
        return (state.stats.version, state.quality.version, drift.version, held)

    def labelled(self, family: str, label: str, counts: Mapping[str, int]) -> str:
        names = tuple(counts)
        cached = self._labelled.get(family)
        if cached is None or cached[0] != names:
            lbl = self.lbl.replace("%", "%%")
            lines = [f'{family}{{{lbl},{label}="{escape(n).replace("%", "%%")}"}} %d' for n in names]
            cached = self._labelled[family] = (names, "\n".join(lines))
        return cached[1] % tuple(counts.values())


def histogram_template(family: str, lbl: str, les: Sequence[str]) -> str:
    """Bucket, _sum and _count lines of one labelled histogram, as a %-template."""
    lbl = lbl.replace("%", "%%")
    sep = "," if lbl else ""
    braces = f"{{{lbl}}}" if lbl else ""
    lines = [f"{family}_bucket{{{lbl}{sep}{le}}} %d" for le in les]
    return "\n".join([*lines, f"{family}_sum{braces} %s", f"{family}_count{braces} %d"])


class MetricsExposition:
    def __init__(self, pipeline: Pipeline, metrics: MetricsConfig, loop_stats: Callable[[], LoopStats]) -> None:
        self._pipeline = pipeline
        self._hold_s = pipeline.config.drift.hold_seconds
        self._loop_stats = loop_stats
        self._lines: dict[Key, _KeyLines] = {}
        self._les = {
            name: [f'le="{b!r}"' for b in map(float, bounds)] + ['le="+Inf"']
            for name, bounds in (
                ("latency", metrics.latency_buckets_seconds),
                ("ttft", metrics.ttft_buckets_seconds),
                ("score", metrics.score_buckets),
                ("batch", BATCH_BUCKETS),
            )
        }
        self._batch_template = histogram_template("inferwatch_batch_duration_seconds", "", self._les["batch"])

    def _key_lines(self, key: Key) -> _KeyLines:
        lines = self._lines.get(key)
        if lines is None:
            lines = self._lines[key] = _KeyLines(key, self._les)
        return lines

    def render(self) -> bytes:
        p = self._pipeline
        with p.lock:
            # Only keys that changed since the last scrape are formatted, under the lock: with
            # 1,000 changed keys a whole scrape takes ~60 ms (bench/scrape.py), once a scrape
            # interval, and copying the state out first cost as much as formatting it.
            rows = []
            now, hold_s = time.monotonic(), self._hold_s
            streams: dict[str, int] = dict.fromkeys(STREAM_STATES, 0)
            for key, state in p.keys.items():
                kl = self._key_lines(key)
                version = kl.version(state, hold_s, now)
                if kl.rendered[0] != version:
                    kl.rendered = (version, kl.render(state, hold_s, now))
                rows.append(kl)
                if state.drift is not None:
                    for name, n in state.drift.states().items():
                        streams[name] += n
            invalid = dict(p.invalid.counts)
            overflow = dict(p.overflow.counts)
            canary = _canary_lines(p.canary) if p.canary is not None else {}
            labels = {"inline": p.inline_labels}
            join_sizes: dict[str, int] = {}
            if p.join is not None:
                labels.update(p.join.counts)
                sizes = p.join.sizes()
                join_sizes = {"predictions": sizes["predictions"], "held_labels": sizes["held_labels"]}
        loop = self._loop_stats()
        out: list[str] = []
        add = out.append

        _header(out, "inferwatch_build_info")
        add(f'inferwatch_build_info{{version="{escape(__version__)}",python_version="{platform.python_version()}"}} 1')
        chunks = [kl.rendered[1] for kl in rows]
        for i, family in enumerate(KEY_FAMILIES):
            _header(out, family)
            out.extend([chunk for c in chunks if (chunk := c[i])])

        _header(out, "inferwatch_events_invalid")
        out.extend([f'inferwatch_events_invalid_total{{reason="{r}"}} {n}' for r, n in invalid.items()])
        _header(out, "inferwatch_cardinality_overflow")
        for dim in ("key", "class", "feature", "error_type", "slice_level"):
            add(f'inferwatch_cardinality_overflow_total{{dimension="{dim}"}} {overflow.get(dim, 0)}')
        _header(out, "inferwatch_consumer_lag_records")
        for (topic, partition), n in sorted(loop.lag.items()):
            add(f'inferwatch_consumer_lag_records{{topic="{escape(topic)}",partition="{partition}"}} {n}')
        _header(out, "inferwatch_source_errors")
        out.extend([f'inferwatch_source_errors_total{{operation="{op}"}} {n}' for op, n in loop.source_errors.items()])
        _header(out, "inferwatch_dead_letter_records")
        out.extend([f'inferwatch_dead_letter_records_total{{outcome="{o}"}} {n}' for o, n in loop.dead_letter.items()])
        _header(out, "inferwatch_drift_streams")
        out.extend([f'inferwatch_drift_streams{{state="{name}"}} {n}' for name, n in streams.items()])
        _header(out, "inferwatch_labels")
        out.extend([f'inferwatch_labels_total{{outcome="{o}"}} {n}' for o, n in labels.items()])
        if join_sizes:
            _header(out, "inferwatch_label_join_entries")
            out.extend([f'inferwatch_label_join_entries{{store="{k}"}} {n}' for k, n in join_sizes.items()])
        for family in CANARY_FAMILIES:
            if canary.get(family):
                _header(out, family)
                out.extend(canary[family])
        _loop_lines(loop).write(out)
        _header(out, "inferwatch_batch_duration_seconds")
        bd = loop.batch_duration
        add(_histogram(self._batch_template, list(bd.counts), bd.sum))
        add("")
        return "\n".join(out).encode()


CANARY_FAMILIES = [name for name in FAMILIES if name.startswith("inferwatch_canary_")]


def _canary_lines(canary: CanaryMonitor) -> dict[str, list[str]]:
    """The canary families' lines, by family; read under the pipeline lock."""
    out: dict[str, list[str]] = {family: [] for family in CANARY_FAMILIES}
    for model, m in canary.models.items():
        for variant, c in m.comparisons.items():
            lbl = f'model="{escape(model)}",variant="{escape(variant)}",baseline="{escape(c.baseline)}"'
            out["inferwatch_canary_verdict"].append(f"inferwatch_canary_verdict{{{lbl}}} {VERDICT_VALUE[c.verdict]}")
            out["inferwatch_canary_score"].append(f"inferwatch_canary_score{{{lbl}}} {_num(c.score)}")
            for arm, n in zip(("baseline", "candidate"), c.requests, strict=True):
                out["inferwatch_canary_requests"].append(f'inferwatch_canary_requests{{{lbl},arm="{arm}"}} {n}')
            for metric, r in c.metrics.items():
                ml = f'{lbl},metric="{metric}"'
                lk = r.look
                for family, value in (
                    ("inferwatch_canary_metric_verdict", VERDICT_VALUE[r.verdict]),
                    ("inferwatch_canary_metric_p_value", lk.p_value),
                    ("inferwatch_canary_metric_effect", lk.effect),
                    ("inferwatch_canary_metric_effect_lower", lk.lower),
                    ("inferwatch_canary_metric_effect_upper", lk.upper),
                ):
                    out[family].append(f"{family}{{{ml}}} {_num(value)}")
    return out


class _Families:
    """Lines of the families read once a scrape (not per key), by family in the order added.

    `add` names a counter `_total` and leaves a None value out; a family without lines gets no
    header when `write` puts them out.
    """

    def __init__(self) -> None:
        self.lines: dict[str, list[str]] = {}

    def add(self, family: str, labels: str, value: float | None) -> None:
        if value is None:
            return
        name = family + "_total" if FAMILIES[family][0] == "counter" else family
        self.line(family, f"{name}{{{labels}}} {_num(value)}" if labels else f"{name} {_num(value)}")

    def line(self, family: str, text: str) -> None:
        self.lines.setdefault(family, []).append(text)

    def write(self, out: list[str]) -> None:
        for family, lines in self.lines.items():
            _header(out, family)
            out.extend(lines)


def _loop_lines(loop: LoopStats) -> _Families:
    """Broker contact, checkpoints, the receiver and retraining webhooks, Alertmanager pushes, shadow runs."""
    f = _Families()
    if loop.source_up is not None:
        f.add("inferwatch_source_up", "", int(loop.source_up))
    f.add("inferwatch_source_last_contact_timestamp_seconds", "", loop.source_last_contact)
    if loop.checkpoint is not None:
        c = loop.checkpoint
        f.add("inferwatch_checkpoints", 'outcome="ok"', c.written)
        f.add("inferwatch_checkpoints", 'outcome="failed"', c.failed)
        f.add("inferwatch_checkpoint_duration_seconds", "", c.last_duration)
        f.add("inferwatch_checkpoint_last_timestamp_seconds", "", c.last_timestamp)
        f.add("inferwatch_checkpoint_write_age_seconds", "", time.time() - c.writing_since if c.writing_since else 0.0)
    if loop.retraining is not None:
        _retraining_lines(f, loop.retraining)
    for (url, outcome), n in sorted(loop.pushes.items()):
        f.add("inferwatch_alertmanager_pushes", f'url="{escape(url)}",outcome="{outcome}"', n)
    if loop.shadow is not None:
        _shadow_lines(f, loop.shadow)
    return f


def _retraining_lines(f: _Families, r: RetrainingStats) -> None:
    for o, n in r.notifications.items():
        f.add("inferwatch_alertmanager_notifications", f'outcome="{o}"', n)
    if not r.endpoints:  # the receiver without retraining
        return
    for (policy, o), n in sorted(r.triggers.items()):
        f.add("inferwatch_retraining_triggers", f'policy="{escape(policy)}",outcome="{o}"', n)
    f.add("inferwatch_retraining_pending_alerts", "", r.pending_alerts)
    for outcome, counts in (("delivered", r.delivered), ("failed", r.failed)):
        for endpoint, n in counts.items():
            f.add("inferwatch_webhook_deliveries", f'endpoint="{escape(endpoint)}",outcome="{outcome}"', n)
    for (endpoint, res), n in sorted(r.attempts.items()):
        f.add("inferwatch_webhook_attempts", f'endpoint="{escape(endpoint)}",result="{res}"', n)
    for family, key in (
        ("inferwatch_webhook_pending", "pending"),
        ("inferwatch_webhook_oldest_pending_age_seconds", "oldest_pending_age_seconds"),
        ("inferwatch_webhook_endpoint_disabled", "disabled"),
    ):
        for endpoint, st in r.endpoints.items():
            f.add(family, f'endpoint="{escape(endpoint)}"', float(st[key]))


SHADOW_QUANTILES = (("0.5", "p50"), ("0.9", "p90"), ("0.99", "p99"))


def _shadow_lines(f: _Families, shadow: Mapping[str, Any]) -> None:
    """The shadow families' lines from ShadowService.report(): the latest run's figures."""
    add = f.add
    for outcome, n in shadow["runs"].items():
        add("inferwatch_shadow_runs", f'outcome="{outcome}"', n)
    run = shadow["last_run"]
    if run is None:
        return
    add("inferwatch_shadow_last_run_timestamp_seconds", "", run["started"])
    add("inferwatch_shadow_run_duration_seconds", "", run["duration_seconds"])
    env = run["environment"]
    info = {
        "cpu": env.get("cpu_model"),
        "gpu": env.get("gpu"),
        "onnxruntime": env.get("onnxruntime"),
        "torch": env.get("torch"),
        "providers": ",".join(env.get("onnxruntime_providers") or ()),
    }
    add("inferwatch_shadow_environment_info", ",".join(f'{k}="{escape(str(v or ""))}"' for k, v in info.items()), 1)
    for m in run["models"]:
        lbl = f'model="{escape(m["name"])}",role="{m["role"]}"'
        add("inferwatch_shadow_model_status", f'{lbl},status="{m["status"]}"', 1)
        if m["status"] != "ok":
            continue
        for scenario in ("single_stream", "server"):
            result = m[scenario]
            if result is None:
                continue
            slbl = f'{lbl},scenario="{scenario}"'
            for q, key in SHADOW_QUANTILES:
                add("inferwatch_shadow_latency_seconds", f'{slbl},quantile="{q}"', result[key])
            total = _num(result["mean"] * result["queries"])
            f.line("inferwatch_shadow_latency_seconds", f"inferwatch_shadow_latency_seconds_sum{{{slbl}}} {total}")
            f.line(
                "inferwatch_shadow_latency_seconds",
                f"inferwatch_shadow_latency_seconds_count{{{slbl}}} {result['queries']}",
            )
        add("inferwatch_shadow_stable", lbl, int(m["single_stream"]["stable"]))
        if m["server"] is not None:
            add("inferwatch_shadow_server_latency_bound_met", lbl, int(m["server"]["met"]))
        for b in m["offline"]:
            add(
                "inferwatch_shadow_throughput_inferences_per_second",
                f'{lbl},batch_size="{b["batch_size"]}"',
                b["samples_per_second"],
            )
        for phase, seconds in m["cold_start"].items():
            add("inferwatch_shadow_cold_start_seconds", f'{lbl},phase="{phase.removesuffix("_seconds")}"', seconds)
        add("inferwatch_shadow_regression", lbl, int(m["regression"]["flagged"]))
        add("inferwatch_shadow_samples", lbl, m["samples"])
        for metric in ("accuracy", "mae"):
            add("inferwatch_shadow_quality", f'{lbl},metric="{metric}"', m["quality"].get(metric))
        if m["skew"] is not None:
            add("inferwatch_shadow_skew", lbl, m["skew"]["mismatch_rate"])
            add("inferwatch_shadow_skew_detected", lbl, int(m["skew"]["flagged"]))
        economics = m["economics"]
        add("inferwatch_shadow_model_size_bytes", lbl, economics["model_bytes"])
        add("inferwatch_shadow_cost_per_thousand_inferences", lbl, economics["cost_per_1k_inferences"])
        add("inferwatch_shadow_energy_per_inference_joules", lbl, economics["energy_per_inference_joules"])
    for c in run["comparisons"]:
        lbl = f'model="{escape(c["candidate"])}",production="{escape(c["production"])}"'
        ratio = c["latency_ratio"]
        add("inferwatch_shadow_latency_ratio", lbl, ratio["ratio"])
        add("inferwatch_shadow_latency_ratio_lower", lbl, ratio["lower"])
        add("inferwatch_shadow_latency_ratio_upper", lbl, ratio["upper"])
        add("inferwatch_shadow_agreement", lbl, c["agreement"].get("agreement"))
        add("inferwatch_shadow_mean_abs_difference", lbl, c["agreement"].get("mean_abs_difference"))


def _header(out: list[str], family: str) -> None:
    kind, doc, _ = FAMILIES[family]
    name = family + "_total" if kind == "counter" else family
    out.append(f"# HELP {name} {doc}")
    out.append(f"# TYPE {name} {kind}")


def _histogram(template: str, counts: list[int], total: float) -> str:
    cum = list(accumulate(counts))
    return template % (*cum, _num(total), cum[-1])
