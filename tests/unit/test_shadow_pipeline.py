"""The daemon's side of shadow runs: reservoirs filled by the pipeline, schedule, metrics lines."""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Any

from daemon.config import from_mapping
from daemon.export.exposition import LoopStats, TextSink, _loop_lines, _shadow_lines
from daemon.export.families import FAMILIES
from daemon.ingest.sources import RawRecord, chunks_of
from daemon.monitors.reservoir import Sample
from daemon.runtime.app import build_pipeline
from daemon.shadow.service import ShadowService
from daemon.state import codec
from tests.integration.support import parse

MODEL = {
    "name": "clf-prod",
    "runtime": "onnxruntime",
    "path": "unused.onnx",
    "source_model": "clf",
    "inputs": [{"name": "x", "features": ["a", "b"]}],
}


def config(**shadow: Any) -> Any:
    return from_mapping(
        {
            "labels": {"topic": "labels"},
            "drift": {"enabled": False},
            "shadow": {"enabled": True, "models": [MODEL], "reservoir_size": 50, "min_samples": 10, **shadow},
        }
    )


def record(i: int, model: str = "clf", topic: str = "t", partition: int = 0, **fields: Any) -> RawRecord:
    body = {"request_id": f"r{i}", "model": model, "features": {"a": i, "b": "x"}, "prediction": i % 2, **fields}
    return RawRecord(topic, partition, i, 1000.0 + i, None, json.dumps(body).encode())


def label(i: int, value: Any, partition: int = 0) -> RawRecord:
    body = {"request_id": f"r{i}", "model": "clf", "label": value}
    return RawRecord("labels", partition, 10_000 + i, None, None, json.dumps(body).encode())


def test_the_pipeline_samples_only_the_source_models_inputs_and_attaches_labels() -> None:
    pipeline = build_pipeline(config(), join_labels=True)
    pipeline.process(chunks_of([record(i) for i in range(30)] + [record(100 + i, model="other") for i in range(30)]))
    samples = pipeline.shadow_samples()
    assert set(samples) == {"clf"}
    assert len(samples["clf"]) == 30 and pipeline.reservoir_sizes() == {"clf": 30}
    s = samples["clf"][3]
    assert (s.request_id, s.features, s.prediction, s.label) == ("r3", {"a": 3, "b": "x"}, 1, None)
    pipeline.process(chunks_of([label(i, 7) for i in range(5)]))
    labelled = {s.request_id: s.label for s in pipeline.shadow_samples()["clf"] if s.label is not None}
    assert labelled == {f"r{i}": 7 for i in range(5)}
    # Bounded: a long stream keeps reservoir_size samples.
    pipeline.process(chunks_of([record(1000 + i) for i in range(500)]))
    assert pipeline.reservoir_sizes() == {"clf": 50}


def test_inline_labels_travel_with_the_sample() -> None:
    pipeline = build_pipeline(config())
    pipeline.process(chunks_of([record(i, label=1 - i % 2) for i in range(10)]))
    assert [s.label for s in pipeline.shadow_samples()["clf"]] == [1 - i % 2 for i in range(10)]


def test_a_reservoir_lives_and_moves_with_its_models_partition() -> None:
    """The reservoir is state of the partition that homes its model: a label on the model's
    partition attaches to it, the partition's shard carries it, and dropping the partition takes it."""
    pipeline = build_pipeline(config())
    pipeline.process(chunks_of([record(i, partition=1) for i in range(20)] + [record(100, model="other")]))
    assert set(pipeline.partitions[1].reservoirs) == {"clf"} and pipeline.partitions[0].reservoirs == {}
    pipeline.process(chunks_of([label(i, 1, partition=1) for i in range(3)]))
    before = pipeline.shadow_samples()
    assert [s.label for s in before["clf"][:4]] == [1, 1, 1, None]

    shard = codec.decode(codec.encode(pipeline.snapshot([1])["partitions"][1]))
    pipeline.drop_partitions([1])
    assert pipeline.shadow_samples() == {} and pipeline.reservoir_sizes() == {}
    elsewhere = build_pipeline(config())
    assert elsewhere.restore_partition(shard) == {("t", 1): 20, ("labels", 1): 10_003}
    assert elsewhere.shadow_samples() == before
    # The restored reservoir goes on: later samples and labels of its model join it.
    elsewhere.process(chunks_of([record(20 + i, partition=1) for i in range(5)] + [label(21, 0, partition=1)]))
    samples = elsewhere.shadow_samples()["clf"]
    assert len(samples) == 25 and samples[21].label == 0


def test_no_reservoirs_when_shadow_runs_are_off() -> None:
    pipeline = build_pipeline(from_mapping({"shadow": {"enabled": False, "models": [MODEL]}}))
    pipeline.process(chunks_of([record(i) for i in range(5)]))
    assert pipeline.shadow_samples() == {}


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_run_starts_only_when_due_and_fed(monkeypatch: Any) -> None:
    clock = Clock()
    service = ShadowService(config(jitter_seconds=0, interval_seconds=60).shadow, clock=clock, rng=random.Random(1))
    calls: list[Any] = []

    def fake_call(mode: str, samples: Any = None) -> dict[str, Any]:
        calls.append((mode, {m: len(v) for m, v in samples.items()}))
        return {"duration_seconds": 0.1, "models": [], "comparisons": []}

    monkeypatch.setattr(service.runner, "call", fake_call)
    rows = {"clf": [Sample(f"r{i}", {"a": i}) for i in range(10)]}
    assert not service.poll({"clf": 9}, lambda: rows)  # below min_samples
    assert service.poll({"clf": 10}, lambda: rows)
    service._thread.join()  # type: ignore[union-attr]
    assert calls == [("run", {"clf": 10})]
    assert service.runs == {"ok": 1, "failed": 0}
    assert not service.poll({"clf": 10}, lambda: rows)  # the next one is an interval away
    clock.t = 60.0
    assert service.poll({"clf": 10}, lambda: rows)
    service._thread.join()  # type: ignore[union-attr]
    assert len(calls) == 2


