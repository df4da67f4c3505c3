"""Feature admission (daemon/monitors/admission.py) through the pipeline: junk takes no slot, a
feature added later is tracked, a feature gone long is released and its slot reused."""

from __future__ import annotations

import json
from typing import Any

from daemon.config import from_mapping
from daemon.ingest.sources import RawRecord, chunks_of
from daemon.runtime.app import build_pipeline

LIMITS = {"max_features": 4, "feature_admission_events": 10, "feature_admission_share": 0.05}


def records(start: int, events: list[dict[str, Any]]) -> list[RawRecord]:
    return [
        RawRecord(
            "t",
            0,
            start + i,
            1000.0 + start + i,
            None,
            json.dumps({"request_id": f"r{start + i}", "model": "m", **e}).encode(),
        )
        for i, e in enumerate(events)
    ]


def tracked(pipeline: Any) -> tuple[list[str], list[str]]:
    """The key's tracked features: traffic's (missing counts) and drift's (streams)."""
    state = pipeline.partitions[0]
    drift = [state.drift.streams[s].name.removeprefix("feature:") for s in state.drift.by_row[0]]
    return sorted(state.traffic.missing(0)), sorted(d for d in drift if d not in ("score", "latency", "errors"))


def test_junk_takes_no_slot_and_later_features_are_tracked() -> None:
    pipeline = build_pipeline(from_mapping({"limits": LIMITS}))
    junk = {"features": {f"junk{j}": j for j in range(10_000)}}
    real = [{"features": {"a": float(i), "b": "x" if i % 2 else "y"}} for i in range(200)]
    pipeline.process(chunks_of(records(0, [junk, *real])))
    assert tracked(pipeline) == (["a", "b"], ["a", "b"])
    # A key counts 16 candidates (4 x max_features): what is left is junk named once each.
    table = pipeline.partitions[0].admission.candidates[0]
    assert len(table) <= 16 and all(name.startswith("junk") and c - held == 1 for name, (c, _, held) in table.items())
    later = [{"features": {"a": float(i), "b": "y", "c": 1.0, "d": 2.0}} for i in range(200)]
    pipeline.process(chunks_of(records(201, later)))
    assert tracked(pipeline) == (["a", "b", "c", "d"], ["a", "b", "c", "d"])
    # Tracked from its 10th event: the nine before are not missing-counted, nor in drift.
    state = pipeline.partitions[0]
    assert state.traffic.missing(0)["c"] == 0


def test_a_feature_gone_long_is_released_and_its_slot_reused() -> None:
    pipeline = build_pipeline(from_mapping({"limits": {**LIMITS, "feature_release_events": 500}}))
    full = [{"features": {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}} for _ in range(100)]
    pipeline.process(chunks_of(records(0, full)))
    assert tracked(pipeline)[0] == ["a", "b", "c", "d"]
    without_d = [{"features": {"a": 1.0, "b": 2.0, "c": 3.0, "e": 5.0}} for _ in range(600)]
    pipeline.process(chunks_of(records(100, without_d)))
    # d went unnamed for 500 of the key's events: released; e, refused for want of room until
    # then, takes its slot (once it has made the admission share since).
    assert tracked(pipeline) == (["a", "b", "c", "e"], ["a", "b", "c", "e"])
    text = pipeline.partitions[0].traffic.missing(0)
    assert "d" not in text
    snapshot = pipeline.snapshot()
    restored = build_pipeline(from_mapping({"limits": {**LIMITS, "feature_release_events": 500}}))
    restored.restore(snapshot)
    assert tracked(restored) == tracked(pipeline)
