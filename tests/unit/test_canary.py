"""Canary verdicts: baselines, the regression and A/A replays, resets, fail-fast, and the outputs."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pytest

from daemon.cli import main
from daemon.config import CanaryConfig, CanaryMetric, from_mapping
from daemon.ingest.batch import Key, build
from daemon.ingest.events import InferenceEvent
from daemon.ingest.sources import RawRecord, chunks_of
from daemon.monitors.canary import METRICS, Canary
from daemon.runtime.app import Daemon, build_pipeline
from daemon.runtime.replay import replay
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


def _first_look_with(path: Path, requests: int, look_every: int = 100) -> int:
    """The input position of the first look (every look_every-th request of model m, the only
    one) at which both arms have `requests`."""
    arms: dict[str, int] = {}
    for i, line in enumerate(path.read_text().splitlines()):
        variant = json.loads(line)["variant"]
        arms[variant] = arms.get(variant, 0) + 1
        if (i + 1) % look_every == 0 and len(arms) == 2 and min(arms.values()) >= requests:
            return i
    raise AssertionError("no such look")


def test_a_30_percent_latency_regression_fails_naming_latency(tmp_path: Path) -> None:
    stream(tmp_path / "events.jsonl", 20_000, seed=1, slow=1.3)
    timeline = replay_canary(tmp_path)
    assert timeline[-1]["verdict"] == "fail"
    assert (timeline[-1]["model"], timeline[-1]["variant"], timeline[-1]["baseline"]) == ("m", "canary", "control")
    assert any(r.startswith("latency +") for r in timeline[-1]["reasons"])
    # Entries come at looks: the model's 100th, 200th, ... request.
    assert all(e["index"] % 100 == 99 for e in timeline)
    # The comparison starts at the first look, waiting; its first verdict comes with the first
    # look where both arms have min_requests (500).
    assert timeline[0]["index"] == 99 and timeline[0]["reset"] is True
    assert (timeline[0]["verdict"], timeline[0]["reasons"]) == ("inconclusive", ["waiting for 500 requests per arm"])
    assert timeline[1]["index"] == _first_look_with(tmp_path / "events.jsonl", 500)
    assert timeline[1]["verdict"] == "fail" and timeline[1]["reset"] is False


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
    assert all(e["index"] % 100 == 99 for e in timeline)  # at looks


# Requests in a row: (variant, how many) of model m, or (variant, how many, model).
Run = tuple[str, int] | tuple[str, int, str]


def _fed(settings: CanaryConfig, *polls: list[Run]) -> tuple[Canary, list[dict[str, Any]]]:
    """A partition's canary fed polls of runs of requests, each run (variant, how many[, model]),
    model m by default; returns it and its timeline."""
    keys: list[Key] = []
    canary = Canary(settings, keys)
    timeline: list[dict[str, Any]] = []
    position = 0
    for poll in polls:
        runs = [(run[0], run[1], run[2] if len(run) == 3 else "m") for run in poll]
        events = [
            InferenceEvent(request_id=f"r{position + i}", model=model, variant=variant, version="1", latency_ms=10.0)
            for variant, n, model in runs
            for i in range(n)
        ]
        new = [k for k in dict.fromkeys((e.model, e.version, e.variant) for e in events) if k not in keys]
        keys.extend(new)
        canary.add_rows(len(new))
        rows = np.array([keys.index((e.model, e.version, e.variant)) for e in events], dtype=np.int64)
        batch = build(events, [0] * len(events), list(range(position, position + len(events))), [None] * len(events))
        timeline += canary.update(rows, batch)
        position += len(events)
    return canary, timeline


def test_baseline_defaults() -> None:
    # A variant named like a baseline is the baseline from its first request, however busy the others.
    named, _ = _fed(CanaryConfig(), [("blue", 900)], [("stable", 1)])
    assert named.models["m"].baseline == "stable"
    # Otherwise the busiest arm, picked at a look once it has min_requests.
    busiest, timeline = _fed(CanaryConfig(min_requests=100), [("blue", 300), ("green", 50)])
    assert busiest.models["m"].baseline == "blue" and set(busiest.models["m"].comparisons) == {"green"}
    assert [(e["index"], e["baseline"], e["variant"]) for e in timeline] == [(99, "blue", "green")]
    configured, _ = _fed(CanaryConfig(min_requests=100, baselines={"m": "green"}), [("blue", 300), ("green", 50)])
    assert configured.models["m"].baseline == "green" and set(configured.models["m"].comparisons) == {"blue"}
    alone, timeline = _fed(CanaryConfig(min_requests=10), [("blue", 300)])
    assert timeline == [] and alone.models["m"].baseline is None and alone.models["m"].comparisons == {}


def test_a_model_waiting_for_its_baseline_pick_is_left_alone_by_polls_without_it() -> None:
    """Model n's busiest arm has min_requests but no look has come yet (n's 100th request): a poll
    of model m alone changes nothing of n's, and n's baseline is picked at its 100th request."""
    canary, timeline = _fed(
        CanaryConfig(min_requests=10),
        [("blue", 20, "n"), ("green", 10, "n")],
        [("control", 5)],
        [("blue", 70, "n")],
    )
    assert canary.models["n"].baseline == "blue"
    # n's 100th request is at position 104 (30 of n, then 5 of m, then 70 of n).
    assert [(e["index"], e["model"], e["baseline"], e["variant"]) for e in timeline] == [(104, "n", "blue", "green")]


def test_gauges_and_the_canary_endpoint(tmp_path: Path) -> None:
    d = Daemon(from_mapping({"http": {"host": "127.0.0.1", "port": 0}}))
    rng = random.Random(5)
    records = []
    for i in range(4_000):
        variant = "canary" if i % 2 else "control"
        ev: dict[str, Any] = {"request_id": f"r{i}", "model": "m", "variant": variant, "version": "2" if i % 2 else "1"}
        ev["latency_ms"] = rng.lognormvariate(3.0, 0.3) * (1.5 if i % 2 else 1.0)
        records.append(RawRecord("t", 0, i, None, None, json.dumps(ev).encode()))
    for i in range(0, len(records), 2_000):
        d.pipeline.process(chunks_of(records[i : i + 2_000]))
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
            version = ("3" if i >= 20_000 else "2") if arm else "1"
            ev: dict[str, Any] = {"request_id": f"r{i}", "model": "m", "variant": "canary" if arm else "control"}
            ev |= {"version": version, "latency_ms": rng.lognormvariate(3.0, 0.3) * slow}
            f.write(json.dumps(ev) + "\n")
    timeline = replay_canary(tmp_path)
    verdicts = [(e["version"], e["verdict"], e["reset"]) for e in timeline]
    # v2: the comparison starts (waiting for min_requests) and fails while the canary is slow;
    # 18,000 recovered requests later the fail still stands. v3 starts afresh, and passes.
    assert verdicts == [
        ("2", "inconclusive", True),
        ("2", "fail", False),
        ("3", "inconclusive", True),
        ("3", "pass", False),
    ]
    assert timeline[0]["reasons"] == ["waiting for 500 requests per arm"]
    assert timeline[1]["index"] < 2_000 and any(r.startswith("latency +") for r in timeline[1]["reasons"])
    assert timeline[2]["index"] > 20_000


def mixed(path: Path, n: int, *, latency: bool = False, labels: bool = False) -> None:
    """Model m (control v1; canary v2, then v3 from n/2, with 5% errors against 1%, and 30% slower
    with latencies) and model n (blue and green, alike: its baseline is picked at a look)."""
    rng = random.Random(21)
    with path.open("w") as f:
        for i in range(n):
            if rng.random() < 0.6:
                canary = rng.random() < 0.5
                ev: dict[str, Any] = {"model": "m", "variant": "canary" if canary else "control"}
                ev["version"] = ("3" if i >= n // 2 else "2") if canary else "1"
                ev["status"] = "error" if rng.random() < (0.05 if canary else 0.01) else "ok"
                if latency:
                    ev["latency_ms"] = rng.lognormvariate(3.0, 0.3) * (1.3 if canary else 1.0)
            else:
                ev = {"model": "n", "variant": "blue" if rng.random() < 0.7 else "green", "version": "1"}
                if latency:
                    ev["latency_ms"] = rng.lognormvariate(2.0, 0.5)
            ev |= {"request_id": f"r{i}", "score": rng.random()}
            ev["prediction"] = int(ev["score"] > 0.5)
            if labels and rng.random() < 0.3:
                ev["label"] = ev["prediction"] if rng.random() < 0.9 else 1 - ev["prediction"]
            f.write(json.dumps(ev) + "\n")


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("errors and scores"),
        pytest.param(
            "latencies",
        ),
        pytest.param(
            "inline labels",
        ),
    ],
)
def test_the_timeline_is_the_same_whatever_the_poll_sizes(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "events.jsonl"
    mixed(path, 8_000, latency=kind == "latencies", labels=kind == "inline labels")

    def timeline(cut: int) -> list[dict[str, Any]]:
        config = from_mapping({"drift": {"enabled": False}, "source": {"kafka": {"max_poll_records": cut}}})
        return list(replay(path, config)["canary"])

    reference = timeline(2_000)
    # The stream has what must not depend on the cuts: both models, fails, a pass, a restart.
    assert {e["model"] for e in reference} == {"m", "n"}
    assert {(e["version"], e["verdict"]) for e in reference if e["model"] == "m"} >= {("2", "fail"), ("3", "fail")}
    if kind == "errors and scores":
        assert any(e["model"] == "n" and e["verdict"] == "pass" for e in reference)
    assert any(e["version"] == "3" and e["reset"] for e in reference)
    for cut in (333, 7):
        assert timeline(cut) == reference, f"polls of {cut} events"


def llm_stream(path: Path, n: int, *, tpot: float = 1.0, tokens: float = 1.0, seed: int = 5) -> None:
    """An LLM's control and canary: TTFT, output tokens and latency (time per output token is
    derived from them); the canary's time per token ×tpot and answers ×tokens."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            canary = i % 2 == 1
            ttft = rng.lognormvariate(5.7, 0.3)
            out = max(2, round(rng.lognormvariate(5.3, 0.5) * (tokens if canary else 1.0)))
            per_token = rng.lognormvariate(3.4, 0.2) * (tpot if canary else 1.0)
            ev = {"request_id": f"r{i}", "model": "chat", "variant": "canary" if canary else "control"}
            ev |= {"version": "2" if canary else "1", "ttft_ms": ttft, "tokens_out": out}
            ev |= {"latency_ms": ttft + per_token * (out - 1)}
            f.write(json.dumps(ev) + "\n")