def test_a_failed_run_is_counted_and_the_daemon_carries_on(monkeypatch: Any) -> None:
    service = ShadowService(config(jitter_seconds=0).shadow, clock=Clock())

    def boom(mode: str, samples: Any = None) -> dict[str, Any]:
        raise RuntimeError("model exploded")

    monkeypatch.setattr(service.runner, "call", boom)
    assert service.poll({"clf": 10}, lambda: {"clf": []})
    service._thread.join()  # type: ignore[union-attr]
    report = service.report()
    assert report["runs"] == {"ok": 0, "failed": 1}
    assert report["last_error"] == "RuntimeError: model exploded"
    lines = _lines(report)
    assert lines["inferwatch_shadow_runs"] == [
        'inferwatch_shadow_runs_total{outcome="ok"} 0',
        'inferwatch_shadow_runs_total{outcome="failed"} 1',
    ]


def test_every_shadow_family_is_rendered_from_a_full_report() -> None:
    single = {"p50": 0.001, "p90": 0.002, "p99": 0.003, "mean": 0.0015, "queries": 1000, "stable": True}
    model = {
        "name": "m-cand",
        "role": "candidate",
        "status": "ok",
        "samples": 200,
        "single_stream": single,
        "server": {**single, "met": False},
        "offline": [{"batch_size": 8, "samples_per_second": 5000.0}],
        "cold_start": {"session_seconds": 0.05, "first_inference_seconds": 0.002},
        "regression": {"flagged": True},
        "quality": {"labelled": 10, "accuracy": 0.9},
        "skew": {"mismatch_rate": 0.25, "flagged": True},
        "economics": {"model_bytes": 1234, "cost_per_1k_inferences": 0.01, "energy_per_inference_joules": 0.5},
    }
    report = {
        "runs": {"ok": 1, "failed": 0},
        "last_run": {
            "started": 1.7e9,
            "duration_seconds": 4.0,
            "environment": {"cpu_model": 'Xeon "x"', "onnxruntime": "1.0", "onnxruntime_providers": ["CPU"]},
            "models": [model, {"name": "m-skip", "role": "production", "status": "skipped"}],
            "comparisons": [
                {
                    "candidate": "m-cand",
                    "production": "m-prod",
                    "latency_ratio": {"ratio": 2.0, "lower": 1.9, "upper": 2.1},
                    "agreement": {"agreement": 0.75},
                },
                {
                    "candidate": "r-cand",
                    "production": "r-prod",
                    "latency_ratio": {"ratio": 1.0, "lower": 0.9, "upper": 1.1},
                    "agreement": {"mean_abs_difference": 0.5},
                },
            ],
        },
    }
    lines = _lines(report)
    assert set(lines) == {f for f in FAMILIES if f.startswith("inferwatch_shadow_")}
    assert all(lines.values()), [f for f, v in lines.items() if not v]
    assert (
        'inferwatch_shadow_latency_seconds{model="m-cand",role="candidate",scenario="single_stream",quantile="0.99"}'
        " 0.003" in lines["inferwatch_shadow_latency_seconds"]
    )
    assert (
        'inferwatch_shadow_latency_seconds_count{model="m-cand",role="candidate",scenario="server"} 1000'
        in lines["inferwatch_shadow_latency_seconds"]
    )
    assert (
        lines["inferwatch_shadow_model_status"][1]
        == 'inferwatch_shadow_model_status{model="m-skip",role="production",status="skipped"} 1'
    )
    assert lines["inferwatch_shadow_agreement"] == [
        'inferwatch_shadow_agreement{model="m-cand",production="m-prod"} 0.75'
    ]
    assert 'cpu="Xeon \\"x\\""' in lines["inferwatch_shadow_environment_info"][0]
    # Through the loop's lines, as /metrics writes them: valid text, one sample per line above.
    sink = TextSink({})
    _loop_lines(sink, dataclasses.replace(LoopStats.idle(), shadow=report))
    samples = parse(sink.text().decode())
    assert len(samples) == sum(len(v) for v in lines.values())
    assert samples[("inferwatch_shadow_agreement", (("model", "m-cand"), ("production", "m-prod")))] == 0.75
    # Through the loop's lines, as /metrics writes them: valid text, one sample per line above.
    sink = TextSink({})
    _loop_lines(sink, dataclasses.replace(LoopStats.idle(), shadow=report))
    samples = parse(sink.text().decode())
    assert len(samples) == sum(len(v) for v in lines.values())
    assert samples[("inferwatch_shadow_agreement", (("model", "m-cand"), ("production", "m-prod")))] == 0.75


def _lines(report: dict[str, Any]) -> dict[str, list[str]]:
    sink = TextSink({})
    _shadow_lines(sink, report)
    return sink.lines
