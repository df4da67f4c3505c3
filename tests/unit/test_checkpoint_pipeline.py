"""Pipeline.snapshot()/restore(): a restore continues exactly as an uninterrupted run.

The groundwork of checkpoints (issue 7): every key's stats, quality windows and drift streams,
the label join, the canary and the shadow reservoirs, with the offsets they reflect.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import pytest

from daemon.config import Config, from_mapping
from daemon.dev.generator import TrafficGenerator, TrafficSpec, encode, parse_change
from daemon.export.exposition import BATCH_BUCKETS, LoopStats, MetricsExposition
from daemon.ingest.sources import RawRecord
from daemon.monitors.traffic import Histogram
from daemon.pipeline import SNAPSHOT_VERSION, Pipeline
from daemon.runtime.app import build_pipeline

BATCH = 400
PARTITIONS = 2


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
        # Keyed by model, as producers must: two partitions, the labels topic co-partitioned.
        partition = zlib.crc32(ev["model"].encode()) % PARTITIONS
        records.append(RawRecord("events", partition, i, ev["timestamp"], *encode(ev)))
        if i % 3:  # two labels in three, right behind their predictions
            records.append(RawRecord("labels", partition, i, ev["timestamp"], *encode(gen.label(ev))))
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


def _interrupted(batches: list[list[RawRecord]], split: int) -> tuple[Run, Run, dict[str, Any]]:
    """A run over every batch, one over the first `split`, and the latter's checkpoint (as stored)."""
    whole = Run()
    whole.feed(batches)
    first = Run()
    first.feed(batches[:split])
    return whole, first, json.loads(json.dumps(first.pipeline.snapshot(first.offsets)))


@pytest.mark.parametrize("split", [1, 4, 9, 17, 30])
def test_a_restored_pipeline_continues_like_an_uninterrupted_one(split: int) -> None:
    batches = _batches()
    whole, first, checkpoint = _interrupted(batches, split)
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
    for shard in out["partitions"].values():
        join = shard["join"]
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
    with pytest.raises(ValueError, match=f"checkpoint version 99 is not {SNAPSHOT_VERSION}"):
        Run().pipeline.restore(state)


def _by_key(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (r["model"], r["version"], r["variant"]))


def _partition(batches: list[list[RawRecord]], partition: int) -> list[list[RawRecord]]:
    return [[r for r in b if r.partition == partition] for b in batches]


@pytest.mark.parametrize("split", [4, 17])
def test_each_partition_moves_alone_with_its_state(split: int) -> None:
    """A replica assigned one partition restores its shard alone and continues it exactly."""
    batches = _batches()
    whole, first, checkpoint = _interrupted(batches, split)
    assert sorted(checkpoint["partitions"]) == [str(p) for p in range(PARTITIONS)]
    owners = []
    for p in range(PARTITIONS):
        run = Run()
        offsets = run.pipeline.restore_partition(checkpoint["partitions"][str(p)])
        assert offsets == {tp: o for tp, o in first.offsets.items() if tp[1] == p}
        run.feed(_partition(batches[split:], p))
        owners.append(run)
    assert _by_key([row for run in owners for row in run.pipeline.summary()]) == _by_key(whole.pipeline.summary())
    alerts = [repr(a) for run in [first, *owners] for a in run.alerts]
    assert sorted(alerts) == sorted(repr(a) for a in whole.alerts)
    canaries = {m: r for run in owners for m, r in run.pipeline.canary.report(None)["models"].items()}  # type: ignore[union-attr]
    assert canaries == whole.pipeline.canary.report(None)["models"]  # type: ignore[union-attr]
    samples = {m: s for run in owners for m, s in run.pipeline.shadow_samples().items() if s}
    assert samples == {m: s for m, s in whole.pipeline.shadow_samples().items() if s}


def test_a_dropped_partition_leaves_nothing_behind_and_comes_back_whole() -> None:
    batches = _batches()
    whole = Run()
    whole.feed(batches)
    run = Run()
    run.feed(batches[:9])
    shard = json.loads(json.dumps(run.pipeline.snapshot(run.offsets)["partitions"]["0"]))
    assert shard["keys"] and shard["join"]["predictions"]  # the scenario gives partition 0 state
    run.pipeline.drop_partitions([0])
    left = run.pipeline.snapshot(run.offsets)["partitions"]
    assert not left["0"]["keys"] and not left["0"]["join"]["held_labels"] and not left["0"]["join"]["predictions"]
    assert left["1"]["keys"]
    run.pipeline.restore_partition(shard)
    run.feed(batches[9:])
    assert _by_key(run.pipeline.summary()) == _by_key(whole.pipeline.summary())