def test_an_llm_canary_slower_per_token_with_shorter_answers_fails_on_tpot(tmp_path: Path) -> None:
    llm_stream(tmp_path / "events.jsonl", 6_000, tpot=1.3, tokens=0.8)
    timeline = replay_canary(tmp_path)
    fail = next(e for e in timeline if e["verdict"] == "fail")
    assert [r.split(" ", 1)[0] for r in fail["reasons"]] == ["tpot"]
    assert fail["score"] == 0.0  # below every pass line


def test_an_llm_canary_as_fast_per_token_with_longer_answers_does_not_fail(tmp_path: Path) -> None:
    llm_stream(tmp_path / "events.jsonl", 20_000, tokens=1.3)
    records = [
        RawRecord("events", 0, i, None, None, line.encode())
        for i, line in enumerate((tmp_path / "events.jsonl").read_text().splitlines())
    ]
    timeline: list[dict[str, Any]] = []
    pipeline = build_pipeline(from_mapping({"drift": {"enabled": False}}), canary_sink=timeline.extend)
    pipeline.process(chunks_of(records))
    assert timeline and all(e["verdict"] != "fail" for e in timeline)
    report = pipeline.canary_report("chat")
    assert report is not None
    metrics = report["variants"]["canary"]["metrics"]
    # End-to-end latency is about 30% worse, and shown so, but an LLM is not judged on it.
    assert metrics["latency"]["lower"] > math.log(1.2) and metrics["latency"]["judged"] is False
    assert metrics["tpot"]["judged"] is True and metrics["tpot"]["verdict"] != "fail"
    assert report["variants"]["canary"]["quantiles"]["latency"]["p50"]["lower"] > 0.1


