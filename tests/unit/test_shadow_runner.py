"""One shadow run over tiny real models (ONNX Runtime, TorchScript) built in the tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from daemon.config import ShadowConfig
from daemon.monitors.reservoir import Sample
from daemon.shadow.runner import run
from daemon.shadow.service import RunnerProcess
from tests.unit.shadow_models import onnx_linear_classifier, samples, torchscript_classifier

K, C = 4, 3
RNG = np.random.default_rng(3)
W = RNG.standard_normal((K, C)).astype(np.float32)
B = RNG.standard_normal(C).astype(np.float32)
W_OTHER = RNG.standard_normal((K, C)).astype(np.float32)
FAST: dict[str, Any] = {
    "warmup_queries": 5,
    "min_samples": 10,
    "single_stream": {"min_duration_seconds": 0.05, "window_seconds": 0.02, "max_duration_seconds": 10},
    "offline": {"batch_sizes": [1, 4], "duration_seconds": 0.02},
    "compare_queries": 200,
    "bootstrap_resamples": 200,
}


def argmax(w: np.ndarray) -> Any:
    return lambda x: np.argmax(x @ w + B, axis=1)


def model(name: str, path: Path, role: str = "production", **fields: Any) -> dict[str, Any]:
    runtime = "onnxruntime" if path.suffix == ".onnx" else "torch"
    inputs = [{"name": "x", "features": [f"f{j}" for j in range(K)]}]
    base = {"name": name, "runtime": runtime, "path": str(path), "role": role, "source_model": "src", "inputs": inputs}
    return base | fields


def shadow(tmp: Path, *models: dict[str, Any], **fields: Any) -> ShadowConfig:
    body = {**FAST, "models": list(models), "history_file": str(tmp / "history.json"), **fields}
    return ShadowConfig.model_validate(body)


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in report["models"]}


def test_identical_models_agree_fully_and_replays_match_the_logs(tmp_path: Path) -> None:
    prod = onnx_linear_classifier(tmp_path / "prod.onnx", W, B)
    cand = torchscript_classifier(tmp_path / "cand.pt", W, B)
    rows = samples(300, K, seed=1, prediction_fn=argmax(W), labels=True)
    cfg = shadow(tmp_path, model("prod", prod), model("cand", cand, "candidate"), hourly_price=3.6)
    report = run(cfg, {"src": rows})
    json.dumps(report)  # the runner process answers in JSON
    models = by_name(report)
    p, c = models["prod"], models["cand"]
    assert p["status"] == c["status"] == "ok"
    assert p["single_stream"]["queries"] >= 662  # MLPerf's minimum for a p99
    assert 0 < p["single_stream"]["p50"] <= p["single_stream"]["p90"] <= p["single_stream"]["p99"]
    assert p["cold_start"]["session_seconds"] > 0 and p["cold_start"]["first_inference_seconds"] > 0
    assert [b["batch_size"] for b in p["offline"]] == [1, 4]
    assert p["skew"]["compared"] == 300 and p["skew"]["mismatches"] == 0 and not p["skew"]["flagged"]
    assert c["skew"] is None  # only production answers for what was logged
    assert p["quality"] == {"labelled": 300, "accuracy": 1.0}
    assert p["device"] == "cpu" and p["economics"]["energy_per_inference_joules"] is None  # no GPU: absent
    assert p["economics"]["model_bytes"] == prod.stat().st_size
    best = max(b["samples_per_second"] for b in p["offline"])
    assert p["economics"]["cost_per_1k_inferences"] == pytest.approx(3.6 / 3600 / best * 1000)
    (pair,) = report["comparisons"]
    assert (pair["candidate"], pair["production"]) == ("cand", "prod")
    assert pair["agreement"] == {"n": 300, "agreement": 1.0}
    ratio = pair["latency_ratio"]
    assert ratio["pairs"] == 200 and ratio["lower"] <= ratio["ratio"] <= ratio["upper"]
    assert ratio["sessions"] == 4  # the measured session pair and three fresh loads of both models
    env = report["environment"]
    assert "CPUExecutionProvider" in env["onnxruntime_providers"] and env["torch"]


def test_a_different_candidates_agreement_is_the_share_computed_directly(tmp_path: Path) -> None:
    prod = onnx_linear_classifier(tmp_path / "prod.onnx", W, B)
    cand = onnx_linear_classifier(tmp_path / "cand.onnx", W_OTHER, B)
    rows = samples(400, K, seed=2)
    x = np.array([[s.features[f"f{j}"] for j in range(K)] for s in rows], dtype=np.float32)
    expected = float(np.mean(argmax(W)(x) == argmax(W_OTHER)(x)))
    assert 0.05 < expected < 0.95  # a real disagreement, not a degenerate one
    report = run(shadow(tmp_path, model("prod", prod), model("cand", cand, "candidate")), {"src": rows})
    (pair,) = report["comparisons"]
    assert pair["agreement"]["agreement"] == pytest.approx(expected)


def test_skew_flags_logged_predictions_that_differ_from_the_replay(tmp_path: Path) -> None:
    prod = onnx_linear_classifier(tmp_path / "prod.onnx", W, B)
    rows = samples(200, K, seed=3, prediction_fn=argmax(W))
    for s in rows[:20]:
        s.prediction = (s.prediction + 1) % C  # production served something else for these
    for s in rows[20:30]:
        s.prediction = None  # not logged: not compared
    report = run(shadow(tmp_path, model("prod", prod)), {"src": rows})
    skew = by_name(report)["prod"]["skew"]
    assert skew["compared"] == 190 and skew["mismatches"] == 20
    assert skew["mismatch_rate"] == pytest.approx(20 / 190) and skew["flagged"]
    assert skew["examples"] == [0, 1, 2, 3, 4]


def test_skew_compares_only_the_named_variants_logs(tmp_path: Path) -> None:
    prod = onnx_linear_classifier(tmp_path / "prod.onnx", W, B)
    rows = samples(100, K, seed=4, prediction_fn=argmax(W))
    for s in rows[:50]:
        s.variant, s.prediction = "canary", (s.prediction + 1) % C
    report = run(shadow(tmp_path, model("prod", prod, source_variant="default")), {"src": rows})
    skew = by_name(report)["prod"]["skew"]
    assert skew["compared"] == 0  # no sample is logged by variant "default"
    for s in rows[50:]:
        s.variant = "default"
    report = run(shadow(tmp_path, model("prod", prod, source_variant="default")), {"src": rows})
    assert by_name(report)["prod"]["skew"]["compared"] == 50
    assert by_name(report)["prod"]["skew"]["mismatches"] == 0


def test_a_broken_model_fails_alone_and_a_starved_one_is_skipped(tmp_path: Path) -> None:
    prod = onnx_linear_classifier(tmp_path / "prod.onnx", W, B)
    gone = model("gone", tmp_path / "missing.onnx", "candidate")
    starved = model("starved", prod) | {"source_model": "quiet"}
    report = run(shadow(tmp_path, model("prod", prod), gone, starved), {"src": samples(50, K, 5), "quiet": []})
    models = by_name(report)
    assert models["prod"]["status"] == "ok"
    assert models["gone"]["status"] == "failed" and "missing.onnx" in models["gone"]["error"]
    assert models["starved"]["status"] == "skipped"
    assert models["starved"]["error"] == "0 samples of 'quiet' < shadow.min_samples=10"
    assert report["comparisons"] == []


def test_a_slower_model_under_the_same_name_is_a_regression_across_runs(tmp_path: Path) -> None:
    path = onnx_linear_classifier(tmp_path / "m.onnx", W, B)
    rows = {"src": samples(100, K, 6)}
    cfg = shadow(tmp_path, model("m", path), regression_min_runs=3)
    # Runs until three were stable (a busy machine can make one unstable: it does not count).
    flags: list[dict[str, Any]] = []
    while len(flags) < 3 or _stable_runs(tmp_path) < 3:
        assert len(flags) < 8, flags
        flags.append(by_name(run(cfg, rows))["m"]["regression"])
    assert not any(f["flagged"] for f in flags)
    assert "earlier stable runs" in flags[0]["reason"]
    onnx_linear_classifier(path, W, B, slow_repeats=40, hidden=512)  # same name, same answers, much slower
    again = by_name(run(cfg, rows))["m"]
    assert again["regression"]["flagged"], again["regression"]
    assert again["regression"]["runs"] == 3  # judged against the three stable runs in the history file
    history = json.loads((tmp_path / "history.json").read_text())
    (per_hardware,) = history["runs"]["m"].values()
    assert len(per_hardware) == len(flags) + 1


def _stable_runs(tmp_path: Path) -> int:
    history = json.loads((tmp_path / "history.json").read_text())
    return sum(bool(e["stable"]) for entries in history["runs"]["m"].values() for e in entries)


def test_the_runner_process_answers_and_validates(tmp_path: Path) -> None:
    prod = onnx_linear_classifier(tmp_path / "prod.onnx", W, B)
    bad = model("bad", prod) | {"inputs": [{"name": "x", "features": ["f0", "f1", "f2"]}]}
    runner = RunnerProcess(shadow(tmp_path, model("prod", prod), bad), "error")
    assert runner.call("validate")["errors"] == [
        "shadow model 'bad': input 'x' expects 4 columns, mapping gives 3; list one feature per column in "
        "inputs[].features"
    ]
    good = RunnerProcess(shadow(tmp_path, model("prod", prod)), "error")
    report = good.call("run", {"src": samples(50, K, 7)})
    assert by_name(report)["prod"]["status"] == "ok"
    assert report["threads"] == 1


def test_check_config_names_the_mapping_error(tmp_path: Path) -> None:
    prod = onnx_linear_classifier(tmp_path / "prod.onnx", W, B)
    bad = model("bad", prod) | {"inputs": [{"name": "x", "features": ["f0", "f1", "f2"]}]}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"shadow": {"models": [bad]}}))
    done = subprocess.run(
        [sys.executable, "-m", "daemon", "check-config", str(cfg)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "input 'x' expects 4 columns, mapping gives 3" in done.stderr


def test_shadow_once_prints_a_table(tmp_path: Path) -> None:
    prod = onnx_linear_classifier(tmp_path / "prod.onnx", W, B)
    cand = onnx_linear_classifier(tmp_path / "cand.onnx", W, B, slow_repeats=2)
    events = tmp_path / "events.jsonl"
    rows = samples(60, K, 8, prediction_fn=argmax(W))
    events.write_text("".join(json.dumps(_event(s)) + "\n" for s in rows))
    cfg = tmp_path / "c.yaml"
    shadow_cfg = {**FAST, "models": [model("prod", prod), model("cand", cand, "candidate")]}
    cfg.write_text(json.dumps({"shadow": shadow_cfg | {"history_file": str(tmp_path / "h.json")}}))
    out = tmp_path / "report.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "daemon",
            "shadow",
            "--config",
            str(cfg),
            "--once",
            "--input",
            str(events),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:4] == ["model", "role", "status", "samples"]
    assert lines[1].split()[:4] == ["prod", "production", "ok", "60"]
    assert any(line.startswith("cand ") and " prod " in line for line in lines[3:])
    report = json.loads(out.read_text())
    assert by_name(report)["prod"]["skew"]["mismatches"] == 0


def _event(s: Sample) -> dict[str, Any]:
    return {"request_id": s.request_id, "model": "src", "features": s.features, "prediction": s.prediction}


def test_candidates_are_compared_only_with_production_models_of_their_task(tmp_path: Path) -> None:
    from tests.unit.shadow_models import onnx_regressor

    classifier = onnx_linear_classifier(tmp_path / "c.onnx", W, B)
    regressor = onnx_regressor(tmp_path / "r.onnx", W[:, 0], 0.0)
    models = [
        model("clf-prod", classifier),
        model("reg-prod", regressor, task="regression"),
        model("reg-cand", regressor, "candidate", task="regression"),
    ]
    report = run(shadow(tmp_path, *models), {"src": samples(50, K, 9)})
    assert [(c["candidate"], c["production"]) for c in report["comparisons"]] == [("reg-cand", "reg-prod")]
    assert report["comparisons"][0]["agreement"]["mean_abs_difference"] == 0.0
