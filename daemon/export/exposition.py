"""The Prometheus exposition: renders a copy of the pipeline's state, outside its lock.

Under the lock a scrape only copies what it shows (arrays, and the names and readings beside
them); ingest waits for that copy, never for the formatting. Each subsystem provides its own
families from its copy (`collect()` in daemon/monitors/*; `daemon.export.families.Sink`): this
module formats them, with templates cached per series layout so that a scrape is one
`template % values` per family, and adds the families of the loop and of the process. Every
family it can emit is listed in FAMILIES, which `docs/metrics.md` mirrors (a test checks).
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

import numpy as np

from daemon import __version__
from daemon.config import MetricsConfig
from daemon.export.families import FAMILIES, escape, key_labels
from daemon.ingest.batch import Key
from daemon.ingest.sources import TopicPartition
from daemon.monitors import canary, drift, quality, slo, traffic
from daemon.monitors.drift import COLLECT, DRIFTED, HOLD, OFF, SEQUENTIAL, WINDOW
from daemon.monitors.traffic import Histograms, bucket_sets
from daemon.pipeline import Pipeline
from daemon.state.totals import Totals

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
    batch_duration: Histograms
    # ShadowService.report() when shadow runs are on.
    shadow: Mapping[str, Any] | None = None
    # AlertPusher.sent: (url, outcome) -> pushes.
    pushes: Mapping[tuple[str, str], int] = field(default_factory=dict)
    retraining: RetrainingStats | None = None
    checkpoint: CheckpointStats | None = None
    # The Kafka source's broker contact (None without a Kafka source, as in tests).
    source_up: bool | None = None
    source_last_contact: float | None = None

    @classmethod
    def idle(cls) -> LoopStats:
        """No loop: the pipeline alone (replay, tests)."""
        return cls({}, {}, {}, Histograms.single(BATCH_BUCKETS))


def _num(x: Any) -> str:
    """A sample value as the text format writes it."""
    if isinstance(x, int):
        return str(x)
    if x != x:
        return "NaN"
    if x in (math.inf, -math.inf):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x))


class TextSink:
    """Collects samples by family and writes the text format; templates live in `cache` across scrapes."""

    def __init__(self, cache: dict[Any, str]) -> None:
        self.lines: dict[str, list[str]] = {}
        self._cache = cache

    def _name(self, family: str) -> str:
        return family + "_total" if FAMILIES[family][0] == "counter" else family

    def samples(self, family: str, label_sets: Sequence[str], values: Sequence[Any]) -> None:
        if not label_sets:
            return
        name = self._name(family)
        key = (name, tuple(label_sets))
        template = self._cache.get(key)
        if template is None:
            lines = (f"{name}{{{ls}}} %s" if ls else f"{name} %s" for ls in label_sets)
            template = self._cache[key] = "\n".join(line.replace("%", "%%").replace("%%s", "%s") for line in lines)
        self.lines.setdefault(family, []).append(template % _formatted(values))

    def labelled(
        self, family: str, key_sets: Sequence[str], label: str, names: Sequence[Sequence[str]], values: Sequence[Any]
    ) -> None:
        name = self._name(family)
        chunks = []
        for key_set, row_names, row_values in zip(key_sets, names, values, strict=True):
            if not row_names:
                continue
            key = (name, key_set, label, tuple(row_names))
            template = self._cache.get(key)
            if template is None:
                ks = key_set.replace("%", "%%")
                template = self._cache[key] = "\n".join(
                    f'{name}{{{ks},{label}="{escape(n).replace("%", "%%")}"}} %s' for n in row_names
                )
            chunks.append(template % _formatted(row_values))
        if chunks:
            self.lines.setdefault(family, []).append("\n".join(chunks))

    def histograms(self, family: str, label_sets: Sequence[str], counts: Any, sums: Any, les: Sequence[str]) -> None:
        if not label_sets:
            return
        key = (family, tuple(label_sets), tuple(les))
        template = self._cache.get(key)
        if template is None:
            parts = []
            for ls in label_sets:
                ls = ls.replace("%", "%%")
                sep, braces = ("," if ls else ""), (f"{{{ls}}}" if ls else "")
                parts += [f"{family}_bucket{{{ls}{sep}{le}}} %d" for le in les]
                parts += [f"{family}_sum{braces} %s", f"{family}_count{braces} %d"]
            template = self._cache[key] = "\n".join(parts)
        cum = np.cumsum(counts, axis=1).tolist()
        values: list[Any] = []
        for row, total in zip(cum, np.asarray(sums).tolist(), strict=True):
            values += row
            values.append(_num(total))
            values.append(row[-1])
        self.lines.setdefault(family, []).append(template % tuple(values))

    def one(self, family: str, labels: str, value: float | None) -> None:
        """A single sample (a None value is left out)."""
        if value is not None:
            name = self._name(family)
            self.line(family, f"{name}{{{labels}}} {_num(value)}" if labels else f"{name} {_num(value)}")

    def line(self, family: str, text: str) -> None:
        self.lines.setdefault(family, []).append(text)

    def text(self) -> bytes:
        out: list[str] = []
        for family, (kind, doc, _) in FAMILIES.items():
            lines = self.lines.get(family)
            if lines:
                name = family + "_total" if kind == "counter" else family
                out += [f"# HELP {name} {doc}", f"# TYPE {name} {kind}", *lines]
        out.append("")
        return "\n".join(out).encode()


def _formatted(values: Sequence[Any]) -> tuple[Any, ...]:
    """Values for a `%s` template: ints as they are, floats as the text format writes them."""
    if values and isinstance(values[0], int) and all(type(v) is int for v in values):
        return tuple(values)
    return tuple(map(_num, values))


class MetricsExposition:
    def __init__(self, pipeline: Pipeline, metrics: MetricsConfig, loop_stats: Callable[[], LoopStats]) -> None:
        self._pipeline = pipeline
        self._hold_s = pipeline.config.drift.hold_seconds
        self._loop_stats = loop_stats
        sets = {name: bounds for name, (bounds, _) in bucket_sets(metrics).items()} | {"batch": [BATCH_BUCKETS]}
        self._les = {
            name: [[f'le="{b!r}"' for b in map(float, bounds)] + ['le="+Inf"'] for bounds in of_name]
            for name, of_name in sets.items()
        }
        self._key_sets: dict[Key, str] = {}
        self._templates: dict[Any, str] = {}

    def _key_set(self, key: Key) -> str:
        s = self._key_sets.get(key)
        if s is None:
            s = self._key_sets[key] = key_labels(key)
        return s

    def render(self) -> bytes:
        p = self._pipeline
        with p.lock:  # copies only: formatting waits until the lock is released
            shown = {(id(s), row) for s, row in p.held()}
            traffic_copies, drift_copies, quality_rows, canary_copies = [], [], [], []
            slo_copy = slo.SloCopy({}, {})
            for pn in sorted(p.partitions):
                state = p.partitions[pn]
                traffic_copies.append(traffic.copy(state.traffic, state.keys))
                slo.copy(state.slo, state.keys, slo_copy)
                key_sets = [self._key_set(k) if (id(state), row) in shown else None for row, k in enumerate(state.keys)]
                if state.drift is not None:
                    drift_copies.append((drift.copy(state.drift), key_sets))
                quality_rows += [
                    (key_sets[row], q.rows())
                    for row, q in enumerate(state.quality)
                    if q is not None and q.labelled and key_sets[row] is not None
                ]
                if state.canary is not None:
                    homed = {m for m in state.canary.models if p.router.home(m) is state}
                    canary_copies += canary.copy(state.canary, homed)
            totals = [(pn, p.partitions[pn].totals.copy()) for pn in sorted(p.partitions)]
            overflow = dict(p.overflow.counts)
            unkeyed = dict(p.unkeyed)
            join_sizes = {"predictions": 0, "held_labels": 0}
            if p.join_labels:
                for state in p.partitions.values():
                    if state.join is not None:
                        sizes = state.join.sizes()
                        join_sizes["predictions"] += sizes["predictions"]
                        join_sizes["held_labels"] += sizes["held_labels"]
        loop = self._loop_stats()
        out = TextSink(self._templates)
        out.one(
            "inferwatch_build_info",
            f'version="{escape(__version__)}",python_version="{platform.python_version()}"',
            1,
        )
        if traffic_copies:
            merged = traffic.merge(traffic_copies)
            traffic.collect(merged, [self._key_set(k) for k in merged.keys], self._les, out)
        now = time.monotonic()
        phases = np.zeros(drift.PHASES, dtype=np.int64)
        for copied, key_sets in drift_copies:
            drift.collect(copied, key_sets, self._hold_s, now, out)
            phases += drift.state_counts(copied)
        slo.collect(slo_copy, self._key_set, out)
        quality.collect(quality_rows, out)  # type: ignore[arg-type]
        canary.collect(canary_copies, out)
        _totals(out, totals, p.join_labels)
        out.samples("inferwatch_events_unkeyed", [f'model="{escape(m)}"' for m in unkeyed], list(unkeyed.values()))
        dims = ("key", "class", "feature", "error_type", "slice_level", "feature_level")
        out.samples(
            "inferwatch_cardinality_overflow", [f'dimension="{d}"' for d in dims], [overflow.get(d, 0) for d in dims]
        )
        lag = sorted(loop.lag.items())
        out.samples(
            "inferwatch_consumer_lag_records",
            [f'topic="{escape(t)}",partition="{pn}"' for (t, pn), _ in lag],
            [n for _, n in lag],
        )
        out.samples(
            "inferwatch_source_errors",
            [f'operation="{op}"' for op in loop.source_errors],
            list(loop.source_errors.values()),
        )
        out.samples(
            "inferwatch_dead_letter_records",
            [f'outcome="{o}"' for o in loop.dead_letter],
            list(loop.dead_letter.values()),
        )
        states = {
            "reference": phases[COLLECT],
            "calibrating": phases[HOLD],
            "active": phases[WINDOW] + phases[SEQUENTIAL],
            "failed": phases[OFF],
            "drifted": phases[DRIFTED],
        }
        out.samples("inferwatch_drift_streams", [f'state="{s}"' for s in states], [int(n) for n in states.values()])
        if p.join_labels:
            out.samples(
                "inferwatch_label_join_entries", [f'store="{k}"' for k in join_sizes], list(join_sizes.values())
            )
        _loop_lines(out, loop)
        bd = loop.batch_duration
        out.histograms("inferwatch_batch_duration_seconds", [""], bd.counts[:1], bd.sums[:1], self._les["batch"][0])
        return out.text()


def _totals(out: TextSink, totals: list[tuple[int, Totals]], join_labels: bool) -> None:
    """The partitions' counts, each under its partition: a count that moves to another replica with
    its partition continues its own series there."""
    families: list[tuple[str, str, Callable[[Totals], dict[str, int]]]] = [
        ("inferwatch_events_invalid", "reason", attrgetter("invalid")),
        ("inferwatch_values_out_of_range", "field", attrgetter("out_of_range")),
        ("inferwatch_labels", "outcome", attrgetter("labels") if join_labels else _inline),
    ]
    for name, label, pick in families:
        sets: list[str] = []
        values: list[int] = []
        for pn, t in totals:
            for k, n in pick(t).items():
                sets.append(f'{label}="{k}",partition="{pn}"')
                values.append(n)
        out.samples(name, sets, values)


def _inline(t: Totals) -> dict[str, int]:
    return {"inline": t.labels["inline"]}


def _loop_lines(f: TextSink, loop: LoopStats) -> None:
    """Broker contact, checkpoints, the receiver and retraining webhooks, Alertmanager pushes, shadow runs."""
    if loop.source_up is not None:
        f.one("inferwatch_source_up", "", int(loop.source_up))
    f.one("inferwatch_source_last_contact_timestamp_seconds", "", loop.source_last_contact)
    if loop.checkpoint is not None:
        c = loop.checkpoint
        f.one("inferwatch_checkpoints", 'outcome="ok"', c.written)
        f.one("inferwatch_checkpoints", 'outcome="failed"', c.failed)
        f.one("inferwatch_checkpoint_duration_seconds", "", c.last_duration)
        f.one("inferwatch_checkpoint_last_timestamp_seconds", "", c.last_timestamp)
        f.one("inferwatch_checkpoint_write_age_seconds", "", time.time() - c.writing_since if c.writing_since else 0.0)
    if loop.retraining is not None:
        _retraining_lines(f, loop.retraining)
    for (url, outcome), n in sorted(loop.pushes.items()):
        f.one("inferwatch_alertmanager_pushes", f'url="{escape(url)}",outcome="{outcome}"', n)
    if loop.shadow is not None:
        _shadow_lines(f, loop.shadow)


def _retraining_lines(f: TextSink, r: RetrainingStats) -> None:
    for o, n in r.notifications.items():
        f.one("inferwatch_alertmanager_notifications", f'outcome="{o}"', n)
    if not r.endpoints:  # the receiver without retraining
        return
    for (policy, o), n in sorted(r.triggers.items()):
        f.one("inferwatch_retraining_triggers", f'policy="{escape(policy)}",outcome="{o}"', n)
    f.one("inferwatch_retraining_pending_alerts", "", r.pending_alerts)
    for outcome, counts in (("delivered", r.delivered), ("failed", r.failed)):
        for endpoint, n in counts.items():
            f.one("inferwatch_webhook_deliveries", f'endpoint="{escape(endpoint)}",outcome="{outcome}"', n)
    for (endpoint, res), n in sorted(r.attempts.items()):
        f.one("inferwatch_webhook_attempts", f'endpoint="{escape(endpoint)}",result="{res}"', n)
    for family, key in (
        ("inferwatch_webhook_pending", "pending"),
        ("inferwatch_webhook_oldest_pending_age_seconds", "oldest_pending_age_seconds"),
        ("inferwatch_webhook_endpoint_disabled", "disabled"),
    ):
        for endpoint, st in r.endpoints.items():
            f.one(family, f'endpoint="{escape(endpoint)}"', float(st[key]))


SHADOW_QUANTILES = (("0.5", "p50"), ("0.9", "p90"), ("0.99", "p99"))


def _shadow_lines(f: TextSink, shadow: Mapping[str, Any]) -> None:
    """The shadow families' lines from ShadowService.report(): the latest run's figures."""
    add = f.one
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
        add("inferwatch_shadow_unseen_features", lbl, len(m.get("unseen_features", ())))
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
