"""Canary snapshots: a restored monitor continues exactly like one that never stopped."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from typing import Any

import pytest

from daemon.config import CanaryConfig
from daemon.ingest.events import InferenceEvent
from daemon.monitors.canary import CanaryMonitor, ModelCanary
from detectors.sequential import SequentialDifference

BATCH = 250
N_EVENTS = 12_000
# The canary's version changes here, which restarts its comparison.
NEW_VERSION_AT = 7_000

Batch = tuple[list[InferenceEvent], list[tuple[str, str, bool]]]


def batches(seed: int = 7) -> list[Batch]:
    """Events for model m (control v1, canary v2 then v3, the canary 30% slower) and, per batch,
    the grades of some predictions of the batch before (late labels: a few are for a version that
    has gone by then, which add_graded must drop)."""
    rng = random.Random(seed)
    out: list[Batch] = []
    pending: list[tuple[str, str, bool]] = []
    for start in range(0, N_EVENTS, BATCH):
        events = []
        for i in range(start, start + BATCH):
            canary = rng.random() < 0.5
            variant = "canary" if canary else "control"
            version = ("3" if i >= NEW_VERSION_AT else "2") if canary else "1"
            error = rng.random() < 0.01
            events.append(
                InferenceEvent(
                    request_id=f"r{i}",
                    model="m",
                    version=version,
                    variant=variant,
                    latency_ms=rng.lognormvariate(3.0, 0.3) * (1.3 if canary else 1.0),
                    status="error" if error else "ok",
                    error_type="Timeout" if error else None,
                    score=rng.random(),
                )
            )
        out.append((events, pending))
        pending = [(e.variant, e.version, rng.random() < 0.1) for e in events if rng.random() < 0.4]
    return out


def feed(monitor: CanaryMonitor, batch: Batch, index: int) -> list[dict[str, Any]]:
    """One batch the way the pipeline feeds it: events per key, grades per key, then verdicts."""
    events, graded = batch
    m = monitor.model("m")
    groups: dict[tuple[str, str], list[InferenceEvent]] = {}
    for e in events:
        groups.setdefault((e.variant, e.version), []).append(e)
    for (variant, version), group in groups.items():
        m.add_events(variant, version, group)
    grades: dict[tuple[str, str], list[bool]] = {}
    for variant, version, wrong in graded:
        grades.setdefault((variant, version), []).append(wrong)
    for (variant, version), wrong_list in grades.items():
        m.add_graded(variant, version, wrong_list)
    return [m.timeline_entry(c, index) for c in m.evaluate()]


def run(monitor: CanaryMonitor, stream: list[Batch], first: int = 0) -> list[dict[str, Any]]:
    timeline: list[dict[str, Any]] = []
    for k, batch in enumerate(stream[first:], first):
        timeline += feed(monitor, batch, (k + 1) * BATCH - 1)
    return timeline


def round_trip(state: dict[str, Any]) -> dict[str, Any]:
    """Through JSON text, as a checkpoint store would keep it; strict JSON (no NaN or Infinity)."""
    restored: dict[str, Any] = json.loads(json.dumps(state, allow_nan=False))
    return restored


@pytest.fixture(scope="module")
def stream() -> list[Batch]:
    return batches()


@pytest.fixture(scope="module")
def uninterrupted(stream: list[Batch]) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    monitor = CanaryMonitor(CanaryConfig())
    timeline = run(monitor, stream)
    return timeline, monitor.report(), monitor.snapshot()


def test_the_stream_exercises_what_a_snapshot_must_carry(
    uninterrupted: tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]],
) -> None:
    timeline, report, _ = uninterrupted
    verdicts = [(e["version"], e["verdict"], e["reset"]) for e in timeline]
    # Fails on the regression, restarts on the new version, and fails again.
    assert ("2", "fail", False) in verdicts
    assert ("3", "inconclusive", True) in verdicts
    assert verdicts[-1] == ("3", "fail", False)
    assert any("latency" in r for r in timeline[-1]["reasons"])
    metrics = report["models"]["m"]["variants"]["canary"]["metrics"]
    assert set(metrics) == {"error_rate", "latency", "latency_tail", "accuracy", "prediction_shift"}


# Splits (in batches fed before the snapshot): before any verdict, during the baseline's tail
# warm-up, just before and after the first fail (batch 4), mid-run, just before and after the
# version change (batch 28), around the second fail (batch 31), and after the last batch.
@pytest.mark.parametrize("split", [1, 2, 3, 4, 5, 17, 28, 29, 31, 32, 47, 48])
def test_a_restore_continues_exactly_like_an_uninterrupted_run(
    stream: list[Batch],
    uninterrupted: tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]],
    split: int,
) -> None:
    timeline_a, report_a, snapshot_a = uninterrupted
    before = CanaryMonitor(CanaryConfig())
    timeline_b = run(before, stream[:split])
    state = round_trip(before.snapshot())
    assert state["version"] == 1

    after = CanaryMonitor(CanaryConfig())
    after.restore(state)
    assert after.snapshot() == before.snapshot()
    assert after.report() == before.report()
    timeline_b += run(after, stream, split)

    assert timeline_b == timeline_a
    assert after.report() == report_a
    assert after.snapshot() == snapshot_a


def test_a_model_canary_restores_on_its_own(stream: list[Batch]) -> None:
    monitor = CanaryMonitor(CanaryConfig())
    run(monitor, stream[:20])
    state = round_trip(monitor.model("m").snapshot())
    m = ModelCanary("m", CanaryConfig())
    m.restore(state)
    assert m.snapshot() == monitor.model("m").snapshot()
    with pytest.raises(ValueError, match="model 'm' restored into model 'other'"):
        ModelCanary("other", CanaryConfig()).restore(state)


def test_non_finite_floats_survive_strict_json() -> None:
    monitor = CanaryMonitor(CanaryConfig(min_requests=10))
    m = monitor.model("m")
    events = [
        InferenceEvent(request_id=f"r{i}", model="m", variant=v, latency_ms=10.0 + i, score=0.5)
        for i in range(20)
        for v in ("control", "canary")
    ]
    big = [InferenceEvent(request_id="x", model="m", variant="canary", latency_ms=12.0, score=math.inf)]
    m.add_events("control", "unknown", [e for e in events if e.variant == "control"])
    m.add_events("canary", "unknown", [e for e in events if e.variant == "canary"] + big)
    m.evaluate()
    test = m.comparisons["canary"].tests["prediction_shift"][0]
    test.p_value = math.nan  # not reachable by look(); stands for any non-finite state value
    state = monitor.snapshot()
    moments = next(a for a in state["models"][0]["arms"] if a["variant"] == "canary")["moments"]
    assert moments["prediction_shift"][1:] == ["inf", "inf"]

    restored = CanaryMonitor(CanaryConfig(min_requests=10))
    restored.restore(round_trip(state))
    assert restored.snapshot() == state
    arm = restored.model("m").arms["canary"].moments["prediction_shift"]
    assert arm.s == math.inf and arm.ss == math.inf
    assert math.isnan(restored.model("m").comparisons["canary"].tests["prediction_shift"][0].p_value)


def test_sequential_difference_keeps_its_running_minimum() -> None:
    test = SequentialDifference(0.05, 0.01, planned=1_000)
    assert test.look(400, 0.0, 1.0, 400, 0.3, 1.0) is not None
    low = test.p_value
    assert low < 1.0
    copy = SequentialDifference.from_snapshot(json.loads(json.dumps(test.snapshot())))
    assert copy.snapshot() == test.snapshot()
    # A look that alone would give a higher p-value keeps the minimum in both.
    assert test.look(800, 0.0, 1.0, 800, 0.0, 1.0) == copy.look(800, 0.0, 1.0, 800, 0.0, 1.0)
    assert copy.p_value == low


@pytest.mark.parametrize("version", [2, 0, None, "1", True, 1.5])
def test_another_snapshot_version_is_refused(version: Any) -> None:
    monitor = CanaryMonitor(CanaryConfig())
    monitor.model("m").add_events("control", "1", [InferenceEvent(request_id="r", model="m", latency_ms=5.0)])
    state = monitor.snapshot()
    state["version"] = version
    if version is None:
        del state["version"]
    fresh = CanaryMonitor(CanaryConfig())
    with pytest.raises(ValueError, match=r"unsupported canary snapshot version .*reads version 1"):
        fresh.restore(state)
    assert fresh.models == {}
    inner = monitor.snapshot()["models"][0]
    inner["version"] = version
    with pytest.raises(ValueError, match="unsupported model canary snapshot version"):
        ModelCanary("m", CanaryConfig()).restore(inner)


def test_a_malformed_snapshot_is_a_value_error_and_changes_nothing(stream: list[Batch]) -> None:
    monitor = CanaryMonitor(CanaryConfig())
    run(monitor, stream[:10])
    good = monitor.snapshot()
    corruptions: list[Callable[[dict[str, Any]], object]] = [
        lambda s: s["models"][0]["arms"][0].pop("moments"),
        lambda s: s["models"][0]["comparisons"][0].update(verdict="maybe"),
        lambda s: s["models"][0]["arms"][0].update(requests="12"),
        lambda s: s["models"][0]["arms"].append(s["models"][0]["arms"][0]),
    ]
    for corrupt in corruptions:
        bad = json.loads(json.dumps(good))
        corrupt(bad)
        target = CanaryMonitor(CanaryConfig())
        target.restore(good)
        with pytest.raises(ValueError, match="snapshot"):
            target.restore(bad)
        assert target.snapshot() == good
