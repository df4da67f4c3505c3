from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from daemon.cli import main
from daemon.events import json_schema
from daemon.generator import TrafficGenerator, TrafficSpec

ROOT = Path(__file__).resolve().parents[2]


def test_replay_report_counts_and_summary(tmp_path: Path) -> None:
    src = tmp_path / "events.jsonl"
    events = list(TrafficGenerator(TrafficSpec(rate=500, duration_s=10, start_time=0.0)).events())
    bad = [b'{"request_id": "x", "model": ', b"", b"\xff\xfe", b'{"request_id": "x"}']
    with src.open("wb") as f:
        for i, e in enumerate(events):
            f.write(json.dumps(e).encode() + b"\n")
            if i % 1000 == 0:
                f.write(bad[(i // 1000) % len(bad)] + b"\n")
    out = tmp_path / "report.json"
    assert main(["replay", str(src), "--report", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["events"] == len(events)
    assert report["invalid"] == 5
    assert report["alerts"] == [] and report["canary"] == []
    by_key = {(r["model"], r["version"], r["variant"]): r for r in report["summary"]}
    assert set(by_key) == {
        ("fraud-detector", "1", "control"),
        ("fraud-detector", "2", "canary"),
        ("recsys-ranker", "1", "default"),
    }
    control = [e for e in events if e.get("variant") == "control"]
    row = by_key[("fraud-detector", "1", "control")]
    assert row["events"] == len(control)
    assert row["errors"] == sum(e["status"] == "error" for e in control)
    lat = np.array([e["latency_ms"] for e in control]) / 1000
    for q in (50, 95, 99):
        assert row["latency_seconds"][f"p{q}"] == pytest.approx(np.percentile(lat, q, method="inverted_cdf"), rel=0.02)


def test_replay_missing_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(tmp_path / "nope.jsonl"), "--report", str(tmp_path / "r.json")]) == 2
    assert "is not a file" in capsys.readouterr().err


def test_published_json_schema_matches_code() -> None:
    published = json.loads((ROOT / "docs" / "event-schema.json").read_text())
    assert published == json_schema()
    inference = published["$defs"]["InferenceEvent"]
    assert inference["required"] == ["request_id", "model"]
