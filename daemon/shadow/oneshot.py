"""`inferwatch shadow --once`: fill reservoirs from a file or the broker's recent records, run once.

The records go through the daemon's own pipeline (decode, reservoirs, label attachment), so the
samples are the ones the daemon would have kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from daemon.config import Config
from daemon.ingest import topics as topic_entries
from daemon.ingest.sources import JsonlSource
from daemon.monitors.reservoir import Sample
from daemon.pipeline import Pipeline
from daemon.runtime.app import build_pipeline

# Polls that return nothing before the broker counts as read to its end.
IDLE_POLLS = 3


def _pipeline(config: Config) -> Pipeline:
    """Reservoirs only: drift and canary cost time and are not wanted here."""
    lean = config.model_copy(
        update={
            "shadow": config.shadow.model_copy(update={"enabled": True}),
            "drift": config.drift.model_copy(update={"enabled": False}),
            "canary": config.canary.model_copy(update={"enabled": False}),
        }
    )
    return build_pipeline(lean)


def from_file(config: Config, path: str | Path) -> dict[str, list[Sample]]:
    pipeline = _pipeline(config)
    source = JsonlSource(path, batch_size=config.source.kafka.max_poll_records)
    try:
        while not source.exhausted:
            pipeline.process(source.poll())
    finally:
        source.close()
    return pipeline.shadow_samples()


def from_kafka(config: Config, max_events: int) -> dict[str, list[Sample]]:
    """The newest `max_events` records of the inference (and labels) topics, read without a group."""
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition as KafkaTP

    from daemon.ingest.clients.kafka_python import chunks

    kafka = config.source.kafka
    consumer = KafkaConsumer(
        bootstrap_servers=list(kafka.bootstrap_servers),
        client_id=kafka.client_id,
        group_id=None,
        enable_auto_commit=False,
        max_poll_records=kafka.max_poll_records,
        receive_message_max_bytes=100 * 1024 * 1024,
    )
    pipeline = _pipeline(config)
    try:
        wanted = [*kafka.topics, *([config.labels.topic] if config.labels.topic else [])]
        topics = [t for t in sorted(consumer.topics()) if topic_entries.entry_of(wanted, t) is not None]
        parts = [KafkaTP(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        if not parts:
            return pipeline.shadow_samples()
        consumer.assign(parts)
        ends = consumer.end_offsets(parts)
        starts = consumer.beginning_offsets(parts)
        budget = max(1, max_events // len(parts))
        for tp in parts:
            consumer.seek(tp, max(starts[tp], ends[tp] - budget))
        idle = 0
        while idle < IDLE_POLLS:
            records = chunks(consumer.poll(timeout_ms=kafka.poll_timeout_ms))
            idle = 0 if records else idle + 1
            pipeline.process(records)
    finally:
        consumer.close()
    return pipeline.shadow_samples()


def unseen(config: Config, samples: Mapping[str, Sequence[Sample]]) -> list[str]:
    """Per model whose mapping names features no sample carries, one line saying so (--once
    refuses to run on them: each would be fed as missing_value throughout)."""
    from daemon.shadow.models import unseen_features

    out = []
    for spec in config.shadow.models:
        rows = samples.get(spec.source_model, ())
        names = unseen_features(spec, rows) if rows else []
        if names:
            out.append(
                f"shadow model {spec.name!r}: features never seen in {len(rows)} sampled logs of "
                f"{spec.source_model!r}: {', '.join(names)}; check shadow.models[].inputs[].features"
            )
    return out


def table(report: Mapping[str, Any]) -> str:
    """The run as an aligned text table: one row per model, then one per comparison."""
    rows = [("model", "role", "status", "samples", "p50 ms", "p90 ms", "p99 ms", "stable", "best/s", "skew", "regr.")]
    for m in report["models"]:
        if m["status"] != "ok":
            rows.append((m["name"], m["role"], m["status"], "", "", "", "", "", "", "", m.get("error") or ""))
            continue
        s = m["single_stream"]
        best = max((b["samples_per_second"] for b in m["offline"]), default=None)
        rows.append(
            (
                m["name"],
                m["role"],
                "ok",
                str(m["samples"]),
                f"{s['p50'] * 1e3:.4f}",
                f"{s['p90'] * 1e3:.4f}",
                f"{s['p99'] * 1e3:.4f}",
                "yes" if s["stable"] else "UNSTABLE",
                "" if best is None else f"{best:,.0f}",
                _skew(m["skew"]),
                "REGRESSION" if m["regression"]["flagged"] else "no",
            )
        )
    lines = align(rows)
    if report["comparisons"]:
        pairs = [("candidate", "production", "latency ratio", f"{_confidence(report)} CI", "agreement")]
        for c in report["comparisons"]:
            r, a = c["latency_ratio"], c["agreement"]
            agree = f"{a['agreement']:.2%}" if "agreement" in a else f"mean |diff| {a['mean_abs_difference']:.4g}"
            pairs.append(
                (c["candidate"], c["production"], f"{r['ratio']:.3f}", f"{r['lower']:.3f}-{r['upper']:.3f}", agree)
            )
        lines += ["", *align(pairs)]
    for m in report["models"]:
        if m.get("unencoded_features"):
            names = ", ".join(m["unencoded_features"])
            lines += ["", f"{m['name']}: string features without an encoding (fed as unknown_code): {names}"]
    env = report["environment"]
    lines += ["", f"on {env.get('cpu_model')} ({env.get('cpus_allowed')} CPUs), {report['threads']} thread(s)"]
    return "\n".join(lines)


def _skew(skew: Mapping[str, Any] | None) -> str:
    if skew is None or skew["mismatch_rate"] is None:
        return ""
    return f"{skew['mismatch_rate']:.2%}" + (" FLAGGED" if skew["flagged"] else "")


def _confidence(report: Mapping[str, Any]) -> str:
    c = report["comparisons"][0]["latency_ratio"]["confidence"]
    return f"{c:.0%}"


def align(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows of cells as lines, each column as wide as its widest cell."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
