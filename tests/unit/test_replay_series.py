"""The replay report's time series and alert distributions (issue 18, part 3; docs/replay-report.md):
each point agrees with a computation over the events of its interval, however often points merged."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from daemon.config import from_mapping
from daemon.runtime.replay import replay_state

N = 30_000
STEP = 0.1  # seconds between events
SHIFT_AT = 18_000  # x moves by 3 sd from this event on


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    rng = np.random.default_rng(18)
    events = []
    for i in range(N):
        canary = rng.random() < 0.3
        pred = int(rng.integers(0, 2))
        score = float(rng.random())
        right = rng.random() < 0.8
        events.append(
            {
                "request_id": f"r{i}",
                "model": "m",
                "version": "2" if canary else "1",
                "variant": "canary" if canary else "control",
                "timestamp": 1_000.0 + i * STEP,
                "latency_ms": float(rng.lognormal(3, 0.3)) * (1.5 if canary else 1.0),
                "status": "error" if rng.random() < 0.02 else "ok",
                "prediction": pred,
                "score": score,
                "label": pred if right else 1 - pred,
                "features": {"x": float(rng.normal(3.0 if i >= SHIFT_AT else 0.0, 1.0))},
            }
        )
    src = tmp_path_factory.mktemp("series") / "events.jsonl"
    src.write_text("".join(json.dumps(e) + "\n" for e in events))
    # 60 batches into at most 16 points: the points merge pairwise at least twice.
    config = from_mapping({"source": {"kafka": {"max_poll_records": 500}}})
    report, _ = replay_state(src, config, series_points=16)
    return json.loads(json.dumps(report)), events


def _key(report: dict[str, Any], variant: str) -> dict[str, Any]:
    (k,) = [k for k in report["series"]["keys"] if k["variant"] == variant]
    return k


def test_points_are_bounded_and_each_holds_its_interval(run: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    report, events = run
    s = report["series"]
    times = s["time"]
    assert 8 <= s["points"] == len(times) <= 16
    assert s["start"] == 1_000.0 and times[-1] == 1_000.0 + (N - 1) * STEP
    assert all(b > a for a, b in itertools.pairwise(times))
    bounds = [s["start"] - 1, *times]
    for variant in ("control", "canary"):
        k = _key(report, variant)
        mine = [e for e in events if e["variant"] == variant]
        (row,) = [r for r in report["summary"] if r["variant"] == variant]
        assert sum(k["events"]) == row["events"] and sum(k["errors"]) == row["errors"]
        for i, (lo, hi) in enumerate(itertools.pairwise(bounds)):
            inside = [e for e in mine if lo < e["timestamp"] <= hi]
            assert k["events"][i] == len(inside)
            assert k["errors"][i] == sum(e["status"] == "error" for e in inside)
            duration = hi - (s["start"] if i == 0 else lo)
            assert k["events_per_second"][i] == pytest.approx(len(inside) / duration, rel=1e-5)
            latency = np.array([e["latency_ms"] for e in inside]) / 1000
            for q in (50, 95, 99):
                expected = np.percentile(latency, q, method="inverted_cdf")
                assert k["latency_seconds"][f"p{q}"][i] == pytest.approx(expected, rel=0.011)


def test_drift_scores_peak_where_the_alert_is_and_the_alert_can_be_drawn(
    run: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    report, _ = run
    times = report["series"]["time"]
    alerts = [a for a in report["alerts"] if a["stream"] == "feature:x"]
    assert {a["variant"] for a in alerts} == {"control", "canary"}
    for a in alerts:
        x = _key(report, a["variant"])["drift"]["feature:x"]
        at = next(i for i, t in enumerate(times) if t >= a["timestamp"])
        assert x["score"][at] >= 1.0 and x["score"][at] == pytest.approx(a["score"], rel=1e-5)
        assert all(v is None or v < 1.0 for v in x["score"][:at])  # before the shift: quiet
        assert {v for v in x["threshold"] if v is not None} == {1.0}  # a scan fires at 1
        d = a["distribution"]
        assert len(d["edges"]) == len(d["reference_share"]) - 1 == len(d["window_share"]) - 1
        assert sum(d["reference_share"]) == pytest.approx(1.0) and sum(d["window_share"]) == pytest.approx(1.0)
        assert d["edges"] == sorted(d["edges"])
        # 3 sd up: the window crowds into the reference's top bin (about 1/8 of the reference).
        assert d["window_share"][-1] > 3 * d["reference_share"][-1]


def test_canary_breakdown_and_accuracy_follow_the_comparison(
    run: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    report, events = run
    times = report["series"]["time"]
    (c,) = report["series"]["canary"]
    assert (c["model"], c["variant"], c["baseline"]) == ("m", "canary", "control")
    assert c["verdict"][-1] == "fail" and c["metrics"]["latency"]["verdict"][-1] == "fail"
    latency = c["metrics"]["latency"]
    assert latency["scale"] == "log" and latency["worse"] == "higher"
    for effect, lower, upper in zip(latency["effect"], latency["lower"], latency["upper"], strict=True):
        if effect is not None:
            assert lower <= effect <= upper
    assert np.expm1(latency["effect"][-1]) == pytest.approx(0.5, abs=0.05)  # 1.5x slower
    # The verdict timeline's fail lies within the first point that reads fail.
    fail = next(e for e in report["canary"] if e["verdict"] == "fail")
    first = c["verdict"].index("fail")
    assert (times[first - 1] if first else -np.inf) < events[fail["index"]]["timestamp"] <= times[first]
    for variant in ("control", "canary"):
        k = _key(report, variant)
        (row,) = [r for r in report["summary"] if r["variant"] == variant]
        assert k["accuracy"][-1] == pytest.approx(row["quality"]["metrics"]["accuracy"], rel=1e-5)
        assert k["accuracy_estimated"][-1] == pytest.approx(row["quality"]["accuracy_estimated"], rel=1e-5)


def test_events_without_time_give_no_points(tmp_path: Path) -> None:
    src = tmp_path / "e.jsonl"
    src.write_text("".join(json.dumps({"request_id": f"r{i}", "model": "m"}) + "\n" for i in range(50)))
    report, _ = replay_state(src, from_mapping({}))
    assert report["series"]["points"] == 0 and report["series"]["keys"] == []


def test_a_categorical_alert_carries_every_level_share(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    lines = []
    for i in range(6_000):
        levels, p = (["a", "b", "c"], [0.6, 0.3, 0.1]) if i < 4_000 else (["a", "b", "c"], [0.2, 0.2, 0.6])
        event = {
            "request_id": f"r{i}",
            "model": "m",
            "timestamp": 1_000.0 + i,
            "features": {"k": rng.choice(levels, p=p)},
        }
        lines.append(json.dumps(event) + "\n")
    src = tmp_path / "e.jsonl"
    src.write_text("".join(lines))
    report, _ = replay_state(src, from_mapping({}))
    (alert,) = [a for a in report["alerts"] if a["stream"] == "feature:k"]
    d = alert["distribution"]
    shares = dict(zip(d["levels"], zip(d["reference_share"], d["window_share"], strict=True), strict=True))
    assert {"a", "b", "c"} <= set(shares)
    assert sum(d["reference_share"]) == pytest.approx(1.0) and sum(d["window_share"]) == pytest.approx(1.0)
    assert shares["a"][0] > shares["a"][1] and shares["c"][1] > shares["c"][0]  # a gave way to c
