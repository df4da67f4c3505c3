"""Pipeline.snapshot()/restore(): a restore continues exactly as an uninterrupted run.

The groundwork of checkpoints (issue 7): every key's stats, quality windows and drift streams,
the label join, the canary and the shadow reservoirs, with the offsets they reflect.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from daemon.app import build_pipeline
from daemon.config import Config, from_mapping
from daemon.exposition import BATCH_BUCKETS, LoopStats, MetricsExposition
from daemon.generator import TrafficGenerator, TrafficSpec, encode, parse_change
from daemon.monitors import Histogram
from daemon.pipeline import Pipeline
from daemon.sources import RawRecord

BATCH = 400


def _config() -> Config:
    return from_mapping(
        {
            "labels": {"topic": "labels"},
            "drift": {"reference_events": 300, "window_events": 150},
            "accuracy": {"window_events": 300, "slice_features": ["f6"], "estimate_reference_events": 300},
            "canary": {"min_requests": 200},
            "shadow": {
                "enabled": True,
                "reservoir_size": 50,
                "models": [
                    {
                        "name": "s",
                        "runtime": "onnxruntime",
                        "path": "unused.onnx",
                        "source_model": "fraud-detector",
                        "inputs": [{"name": "x", "features": ["f0"]}],
                    }
                ],
            },
        }
    )


def _batches() -> list[list[RawRecord]]:
    spec = TrafficSpec(
        rate=200,
        duration_s=40,
        seed=4,
        start_time=1_700_000_000.0,
        changes=(
            parse_change("after=20s model=fraud-detector feature=f0 shift=2"),
            parse_change("after=0 model=fraud-detector variant=canary latency=+50%"),
        ),
    )
    gen = TrafficGenerator(spec)
    records: list[RawRecord] = []
    for i, ev in enumerate(gen.events()):
        records.append(RawRecord("events", 0, i, ev["timestamp"], *encode(ev)))
        if i % 3:  # two labels in three, right behind their predictions
            records.append(RawRecord("labels", 0, i, ev["timestamp"], *encode(gen.label(ev))))
        if i % 997 == 0:
            records.append(RawRecord("events", 0, i, None, None, b'{"truncated'))
    return [records[i : i + BATCH] for i in range(0, len(records), BATCH)]


class Run:
    def __init__(self) -> None:
        self.alerts: list[Any] = []
        self.canary: list[dict[str, Any]] = []
        self.pipeline: Pipeline = build_pipeline(
            _config(), alert_sink=self.alerts.extend, canary_sink=self.canary.extend
        )
        self.offsets: dict[tuple[str, int], int] = {}

    def feed(self, batches: list[list[RawRecord]]) -> None:
        for b in batches:
            self.offsets.update(self.pipeline.process(b))

    def observed(self) -> dict[str, Any]:
        p = self.pipeline
        metrics = MetricsExposition(p, p.config.metrics, lambda: LoopStats({}, {}, {}, Histogram(BATCH_BUCKETS)))
        return {
            "summary": p.summary(),
            "invalid": dict(p.invalid.counts),
            "overflow": dict(p.overflow.counts),
            "canary": p.canary.report(None) if p.canary is not None else None,
            "samples": p.shadow_samples(),
            "metrics": metrics.render().decode(),
        }


@pytest.mark.parametrize("split", [1, 4, 9, 17, 30])
def test_a_restored_pipeline_continues_like_an_uninterrupted_one(split: int) -> None:
    batches = _batches()
    whole = Run()
    whole.feed(batches)
    first = Run()
    first.feed(batches[:split])
    checkpoint = json.loads(json.dumps(first.pipeline.snapshot(first.offsets)))
    resumed = Run()
    offsets = resumed.pipeline.restore(checkpoint)
    assert offsets == first.offsets
    resumed.feed(batches[split:])
    assert first.alerts + resumed.alerts == whole.alerts
    assert first.canary + resumed.canary == whole.canary
    assert resumed.observed() == whole.observed()
    assert _timeless(resumed.pipeline.snapshot(resumed.offsets)) == _timeless(whole.pipeline.snapshot(whole.offsets))


def _timeless(snapshot: dict[str, Any]) -> Any:
    """The snapshot without its ages (seconds since something, read off this process's clock)."""

    def strip(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if not k.endswith("_age")}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    out = strip(json.loads(json.dumps(snapshot)))
    # The label join's rows are [request_id, age_s, ...].
    join = out["join"]
    for name, rows in join.items():
        if isinstance(rows, list) and rows and isinstance(rows[0], list):
            join[name] = [row[:1] + row[2:] for row in rows]
    return out


def test_the_scenario_exercises_what_a_checkpoint_must_carry() -> None:
    run = Run()
    run.feed(_batches())
    assert {a.stream for a in run.alerts} >= {"feature:f0"}  # drift detected after the change
    assert any(e["verdict"] == "fail" for e in run.canary)  # the slower canary fails
    assert run.pipeline.join is not None and run.pipeline.join.counts["joined"] > 0
    assert run.pipeline.invalid.counts["malformed_json"] > 0


def test_a_checkpoint_of_another_version_is_refused_clearly() -> None:
    run = Run()
    state = run.pipeline.snapshot({})
    state["version"] = 99
    with pytest.raises(ValueError, match="checkpoint version 99 is not 1"):
        Run().pipeline.restore(state)
