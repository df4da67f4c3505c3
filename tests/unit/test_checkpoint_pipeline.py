"""Pipeline.snapshot()/restore(): a restore continues exactly as an uninterrupted run.

The groundwork of checkpoints (issue 7), per partition since the columnar core (issue 13): each
partition's shard holds its keys' traffic, quality windows and drift streams, its canaries, its
label-join entries, the reservoirs of its models, its offsets and its counts (records, invalid
records, implausible values, label outcomes); the process part holds the replay clock and the
cardinality overflow counts. Checkpoints are stored through the binary codec (`daemon.state.codec`), so
every restore here goes through it.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import Any

import pytest

from daemon.config import Config, from_mapping
from daemon.dev.generator import TrafficGenerator, TrafficSpec, encode, parse_change
from daemon.export.exposition import LoopStats, MetricsExposition
from daemon.ingest.sources import RawRecord, chunks_of
from daemon.pipeline import Pipeline
from daemon.runtime.app import build_pipeline
from daemon.state import codec
from daemon.state.checkpoint import CheckpointError, LocalCheckpoints
from tests.integration.support import parse
from tests.unit.state_harness import plain

BATCH = 400
PARTITIONS = 2
# Where the generator's models live (producers key by model): the canary, drift change and shadow
# reservoir are fraud-detector's, on partition 1; recsys-ranker (one variant) is on partition 0.
HOMES = {"recsys-ranker": 0, "fraud-detector": 1}


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


@pytest.fixture(scope="module")
def batches() -> list[list[RawRecord]]:
    return _batches()


class Run:
    def __init__(self) -> None:
        self.alerts: list[Any] = []
        self.canary: list[dict[str, Any]] = []
        self.pipeline: Pipeline = build_pipeline(
            _config(), alert_sink=self.alerts.extend, canary_sink=self.canary.extend
        )
        self.offsets: dict[tuple[str, int], int] = {}

    def feed(self, batches: list[list[RawRecord]]) -> Run:
        for b in batches:
            self.offsets.update(self.pipeline.process(chunks_of(b)))
        return self

    def metrics(self) -> dict[Any, Any]:
        """The parsed /metrics samples (NaN as a string, so that equal samples compare equal)."""
        p = self.pipeline
        text = MetricsExposition(p, p.config.metrics, LoopStats.idle).render().decode()
        return {k: ("NaN" if math.isnan(v) else v) for k, v in parse(text).items()}

    def observed(self) -> dict[str, Any]:
        p = self.pipeline
        return {
            "summary": p.summary(),
            "records": p.records,
            "invalid": p.totals().invalid,
            "overflow": dict(p.overflow.counts),
            "labels": p.totals().labels,
            "canary": p.canary_report(None),
            "samples": p.shadow_samples(),
            "metrics": self.metrics(),
        }


@pytest.fixture(scope="module")
def whole(batches: list[list[RawRecord]]) -> Run:
    return Run().feed(batches)


@pytest.fixture(scope="module")
def whole_state(whole: Run) -> Any:
    return _timeless(whole.pipeline.snapshot())


def stored(snapshot: Any) -> Any:
    """As a checkpoint store keeps it: through the binary codec."""
    return codec.decode(codec.encode(snapshot))


def _timeless(snapshot: dict[str, Any]) -> Any:
    """The snapshot without its ages (seconds since something, read off this process's clock)."""

    def strip(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if not str(k).endswith("_age")}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    out = strip(plain(snapshot))
    # The label join's rows are [request_id, age_s, ...].
    for shard in out["partitions"].values():
        join = shard["join"]
        for name, rows in join.items():
            join[name] = [row[:1] + row[2:] for row in rows]
    return out


def test_the_scenario_exercises_what_a_checkpoint_must_carry(whole: Run) -> None:
    p = whole.pipeline
    assert {a.stream for a in whole.alerts} >= {"feature:f0"}  # drift detected after the change
    assert [e["verdict"] for e in whole.canary] == ["inconclusive", "fail"]  # the slower canary fails
    assert p.totals().labels["joined"] > 0
    assert p.totals().invalid["malformed_json"] > 0
    for model, partition in HOMES.items():
        assert p.router.home(model) is p.partitions[partition]
    assert set(p.partitions[1].reservoirs) == {"fraud-detector"}
    assert p.partitions[0].join is not None and p.partitions[0].join.sizes()["predictions"] > 0


# Splits (in batches fed before the checkpoint): after the canary's first look, between it and
# the fail, just before and just after the fail, just before the batch of the drift change (and of
# the first detection), between the detections, near the end (checked below).
@pytest.mark.parametrize("split", [1, 4, 6, 7, 16, 17, 19, 30])
def test_a_restored_pipeline_continues_like_an_uninterrupted_one(
    batches: list[list[RawRecord]], whole: Run, whole_state: Any, split: int
) -> None:
    first = Run().feed(batches[:split])
    checkpoint = stored(first.pipeline.snapshot())
    assert _timeless(checkpoint) == _timeless(first.pipeline.snapshot())  # the codec keeps it exactly
    resumed = Run()
    assert resumed.pipeline.restore(checkpoint) == first.offsets
    assert resumed.observed() == first.observed()
    resumed.feed(batches[split:])
    assert first.alerts + resumed.alerts == whole.alerts
    assert first.canary + resumed.canary == whole.canary
    assert resumed.observed() == whole.observed()
    assert _timeless(resumed.pipeline.snapshot()) == whole_state


def test_the_splits_fall_where_they_are_meant_to(batches: list[list[RawRecord]]) -> None:
    run = Run()
    canary, alerts = [], []
    for k, batch in enumerate(batches):
        n_canary, n_alerts = len(run.canary), len(run.alerts)
        run.feed([batch])
        canary += [(k, e["verdict"]) for e in run.canary[n_canary:]]
        alerts += sorted({(k, a.key[2]) for a in run.alerts[n_alerts:]})
    assert canary == [(0, "inconclusive"), (6, "fail")]
    assert alerts == [(16, "control"), (17, "canary"), (17, "control"), (19, "canary")]
    # The drift change starts at event 4,000 (20 s at 200/s), in batch 16.
    assert min(r.offset for r in batches[17]) > 4_000


def test_a_restore_from_the_directory_store_continues_exactly(
    batches: list[list[RawRecord]], whole: Run, tmp_path: Path
) -> None:
    first = Run().feed(batches[:9])
    store = LocalCheckpoints(tmp_path, "group")
    try:
        store.save(first.pipeline.snapshot()).result(10.0)
        assert sorted(f.name for f in tmp_path.iterdir()) == ["partition-0.ckpt", "partition-1.ckpt", "process.ckpt"]
        shards, process = store.load(range(PARTITIONS + 1)), store.load_process()
    finally:
        store.close()
    assert sorted(shards) == [0, 1] and process is not None
    resumed = Run()
    resumed.pipeline.restore_process(process)
    offsets: dict[tuple[str, int], int] = {}
    for shard in shards.values():
        offsets.update(resumed.pipeline.restore_partition(shard))
    assert offsets == first.offsets
    resumed.feed(batches[9:])
    assert first.canary + resumed.canary == whole.canary
    assert resumed.observed() == whole.observed()


def test_a_checkpoint_of_another_format_is_refused_clearly(batches: list[list[RawRecord]], tmp_path: Path) -> None:
    data = codec.encode(Run().feed(batches[:2]).pipeline.snapshot())
    assert data[:5] == codec.MAGIC + bytes([codec.VERSION]) and codec.VERSION == 3
    newer = data[:4] + bytes([codec.VERSION + 1]) + data[5:]
    with pytest.raises(codec.CodecError, match=r"written by a newer inferwatch \(format 4\); this one reads format 3"):
        codec.decode(newer)
    older = data[:4] + bytes([2]) + data[5:]
    with pytest.raises(codec.CodecError, match=r"written by an older inferwatch \(format 2\)"):
        codec.decode(older)
    with pytest.raises(codec.CodecError, match=r"older inferwatch \(format 2, JSON\).*delete it to start afresh"):
        codec.decode(b'{"version": 2, "partitions": {}}')
    # Through the store: the message names the file, and nothing is restored.
    store = LocalCheckpoints(tmp_path, "group")
    try:
        store.save(Run().feed(batches[:2]).pipeline.snapshot()).result(10.0)
        path = tmp_path / "partition-1.ckpt"
        path.write_bytes(newer)
        with pytest.raises(CheckpointError, match=rf"checkpoint {path} cannot be used: .*format 4.*reads format 3"):
            store.load([0, 1])
    finally:
        store.close()


def _by_key(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (r["model"], r["version"], r["variant"]))


def _partition(batches: list[list[RawRecord]], partition: int) -> list[list[RawRecord]]:
    return [[r for r in b if r.partition == partition] for b in batches]


def _of_models(metrics: dict[Any, Any]) -> dict[Any, Any]:
    """The series of a model (the process-wide ones have no model label)."""
    return {k: v for k, v in metrics.items() if any(name == "model" for name, _ in k[1])}


def _of_partitions(metrics: dict[Any, Any]) -> dict[Any, Any]:
    """The partitions' counts (invalid records, label outcomes...): series with a partition label."""
    return {k: v for k, v in metrics.items() if any(name == "partition" for name, _ in k[1])}


@pytest.mark.parametrize("split", [4, 17])
def test_each_partition_moves_alone_with_its_state(batches: list[list[RawRecord]], whole: Run, split: int) -> None:
    """A replica assigned one partition restores its shard alone and continues it exactly."""
    first = Run().feed(batches[:split])
    checkpoint = stored(first.pipeline.snapshot())
    assert sorted(checkpoint["partitions"]) == list(range(PARTITIONS))
    owners = []
    for p in range(PARTITIONS):
        run = Run()
        offsets = run.pipeline.restore_partition(checkpoint["partitions"][p])
        assert offsets == {tp: o for tp, o in first.offsets.items() if tp[1] == p}
        assert sorted(run.pipeline.partitions) == [p]
        run.feed(_partition(batches[split:], p))
        owners.append(run)
    assert _by_key([row for run in owners for row in run.pipeline.summary()]) == _by_key(whole.pipeline.summary())
    alerts = [repr(a) for run in [first, *owners] for a in run.alerts]
    assert sorted(alerts) == sorted(repr(a) for a in whole.alerts)
    assert first.canary + owners[HOMES["fraud-detector"]].canary == whole.canary
    canaries = {m: r for run in owners for m, r in run.pipeline.canary_report(None)["models"].items()}  # type: ignore[index]
    assert canaries == whole.pipeline.canary_report(None)["models"]  # type: ignore[index]
    samples = {m: s for run in owners for m, s in run.pipeline.shadow_samples().items() if s}
    assert samples == {m: s for m, s in whole.pipeline.shadow_samples().items() if s}
    series: dict[Any, Any] = {}
    counts: dict[Any, Any] = {}
    for run in owners:
        series |= _of_models(run.metrics())
        counts |= _of_partitions(run.metrics())
    assert series == _of_models(whole.metrics())
    # Invalid records and label outcomes moved with their partitions, under their partition label.
    assert counts == _of_partitions(whole.metrics())
    assert sum(v for (name, _), v in counts.items() if name == "inferwatch_events_invalid_total") > 0


@pytest.mark.parametrize("dropped", [0, 1])
def test_a_dropped_partition_leaves_nothing_behind_and_comes_back_whole(
    batches: list[list[RawRecord]], whole: Run, whole_state: Any, dropped: int
) -> None:
    run = Run().feed(batches[:9])
    kept = 1 - dropped
    model = next(m for m, p in HOMES.items() if p == dropped)
    shard = stored(run.pipeline.snapshot([dropped])["partitions"][dropped])
    assert shard["keys"] and len(shard["join"]["predictions"]) > 0  # state to lose
    keys = [tuple(k) for k in shard["keys"]]
    run.pipeline.drop_partitions([dropped])

    p = run.pipeline
    assert sorted(p.partitions) == [kept] and sorted(p.snapshot()["partitions"]) == [kept]
    assert all(p.router.get(k) is None for k in keys) and p.router.home(model) is None
    assert all(row["model"] != model for row in p.summary()) and p.summary()
    assert model not in p.canary_report(None)["models"]  # type: ignore[index]
    assert model not in p.shadow_samples()
    assert not any(("model", model) in labels for _, labels in run.metrics())
    assert any(("model", next(m for m in HOMES if m != model)) in labels for _, labels in run.metrics())

    assert p.restore_partition(shard) == {tp: o for tp, o in run.offsets.items() if tp[1] == dropped}
    run.feed(batches[9:])
    assert run.alerts == whole.alerts and run.canary == whole.canary
    assert run.observed() == whole.observed()
    assert _timeless(p.snapshot()) == whole_state
