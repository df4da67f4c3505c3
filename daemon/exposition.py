"""The Prometheus collector: reads pipeline state at scrape time, never per event.

Every family it can emit is listed in FAMILIES, which `docs/metrics.md` mirrors (a test checks).
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from daemon import __version__
from daemon.config import MetricsConfig
from daemon.monitors import Histogram, KeyStats
from daemon.pipeline import Pipeline
from daemon.routing import Key
from daemon.sources import TopicPartition

KEY_LABELS = ["model", "version", "variant"]

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
    "inferwatch_dead_letter_records": (
        "counter",
        "Invalid records copied to the dead-letter topic.",
        ["outcome"],
    ),
    "inferwatch_batch_duration_seconds": ("histogram", "Time to process one polled batch.", []),
}


@dataclass
class LoopStats:
    """What the main loop reports about itself and its source."""

    lag: Mapping[TopicPartition, int]
    source_errors: dict[str, int]
    dead_letter: dict[str, int]
    batch_duration: Histogram


def _family(name: str) -> Any:
    # Any: the three family classes' add_metric() signatures differ.
    kind, doc, labels = FAMILIES[name]
    if kind == "counter":
        return CounterMetricFamily(name, doc, labels=labels)
    if kind == "gauge":
        return GaugeMetricFamily(name, doc, labels=labels)
    return HistogramMetricFamily(name, doc, labels=labels)


def _hist(h: Histogram) -> tuple[np.ndarray[Any, Any], float]:
    return h.counts.copy(), h.sum


class InferwatchCollector(Collector):
    def __init__(self, pipeline: Pipeline, metrics: MetricsConfig, loop_stats: Callable[[], LoopStats]) -> None:
        self._pipeline = pipeline
        self._loop_stats = loop_stats
        self._les = {
            name: [repr(float(b)) for b in bounds] + ["+Inf"]
            for name, bounds in (
                ("latency", metrics.latency_buckets_seconds),
                ("ttft", metrics.ttft_buckets_seconds),
                ("score", metrics.score_buckets),
            )
        }

    def _copy_state(self) -> tuple[list[tuple[Key, dict[str, Any]]], dict[str, int], dict[str, int]]:
        p = self._pipeline
        rows = []
        with p.lock:
            for key, s in p.keys.items():
                rows.append((key, _copy_key(s)))
            invalid = dict(p.invalid.counts)
            overflow = dict(p.overflow.counts)
        return rows, invalid, overflow

    def collect(self) -> Iterator[Metric]:
        rows, invalid, overflow = self._copy_state()
        loop = self._loop_stats()
        build = _family("inferwatch_build_info")
        build.add_metric([__version__, platform.python_version()], 1)
        yield build

        fams = {
            n: _family(n)
            for n in (
                "inferwatch_events",
                "inferwatch_errors",
                "inferwatch_request_latency_seconds",
                "inferwatch_llm_time_to_first_token_seconds",
                "inferwatch_llm_input_tokens",
                "inferwatch_llm_output_tokens",
                "inferwatch_prediction_score",
                "inferwatch_predictions",
                "inferwatch_feature_missing",
                "inferwatch_last_event_timestamp_seconds",
            )
        }
        for key, st in rows:
            k = list(key)
            fams["inferwatch_events"].add_metric(k, st["events"])
            for et, n in st["errors"].items():
                fams["inferwatch_errors"].add_metric([*k, et], n)
            for fam, hname in (
                ("inferwatch_request_latency_seconds", "latency"),
                ("inferwatch_llm_time_to_first_token_seconds", "ttft"),
                ("inferwatch_prediction_score", "score"),
            ):
                counts, total = st[hname]
                if hname != "latency" and not counts.any():
                    continue
                cum = np.cumsum(counts).tolist()
                fams[fam].add_metric(k, list(zip(self._les[hname], cum, strict=True)), total)
            if st["tokens"] is not None:
                fams["inferwatch_llm_input_tokens"].add_metric(k, st["tokens"][0])
                fams["inferwatch_llm_output_tokens"].add_metric(k, st["tokens"][1])
            for cls, n in st["classes"].items():
                fams["inferwatch_predictions"].add_metric([*k, cls], n)
            for feat, n in st["missing"].items():
                fams["inferwatch_feature_missing"].add_metric([*k, feat], n)
            if st["last_ts"] is not None:
                fams["inferwatch_last_event_timestamp_seconds"].add_metric(k, st["last_ts"])
        yield from fams.values()

        inv = _family("inferwatch_events_invalid")
        for reason, n in invalid.items():
            inv.add_metric([reason], n)
        yield inv
        ov = _family("inferwatch_cardinality_overflow")
        for dim in ("key", "class", "feature", "error_type"):
            ov.add_metric([dim], overflow.get(dim, 0))
        yield ov
        lag = _family("inferwatch_consumer_lag_records")
        for (topic, partition), n in sorted(loop.lag.items()):
            lag.add_metric([topic, str(partition)], n)
        yield lag
        errs = _family("inferwatch_source_errors")
        for op, n in loop.source_errors.items():
            errs.add_metric([op], n)
        yield errs
        dlq = _family("inferwatch_dead_letter_records")
        for outcome, n in loop.dead_letter.items():
            dlq.add_metric([outcome], n)
        yield dlq
        bd = _family("inferwatch_batch_duration_seconds")
        bd.add_metric([], loop.batch_duration.cumulative(), loop.batch_duration.sum)
        yield bd


def _copy_key(s: KeyStats) -> dict[str, Any]:
    ev = s.events
    has_tokens = s.tokens_in or s.tokens_out
    return {
        "events": ev,
        "errors": dict(s.errors.counts),
        "latency": _hist(s.latency),
        "ttft": _hist(s.ttft),
        "score": _hist(s.score),
        "tokens": (s.tokens_in, s.tokens_out) if has_tokens else None,
        "classes": dict(s.classes.counts),
        "missing": {name: fs.missing(ev) for name, fs in s.features.items()},
        "last_ts": s.last_event_timestamp,
    }