def test_an_llm_is_judged_on_e2e_latency_when_configured(tmp_path: Path) -> None:
    llm_stream(tmp_path / "events.jsonl", 6_000, tokens=1.3)
    timeline = replay_canary(tmp_path, "canary: {llm_judge_e2e_latency: true}\n")
    fail = next(e for e in timeline if e["verdict"] == "fail")
    assert any(r.startswith("latency +") for r in fail["reasons"])


def test_goodput_against_the_models_slo_is_a_canary_metric(tmp_path: Path) -> None:
    # The canary misses the 100 ms objective for 8% of its requests (a slow mode), the control for
    # under 1%: its goodput is worse beyond the 1-point tolerance.
    rng = random.Random(21)
    records = []
    for i in range(8_000):
        canary = i % 2 == 1
        latency = rng.lognormvariate(3.5, 0.2) + (200.0 if canary and rng.random() < 0.08 else 0.0)
        ev = {"request_id": f"r{i}", "model": "m", "variant": "canary" if canary else "control", "version": "1"}
        records.append(RawRecord("events", 0, i, None, None, json.dumps(ev | {"latency_ms": latency}).encode()))
    slo = {"default": {"latency_ms": 100, "goodput": 0.99}}
    pipeline = build_pipeline(from_mapping({"drift": {"enabled": False}, "slo": slo}))
    pipeline.process(chunks_of(records))
    report = pipeline.canary_report("m")
    assert report is not None
    goodput = report["variants"]["canary"]["metrics"]["goodput"]
    assert goodput["verdict"] == "fail" and goodput["upper"] < -0.05 < goodput["effect"] + 0.03
    # Without a latency objective a request is good unless it is an error, and none is: every
    # request of both arms is good, so there is no spread to test.
    pipeline = build_pipeline(from_mapping({"drift": {"enabled": False}, "slo": {"default": {}}}))
    pipeline.process(chunks_of(records))
    report = pipeline.canary_report("m")
    assert report is not None
    assert "goodput" not in report["variants"]["canary"]["metrics"]


def test_the_config_knows_every_canary_metric() -> None:
    assert get_args(CanaryMetric) == METRICS  # canary.critical names them
