"""One shadow run, inside the runner process: load, measure, compare, judge, record.

Per model: cold start (session creation, then the first inference), warm-up, single-stream,
offline at each batch size, optionally server; predictions on every sample. Then each candidate
against the production model(s) fed by the same logged model, on identical inputs in interleaved
order; production's replayed outputs against the predictions logged in production (skew); and
each p99 against the same model's earlier runs on this hardware (regressions). A model that
fails is reported as failed; the others still run.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from daemon.config import ShadowConfig, ShadowModel
from daemon.monitors.reservoir import Sample
from daemon.shadow.compare import accuracy, agreement, latency_ratio, skew
from daemon.shadow.environment import EnergyMeter, collect_environment, cost_per_1k, hardware_key, model_bytes
from daemon.shadow.history import History, regression
from daemon.shadow.measure import Run, interleaved, offline, server, single_stream, warm_up
from daemon.shadow.models import LoadedModel, load_model, unencoded_features, unseen_features

log = structlog.get_logger(__name__)

# Rows per inference when predicting every sample (a model with a fixed batch of 1 takes one).
PREDICT_BATCH = 256


@dataclass(slots=True)
class _Measured:
    model: LoadedModel
    rows: Sequence[Sample]
    feeds: list[Any]
    predictions: list[Any]
    entry: dict[str, Any]


def run(shadow: ShadowConfig, samples: Mapping[str, Sequence[Sample]]) -> dict[str, Any]:
    """The report of one run over `samples` (per logged model): JSON-serialisable."""
    started, t0 = time.time(), time.perf_counter()
    entries: dict[str, dict[str, Any]] = {}
    measured: dict[str, _Measured] = {}
    for spec in shadow.models:
        rows = samples.get(spec.source_model, ())
        if len(rows) < shadow.min_samples:
            reason = f"{len(rows)} samples of {spec.source_model!r} < shadow.min_samples={shadow.min_samples}"
            entries[spec.name] = _entry(spec, "skipped", error=reason)
            continue
        try:
            m = _measure(spec, rows, shadow)
        except Exception as exc:  # one broken model must not sink the run
            log.warning("shadow_model_failed", model=spec.name, error=f"{type(exc).__name__}: {exc}")
            entries[spec.name] = _entry(spec, "failed", error=f"{type(exc).__name__}: {exc}")
            continue
        measured[spec.name] = m
        entries[spec.name] = m.entry
    comparisons = [_compare(measured[c.name], measured[p.name], shadow) for c, p in _pairs(shadow, measured)]
    env = collect_environment({m.model.device for m in measured.values()})
    _judge(shadow, env, measured)
    return {
        "started": started,
        "duration_seconds": time.perf_counter() - t0,
        "threads": shadow.threads,
        "environment": env,
        "models": list(entries.values()),
        "comparisons": comparisons,
    }


def _entry(spec: ShadowModel, status: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": spec.name,
        "role": spec.role,
        "runtime": spec.runtime,
        "source_model": spec.source_model,
        "task": spec.task,
        "status": status,
        **fields,
    }


def _measure(spec: ShadowModel, rows: Sequence[Sample], shadow: ShadowConfig) -> _Measured:
    model = load_model(spec, threads=shadow.threads, allow_cuda=shadow.allow_cuda)
    feeds = [model.feed([s]) for s in rows]
    t = time.perf_counter()
    model.run(feeds[0])
    first_inference = time.perf_counter() - t
    warm_up(model.run, feeds, shadow.warmup_queries)

    meter = EnergyMeter.open(model.device)
    joules_before = meter.read_joules() if meter is not None else 0.0
    single = single_stream(model.run, feeds, shadow.single_stream)
    energy = (meter.read_joules() - joules_before) / single.total_queries if meter is not None else None

    batches = []
    if shadow.offline.enabled:
        for size in shadow.offline.batch_sizes:
            if size > 1 and not model.batchable:
                continue  # a fixed batch dimension of 1: reported by `batchable`
            batch = [rows[i % len(rows)] for i in range(size)]
            batches.append(offline(model.run, model.feed(batch), size, shadow.offline.duration_seconds).to_dict())
    srv = server(model.run, feeds, shadow.server).to_dict() if shadow.server.enabled else None

    unseen = unseen_features(spec, rows)
    if unseen:
        log.warning("shadow_unseen_features", model=spec.name, features=unseen, samples=len(rows))
    predictions = _predict(model, rows)
    best = max((b["samples_per_second"] for b in batches), default=1.0 / single.mean if single.mean > 0 else None)
    entry = _entry(
        spec,
        "ok",
        device=model.device,
        provider=model.provider,
        intra_op_threads=spec.intra_op_threads or shadow.threads,
        batchable=model.batchable,
        samples=len(rows),
        cold_start={"session_seconds": model.session_seconds, "first_inference_seconds": first_inference},
        single_stream=single.to_dict(),
        offline=batches,
        server=srv,
        quality=accuracy(predictions, [s.label for s in rows], spec.task),
        skew=_skew(spec, rows, predictions, shadow) if spec.role == "production" else None,
        unencoded_features=unencoded_features(spec, rows),
        unseen_features=unseen,
        economics={
            "model_bytes": model_bytes(spec.path),
            "cost_per_1k_inferences": cost_per_1k(shadow.hourly_price, best),
            "energy_per_inference_joules": energy,
        },
    )
    return _Measured(model, rows, feeds, predictions, entry)


def _predict(model: LoadedModel, rows: Sequence[Sample]) -> list[Any]:
    step = PREDICT_BATCH if model.batchable else 1
    out: list[Any] = []
    for i in range(0, len(rows), step):
        out += model.predictions(model.run(model.feed(rows[i : i + step])))
    return out


def _skew(spec: ShadowModel, rows: Sequence[Sample], replayed: list[Any], shadow: ShadowConfig) -> dict[str, Any]:
    """Replayed outputs against the predictions this model logged in production."""
    wanted = spec.source_variant
    logged = [s.prediction if wanted is None or s.variant == wanted else None for s in rows]
    return skew(
        replayed, logged, spec.task, atol=shadow.skew_atol, rtol=shadow.skew_rtol, tolerance=shadow.skew_tolerance
    )


def _pairs(shadow: ShadowConfig, measured: Mapping[str, _Measured]) -> list[tuple[ShadowModel, ShadowModel]]:
    """(candidate, production) with the same logged model and task, both measured."""
    done = [spec for spec in shadow.models if spec.name in measured]
    return [
        (c, p)
        for c in done
        if c.role == "candidate"
        for p in done
        if p.role == "production" and (p.source_model, p.task) == (c.source_model, c.task)
    ]


def _compare(cand: _Measured, prod: _Measured, shadow: ShadowConfig) -> dict[str, Any]:
    """Candidate against production: latency ratio on interleaved identical inputs, agreement.

    The pairs are spread over shadow.compare_sessions session pairs: the measured ones, then fresh
    loads of both models (one pair alive at a time), so the interval holds load-to-load noise.
    """
    per_session = -(-shadow.compare_queries // shadow.compare_sessions)
    sessions = []
    for i in range(shadow.compare_sessions):
        p_run, p_feeds = _session(prod, shadow, fresh=i > 0)
        c_run, c_feeds = _session(cand, shadow, fresh=i > 0)
        lat_prod, lat_cand = interleaved(p_run, p_feeds, c_run, c_feeds, per_session)
        sessions.append((lat_cand, lat_prod))
    ratio = latency_ratio(sessions, resamples=shadow.bootstrap_resamples, confidence=shadow.confidence)
    spec = cand.model.spec
    return {
        "candidate": spec.name,
        "production": prod.model.spec.name,
        "source_model": spec.source_model,
        "task": spec.task,
        "latency_ratio": ratio.to_dict(),
        "agreement": agreement(cand.predictions, prod.predictions, spec.task),
    }


def _session(m: _Measured, shadow: ShadowConfig, *, fresh: bool) -> tuple[Run, list[Any]]:
    """The measured session, or a fresh load of the same model, warmed up, with its feeds."""
    if not fresh:
        return m.model.run, m.feeds
    model = load_model(m.model.spec, threads=shadow.threads, allow_cuda=shadow.allow_cuda)
    feeds = [model.feed([s]) for s in m.rows]
    warm_up(model.run, feeds, shadow.warmup_queries)
    return model.run, feeds


def _judge(shadow: ShadowConfig, env: Mapping[str, Any], measured: Mapping[str, _Measured]) -> None:
    """Each p99 against the model's earlier stable runs on this hardware; then record this run."""
    for m in measured.values():
        m.entry["hardware"] = hardware_key(env, m.model.device, m.entry["intra_op_threads"])
    try:
        history = History(shadow.history_file)
    except ValueError as exc:  # written by a newer inferwatch: neither judge against it nor overwrite it
        log.warning("shadow_history_unreadable", path=shadow.history_file, error=str(exc))
        for m in measured.values():
            m.entry["regression"] = {"flagged": False, "reason": str(exc)}
        return
    for name, m in measured.items():
        single, hardware = m.entry["single_stream"], m.entry["hardware"]
        m.entry["regression"] = regression(
            history.runs(name, hardware),
            single["p99"],
            runs=shadow.regression_runs,
            min_runs=shadow.regression_min_runs,
            tolerance=shadow.regression_tolerance,
        )
        history.append(
            name, hardware, {k: single[k] for k in ("p50", "p90", "p99", "stable")} | {"timestamp": time.time()}
        )
    try:
        history.save()
    except OSError as exc:  # a read-only filesystem must not lose the run's results
        log.warning("shadow_history_not_saved", path=shadow.history_file, error=str(exc))
