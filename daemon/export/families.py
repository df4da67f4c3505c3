"""What the exposition can show, and how a subsystem hands it its samples.

Every family is listed in FAMILIES (which docs/metrics.md mirrors; a test checks). A subsystem
provides its own families, as client_python's collectors do: it copies what it shows under the
pipeline's lock, and later gives the copy's samples to a `Sink`, which formats them. Label sets
arrive preformatted (`labels()`), once per series layout, not once per scrape.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

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
    "inferwatch_slo_requests": (
        "counter",
        "Requests judged against a service-level objective (slo: latency, ttft, tpot, e2e; goodput: every request).",
        [*KEY_LABELS, "slo"],
    ),
    "inferwatch_slo_good_requests": (
        "counter",
        "Requests that met the objective (goodput: not an error, and every per-request objective met).",
        [*KEY_LABELS, "slo"],
    ),
    "inferwatch_slo_objective": (
        "gauge",
        "A model's objective (config slo): latency, ttft, tpot, e2e in s; goodput, error_rate, accuracy as ratios.",
        ["model", "slo"],
    ),
    "inferwatch_events_invalid": (
        "counter",
        "Records that failed decoding or validation, by reason.",
        ["reason"],
    ),
    "inferwatch_values_out_of_range": (
        "counter",
        "Values dropped from valid events as implausible (plausibility.*), by field; the events still count.",
        ["field"],
    ),
    "inferwatch_events_unkeyed": (
        "counter",
        "Events of a model that arrived on a partition other than the one holding its state in this replica: the "
        "input is not keyed by model (set source.kafka.repartition: true).",
        ["model"],
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
    "inferwatch_llm_time_per_output_token_seconds": (
        "histogram",
        "LLM time per output token: the mean gap between output tokens after the first (tpot_ms, else "
        "(latency_ms - ttft_ms) / (tokens_out - 1)).",
        KEY_LABELS,
    ),
    "inferwatch_llm_finish_reasons": (
        "counter",
        "LLM requests by why generation stopped (finish_reason).",
        [*KEY_LABELS, "finish_reason"],
    ),
    "inferwatch_llm_queue_time_seconds": ("histogram", "LLM time queued before scheduling (queue_ms).", KEY_LABELS),
    "inferwatch_llm_decode_time_seconds": ("histogram", "LLM decode time (decode_ms).", KEY_LABELS),
    "inferwatch_llm_prompt_length_tokens": ("histogram", "LLM prompt length (tokens_in).", KEY_LABELS),
    "inferwatch_llm_output_length_tokens": ("histogram", "LLM output length (tokens_out).", KEY_LABELS),
    "inferwatch_llm_output_tokens_per_second": (
        "histogram",
        "LLM output tokens per second of a request (tokens_per_second, else tokens_out / latency_ms).",
        KEY_LABELS,
    ),
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
        "Values folded into __other__ because a cap was reached, by dimension: key, class, feature, error_type, "
        "slice_level, feature_level.",
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
        "1 while a Kafka broker has answered the liveness probe (a metadata request every second) within "
        "source.kafka.session_timeout_ms; 0 during an outage, and before the first answer.",
        [],
    ),
    "inferwatch_source_last_contact_timestamp_seconds": (
        "gauge",
        "When a Kafka broker last answered the liveness probe (absent before the first answer).",
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
        "Streams by drift-monitoring state: reference, calibrating, active, failed, drifted (pinned, held).",
        ["state"],
    ),
    "inferwatch_model_performance": (
        "gauge",
        "Quality over the window of labelled predictions, per metric and slice (__all__ = every event).",
        [*KEY_LABELS, "metric", "slice_feature", "slice_value"],
    ),
    "inferwatch_model_performance_samples": (
        "gauge",
        "Labelled predictions in the quality window, per slice; figures are exported from accuracy.min_samples on.",
        [*KEY_LABELS, "slice_feature", "slice_value"],
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
    "inferwatch_canary_quantile_effect": (
        "gauge",
        "Candidate's quantile over the baseline's, minus 1, per latency-like metric (latency, ttft, tpot).",
        [*CANARY_LABELS, "metric", "percentile"],
    ),
    "inferwatch_canary_quantile_effect_lower": (
        "gauge",
        "Lower bound of the quantile effect, valid at every look (quantile confidence sequences).",
        [*CANARY_LABELS, "metric", "percentile"],
    ),
    "inferwatch_canary_quantile_effect_upper": (
        "gauge",
        "Upper bound of the quantile effect, valid at every look (+Inf: unbounded yet).",
        [*CANARY_LABELS, "metric", "percentile"],
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
    "inferwatch_shadow_unseen_features": (
        "gauge",
        "Features the model's mapping names that no replayed sample carried (fed as missing_value).",
        SHADOW_LABELS,
    ),
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


def escape(value: str) -> str:
    """A label value as the text format wants it."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def labels(**values: str) -> str:
    """A label set, for example `model="m",variant="a"` (values escaped)."""
    return ",".join(f'{name}="{escape(v)}"' for name, v in values.items())


def key_labels(key: tuple[str, str, str]) -> str:
    return labels(model=key[0], version=key[1], variant=key[2])


class Sink(Protocol):
    """Where a subsystem puts its samples. A label set is preformatted ("" for none); counters get
    their `_total` name from the sink, and every family its HELP and TYPE lines."""

    def samples(self, family: str, label_sets: Sequence[str], values: Sequence[Any]) -> None:
        """One sample per label set."""
        ...

    def labelled(
        self, family: str, key_sets: Sequence[str], label: str, names: Sequence[Sequence[str]], values: Sequence[Any]
    ) -> None:
        """Per key label set, one sample per name of `label` (names[i] with values[i][:len(names[i])])."""
        ...

    def histograms(self, family: str, label_sets: Sequence[str], counts: Any, sums: Any, les: Sequence[str]) -> None:
        """Per label set, a histogram: bucket counts (not cumulative; the last is +Inf) and sum."""
        ...
