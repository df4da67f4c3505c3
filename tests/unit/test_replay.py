from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from daemon.cli import main
from daemon.dev.generator import TrafficGenerator, TrafficSpec
from daemon.ingest.events import json_schema

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
    assert report["alerts"] == []
    # The generator's canary and control draw from one profile: an A/A comparison never fails.
    assert report["canary"] and all(e["verdict"] != "fail" for e in report["canary"])
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


def _write(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def test_zero_config_replay_watches_every_stream_and_pins_the_alert_index(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    lines: list[bytes] = []
    for i in range(8_000):
        if i % 997 == 5:
            lines.append(b"{broken")  # invalid lines count toward the index too
        event = {
            "request_id": f"r{i}",
            "model": "m",
            "timestamp": 1_000.0 + i,
            "latency_ms": float(rng.lognormal(3, 0.2)),
            "score": float(rng.random()),
            "features": {"x": float(rng.normal(2.0 if i >= 6_000 else 0.0, 1.0)), "c": str(rng.choice(["a", "b"]))},
        }
        lines.append(json.dumps(event).encode())
    src, out = tmp_path / "events.jsonl", tmp_path / "report.json"
    _write(src, lines)
    assert main(["replay", str(src), "--report", str(out)]) == 0
    report = json.loads(out.read_text())
    (row,) = report["summary"]
    assert row["drift"]["streams"] == {"reference": 0, "calibrating": 0, "active": 4, "failed": 0, "drifted": 0}
    (alert,) = report["alerts"]
    # x is tracked from its 10th event (limits.feature_admission_events), so values 9..1008 are the
    # reference and the scan looks every 50 values after it: the looks around event 6000 are
    # 5959..6008 (9 shifted values: not enough) and 6009..6058, which fires at event 6058, whose
    # line is 6058 + 7 invalid lines before it.
    assert alert["index"] == 6_058 + 7
    assert json.loads(lines[alert["index"]])["request_id"] == "r6058"
    assert (alert["stream"], alert["detector"], alert["kind"]) == ("feature:x", "scan", "drift")
    assert alert["score"] >= 1 and alert["target_ert"] == 2_000_000  # Bonferroni over 2 features
    # How: the mean moved by 2 sd; the strongest evidence is the last look's alone (from event 6009).
    details = alert["details"]
    assert details["test"] == "mean" and details["statistic"] > details["threshold"]
    assert details["change_index"] == 6_009 + 7 and details["change_timestamp"] == 7_009.0
    assert 1.5 < details["mean_shift_sd"] < 2.5 and 0.7 < details["sd_ratio"] < 1.4


def test_replay_labels_grade_predictions_and_feed_the_error_stream(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    n, late = 6_000, 10
    events, labels = [], []
    truth_wrong = []
    for i in range(n):
        pred = int(rng.integers(0, 2))
        wrong = bool(rng.random() < (0.05 if i < 3_000 else 0.4))
        truth_wrong.append(wrong)
        ts = 1_000.0 + i * 0.01  # 100 events/s: a 2,000-event batch spans 20 s, well inside the TTL
        events.append(json.dumps({"request_id": f"r{i}", "model": "m", "timestamp": ts, "prediction": pred}).encode())
        label_ts = ts + 5 if i >= late else ts + 500  # the first `late` labels come after the TTL
        labels.append(json.dumps({"request_id": f"r{i}", "model": "m", "label": 1 - pred if wrong else pred}))
        labels[-1] = labels[-1][:-1] + f', "timestamp": {label_ts}}}'
    labels.sort(key=lambda line: json.loads(line)["timestamp"])
    src, lab, cfg, out = (tmp_path / name for name in ("e.jsonl", "l.jsonl", "c.yaml", "r.json"))
    _write(src, events)
    _write(lab, [line.encode() for line in labels] + [b"not json"])
    cfg.write_text("labels:\n  ttl_seconds: 100\n")
    assert main(["replay", str(src), "--labels", str(lab), "--config", str(cfg), "--report", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["labels"]["joined"] == n - late
    assert report["labels"]["late"] == late and report["labels"]["invalid"] == 1
    (row,) = report["summary"]
    window = [w for i, w in enumerate(truth_wrong) if i >= late][-1_000:]
    assert row["quality"]["metrics"]["accuracy"] == pytest.approx(1 - sum(window) / 1_000)
    errors = [a for a in report["alerts"] if a["stream"] == "errors"]
    assert [(a["index"], a["detector"]) for a in errors] == [(3_509, "error_rate")]
    # Graded predictions are r10.. (r0-r9 were late): the reference is r10-r1009, then windows
    # of 500; the window r3010-r3509 holds the change, and the alert names r3509's line.


def test_a_reference_file_sets_the_reference_and_a_bad_one_stops_start_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(6)

    def lines(n: int, mean: float) -> list[bytes]:
        return [
            json.dumps({"request_id": f"r{i}", "model": "m", "features": {"x": float(rng.normal(mean, 1))}}).encode()
            for i in range(n)
        ]

    ref, src, cfg, out = (tmp_path / n for n in ("ref.jsonl", "events.jsonl", "c.yaml", "r.json"))
    _write(ref, lines(1_000, 0.0))
    _write(src, lines(500, 2.0))  # one window, already shifted
    cfg.write_text(f"drift:\n  reference_file: {ref}\n")
    assert main(["replay", str(src), "--config", str(cfg), "--report", str(out)]) == 0
    alerts = json.loads(out.read_text())["alerts"]
    # The first look of x, which is tracked from its 10th event: events 9..58.
    assert [(a["index"], a["stream"]) for a in alerts] == [(58, "feature:x")]
    cfg.write_text(f"drift:\n  reference_file: {tmp_path / 'missing.jsonl'}\n")
    assert main(["check-config", str(cfg)]) == 2
    assert "drift.reference_file: cannot read" in capsys.readouterr().err
    _write(ref, [b"{oops"])
    cfg.write_text(f"drift:\n  reference_file: {ref}\n")
    assert main(["replay", str(src), "--config", str(cfg), "--report", str(out)]) == 2
    assert "line 1 is not a valid event" in capsys.readouterr().err


def test_a_reference_file_of_llm_events_sets_the_derived_and_categorical_references(tmp_path: Path) -> None:
    # Time per output token is derived (not logged) in both files, and finish reasons are a
    # categorical stream: both references come from the file, so a changed mix alerts at the
    # first look instead of after a reference is learned from the shifted traffic.
    rng = np.random.default_rng(7)

    def lines(n: int, tpot: float, length_share: float) -> list[bytes]:
        out = []
        for i in range(n):
            ttft, tokens = float(rng.lognormal(5.0, 0.2)), int(rng.integers(20, 200))
            event = {"request_id": f"r{i}", "model": "chat", "ttft_ms": ttft, "tokens_out": tokens}
            event |= {"latency_ms": ttft + float(rng.lognormal(np.log(tpot), 0.1)) * (tokens - 1)}
            event |= {"finish_reason": "length" if rng.random() < length_share else "stop"}
            out.append(json.dumps(event).encode())
        return out

    ref, src, cfg, out = (tmp_path / n for n in ("ref.jsonl", "events.jsonl", "c.yaml", "r.json"))
    _write(ref, lines(1_000, 30.0, 0.05))
    _write(src, lines(200, 60.0, 0.6))
    cfg.write_text(f"drift:\n  reference_file: {ref}\n")
    assert main(["replay", str(src), "--config", str(cfg), "--report", str(out)]) == 0
    alerts = json.loads(out.read_text())["alerts"]
    assert {"tpot", "finish_reason"} <= {a["stream"] for a in alerts}
    assert all(a["index"] < 100 for a in alerts if a["stream"] in ("tpot", "finish_reason"))
