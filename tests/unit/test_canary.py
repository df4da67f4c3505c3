"""Canary verdicts: baselines, the regression and A/A replays, resets, fail-fast, and the outputs."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from daemon.cli import main
from daemon.config import CanaryConfig, from_mapping
from daemon.ingest.events import InferenceEvent
from daemon.monitors.canary import ModelCanary
from daemon.runtime.app import Daemon
from tests.integration.support import parse, total


def stream(
    path: Path,
    n: int,
    seed: int,
    slow: float = 1.0,
    error_rate: tuple[float, float] = (0.01, 0.01),
    variants: tuple[str, str] = ("control", "canary"),
    canary_version: str | None = None,
) -> None:
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            arm = rng.random() < 0.5
            variant = variants[arm]
            version = (canary_version or "2") if arm else "1"
            if canary_version and arm and i >= n // 2:
                version = "3"
            ev = {
                "request_id": f"r{i}",
                "model": "m",
                "version": version,
                "variant": variant,
                "latency_ms": rng.lognormvariate(3.0, 0.3) * (slow if arm else 1.0),
                "status": "error" if rng.random() < error_rate[arm] else "ok",
                "score": rng.random(),
            }
            f.write(json.dumps(ev) + "\n")


def replay_canary(tmp_path: Path, config: str = "") -> list[dict[str, Any]]:
    out, cfg = tmp_path / "report.json", tmp_path / "c.yaml"
    cfg.write_text(config or "{}\n")
    assert main(["replay", str(tmp_path / "events.jsonl"), "--config", str(cfg), "--report", str(out)]) == 0
    return list(json.loads(out.read_text())["canary"])


def test_a_30_percent_latency_regression_fails_naming_latency(tmp_path: Path) -> None:
    stream(tmp_path / "events.jsonl", 20_000, seed=1, slow=1.3)
    timeline = replay_canary(tmp_path)
    assert timeline[-1]["verdict"] == "fail"
    assert (timeline[-1]["model"], timeline[-1]["variant"], timeline[-1]["baseline"]) == ("m", "canary", "control")
    assert any(r.startswith("latency +") for r in timeline[-1]["reasons"])
    # The first verdict comes with the first batch where both arms have min_requests (500).
    assert timeline[0]["index"] == 1_999 and timeline[0]["reset"] is True


@pytest.mark.parametrize("seed", range(6))
def test_identical_arms_never_fail(tmp_path: Path, seed: int) -> None:
    stream(tmp_path / "events.jsonl", 20_000, seed=100 + seed)
    timeline = replay_canary(tmp_path)
    assert timeline, "a verdict timeline is written"
    assert all(e["verdict"] != "fail" for e in timeline)
    assert timeline[-1]["verdict"] in ("pass", "inconclusive")


def test_a_critical_error_rate_fails_fast_and_a_new_version_restarts(tmp_path: Path) -> None:
    stream(tmp_path / "events.jsonl", 20_000, seed=3, error_rate=(0.01, 0.05), canary_version="2")
    timeline = replay_canary(tmp_path)
    first_fail = next(e for e in timeline if e["verdict"] == "fail")
    assert first_fail["version"] == "2" and any(r.startswith("error_rate") for r in first_fail["reasons"])
    assert first_fail["index"] < 4_000  # critical: no waiting for BH across the other metrics
    restarted = [e for e in timeline if e["version"] == "3"]
    assert restarted and restarted[0]["reset"] is True and restarted[0]["index"] >= 10_000


def _events(variant: str, n: int, version: str = "1") -> list[InferenceEvent]:
    return [InferenceEvent(request_id=f"{variant}{i}", model="m", variant=variant, version=version) for i in range(n)]


def test_baseline_defaults() -> None:
    named = ModelCanary("m", CanaryConfig())
    named.add_events("blue", "1", _events("blue", 900))
    named.add_events("stable", "1", _events("stable", 10))
    named.evaluate()
    assert named.baseline == "stable"
    busiest = ModelCanary("m", CanaryConfig(min_requests=100))
    busiest.add_events("blue", "1", _events("blue", 300))
    busiest.add_events("green", "1", _events("green", 50))
    busiest.evaluate()
    assert busiest.baseline == "blue" and set(busiest.comparisons) == {"green"}
    configured = ModelCanary("m", CanaryConfig(baselines={"m": "green"}))
    assert configured.baseline == "green"
    alone = ModelCanary("m", CanaryConfig(min_requests=10))
    alone.add_events("blue", "1", _events("blue", 300))
    assert alone.evaluate() == [] and alone.baseline is None


def test_gauges_and_the_canary_endpoint(tmp_path: Path) -> None:
    d = Daemon(from_mapping({"http": {"host": "127.0.0.1", "port": 0}}))
    rng = random.Random(5)
    from daemon.ingest.sources import RawRecord

    records = []
    for i in range(4_000):
        variant = "canary" if i % 2 else "control"
        ev = {"request_id": f"r{i}", "model": "m", "variant": variant, "version": "2" if i % 2 else "1"}
        ev["latency_ms"] = rng.lognormvariate(3.0, 0.3) * (1.5 if i % 2 else 1.0)
        records.append(RawRecord("t", 0, i, None, None, json.dumps(ev).encode()))
    for i in range(0, len(records), 2_000):
        d.pipeline.process(records[i : i + 2_000])
    s = parse(d.exposition.render().decode())
    lbl = {"model": "m", "variant": "canary", "baseline": "control"}
    assert total(s, "inferwatch_canary_verdict", **lbl) == -1
    assert total(s, "inferwatch_canary_metric_verdict", metric="latency", **lbl) == -1
    assert total(s, "inferwatch_canary_requests", arm="candidate", **lbl) == 2_000
    effect = total(s, "inferwatch_canary_metric_effect", metric="latency", **lbl)
    assert total(s, "inferwatch_canary_metric_effect_lower", metric="latency", **lbl) < effect
    report = d.canary_report("m")
    assert report is not None and report["variants"]["canary"]["verdict"] == "fail"
    assert d.canary_report("nope") is None
    assert set(d.canary_report(None)["models"]) == {"m"}  # type: ignore[index]


def test_a_fail_stands_until_a_new_version(tmp_path: Path) -> None:
    rng = random.Random(8)
    with (tmp_path / "events.jsonl").open("w") as f:
        for i in range(40_000):
            arm = i % 2 == 1
            slow = 1.3 if arm and i < 2_000 else 1.0  # the canary recovers after 1,000 of its requests
            ev = {"request_id": f"r{i}", "model": "m", "variant": "canary" if arm else "control"}
            ev |= {"version": "2" if arm else "1", "latency_ms": rng.lognormvariate(3.0, 0.3) * slow}
            f.write(json.dumps(ev) + "\n")
    timeline = replay_canary(tmp_path)
    assert [e["verdict"] for e in timeline] == ["fail"]
