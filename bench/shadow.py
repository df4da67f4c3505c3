"""Shadow benchmarks (issue 5): isolation, precision and the harness's overhead, in one run.

The model is an ONNX MLP-like chain built here (daemon/dev/shadow_models.py): 32 features lifted
to 256 columns, 8 identity MatMuls, projected back to 3 logits; ~tens of µs per inference on
one thread. Its "2× slower" twin has more identity MatMuls (same predictions). Every shadow run
goes through the real runner process (`RunnerProcess.call("run")`), as the daemon starts it.

1. Isolation: the daemon's ingestion (`Pipeline.process` over generated batches, drift on, as
   the daemon runs it) in events/s, alternating rounds without and with a shadow run in flight
   (runner held to 1 thread). Target: drop <= 15%.
2. Precision: 5 back-to-back runs of the same model, the spread (max - min) / median of the
   reported single-stream p50: <= 10%. In each run two candidates are compared with production:
   the same file (the ratio's CI must bracket 1.0) and the slower twin (it must exclude 1.0).
3. Overhead: the single-stream p50 the runner reports against `session.run` timed in a tight
   loop with the same session options, in a fresh process with the same thread environment,
   alternating: within 5%.

Also printed, no target: load-to-load differences. Four sessions of the same file, in this
process, each compared with the first by a one-pair bootstrap (1,000 interleaved pairs): why
the runner spreads a comparison over several session pairs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    GENERATOR_START_TIME,
    REPO_ROOT,
    fmt_rate,
    generator_values,
    parse_args,
    verdict,
    write_result,
)

sys.path.insert(0, str(REPO_ROOT))  # the model builders live with the tests

from daemon.config import Config, ShadowConfig
from daemon.ingest.sources import RawRecord, chunks_of
from daemon.monitors.reservoir import Sample
from daemon.runtime.app import build_pipeline
from daemon.shadow.compare import latency_ratio
from daemon.shadow.measure import interleaved, warm_up
from daemon.shadow.models import load_model
from daemon.shadow.service import THREAD_ENV, RunnerProcess, ShadowError
from tests.unit.shadow_models import onnx_linear_classifier, samples

NAME = "shadow"
K, C, HIDDEN = 32, 3, 256
REPEATS, SLOW_REPEATS = 8, 20  # identity MatMuls: the twin does ~2x the work
TARGET_DROP = 0.15
TARGET_SPREAD = 0.10
TARGET_OVERHEAD = 0.05
BATCH_SIZE = 2000

TIGHT_LOOP = """
import json, sys, time
import numpy as np
import onnxruntime as ort
path, queries, rows = sys.argv[1], int(sys.argv[2]), json.loads(sys.stdin.read())
opts = ort.SessionOptions()
opts.intra_op_num_threads = 1
opts.inter_op_num_threads = 1
opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
feeds = [{"x": np.asarray([r], dtype=np.float32)} for r in rows]
out = [sess.get_outputs()[0].name]
for f in feeds[:100]:
    sess.run(out, f)
lat = []
clock = time.perf_counter
n = len(feeds)
for i in range(queries):
    f = feeds[i % n]
    t0 = clock()
    sess.run(out, f)
    lat.append(clock() - t0)
print(json.dumps({"p50": float(np.quantile(lat, 0.5)), "queries": queries}))
"""


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rounds", type=int, default=3, help="isolation rounds of each kind (default 3)")
    p.add_argument("--round-seconds", type=float, default=8.0, help="ingestion seconds per round (default 8)")
    p.add_argument("--runs", type=int, default=5, help="back-to-back runs for precision (default 5)")


def _spec(name: str, path: Path, role: str = "production") -> dict[str, Any]:
    inputs = [{"name": "x", "features": [f"f{j}" for j in range(K)]}]
    return {"name": name, "runtime": "onnxruntime", "path": str(path), "role": role, "source_model": "src"} | {
        "inputs": inputs
    }


def _shadow(models: list[dict[str, Any]], history: Path, **fields: Any) -> ShadowConfig:
    base = {
        "models": models,
        "nice": 0,  # the comparisons below want the runner's own figures, not the scheduler's mercy
        "offline": {"enabled": False},
        "history_file": str(history),
        "threads": 1,
    }
    return ShadowConfig.model_validate(base | fields)


def isolation(model: Path, rows: list[Sample], tmp: Path, rounds: int, seconds: float) -> dict[str, Any]:
    """Ingestion events/s in alternating rounds without and with a shadow run in flight."""
    pairs = generator_values(200_000)
    records = [RawRecord("t", i % 3, i // 3, GENERATOR_START_TIME + i / 1000.0, k, v) for i, (k, v) in enumerate(pairs)]
    # A poll: per partition, its records in offset order (one chunk each), as the Kafka source hands them over.
    batches = [
        chunks_of(sorted(records[i : i + BATCH_SIZE], key=lambda r: r.partition))
        for i in range(0, len(records), BATCH_SIZE)
    ]

    def ingest() -> float:
        pipeline = build_pipeline(Config())
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for batch in batches:
                pipeline.process(batch)
                done += sum(map(len, batch))
                if time.perf_counter() - t0 >= seconds:
                    break
        return done / (time.perf_counter() - t0)

    # A single-stream run long enough to cover a round, whatever the round's length.
    long_run = {
        "warmup_queries": 100,
        "min_samples": 10,
        # max_windows: an unstable stretch (ingestion runs beside it) must not end the run early.
        "single_stream": {
            "min_duration_seconds": seconds + 30,
            "max_duration_seconds": seconds + 60,
            "max_windows": 1000,
        },
    }
    shadow = _shadow([_spec("m", model)], tmp / "iso-history.json", **long_run)
    rates: dict[str, list[float]] = {"without": [], "with": []}
    ingest()  # warm-up: imports, first-touch allocations
    for _ in range(rounds):
        rates["without"].append(ingest())
        runner = RunnerProcess(shadow, "error")
        thread = threading.Thread(target=_swallow, args=(runner, {"src": rows}), daemon=True)
        thread.start()
        time.sleep(4.0)  # the runner imports onnxruntime and loads the model, then measures
        rates["with"].append(ingest())
        if not runner.running:
            raise SystemExit("the shadow run ended before the ingestion round did: lengthen single_stream")
        runner.kill()
        thread.join()
    without, with_ = statistics.median(rates["without"]), statistics.median(rates["with"])
    drop = 1 - with_ / without
    return {"rates": rates, "without_median": without, "with_median": with_, "drop": drop, "ok": drop <= TARGET_DROP}


def _swallow(runner: RunnerProcess, samples_by_model: dict[str, list[Sample]]) -> None:
    with contextlib.suppress(ShadowError):  # killed on purpose at the end of the round
        runner.call("run", samples_by_model)


def precision(model: Path, twin: Path, rows: list[Sample], tmp: Path, runs: int) -> dict[str, Any]:
    models = [_spec("prod", model), _spec("same", model, "candidate"), _spec("slow", twin, "candidate")]
    runner = RunnerProcess(_shadow(models, tmp / "precision-history.json", min_samples=10), "error")
    p50s, brackets, excludes, ratios = [], 0, 0, {"same": [], "slow": []}
    for _ in range(runs):
        report = runner.call("run", {"src": rows})
        prod = next(m for m in report["models"] if m["name"] == "prod")
        p50s.append(prod["single_stream"]["p50"])
        for c in report["comparisons"]:
            r = c["latency_ratio"]
            ratios[c["candidate"]].append(r)
            if c["candidate"] == "same":
                brackets += r["lower"] <= 1.0 <= r["upper"]
            else:
                excludes += r["lower"] > 1.0
    spread = (max(p50s) - min(p50s)) / statistics.median(p50s)
    return {
        "p50_seconds": p50s,
        "spread": spread,
        "identical_ci_brackets_1": f"{brackets}/{runs}",
        "slower_ci_excludes_1": f"{excludes}/{runs}",
        "ratios": ratios,
        "ok": spread <= TARGET_SPREAD and brackets == runs and excludes == runs,
    }


def overhead(model: Path, rows: list[Sample], tmp: Path, pairs: int) -> dict[str, Any]:
    runner = RunnerProcess(_shadow([_spec("m", model)], tmp / "overhead-history.json", min_samples=10), "error")
    env = os.environ | dict.fromkeys(THREAD_ENV, "1")
    features = json.dumps([[s.features[f"f{j}"] for j in range(K)] for s in rows])
    ours, loop = [], []
    for _ in range(pairs):
        single = runner.call("run", {"src": rows})["models"][0]["single_stream"]
        ours.append(single["p50"])
        done = subprocess.run(
            [sys.executable, "-c", TIGHT_LOOP, str(model), str(single["queries"])],
            input=features,
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        loop.append(json.loads(done.stdout)["p50"])
    ratio = statistics.median(ours) / statistics.median(loop)
    return {
        "inferwatch_p50_seconds": ours,
        "tight_loop_p50_seconds": loop,
        "ratio": ratio,
        "ok": abs(ratio - 1) <= TARGET_OVERHEAD,
    }


def load_to_load(model: Path, rows: list[Sample], tmp: Path, loads: int = 4) -> dict[str, Any]:
    """Sessions 1..loads-1 of one file against session 0, one session pair each."""
    spec = _shadow([_spec("m", model)], tmp / "unused.json").models[0]
    sessions = []
    for _ in range(loads):
        m = load_model(spec, threads=1, allow_cuda=False)
        feeds = [m.feed([s]) for s in rows]
        warm_up(m.run, feeds, 200)
        sessions.append((m.run, feeds))
    ratios = []
    for run, feeds in sessions[1:]:
        base, other = interleaved(sessions[0][0], sessions[0][1], run, feeds, 1000)
        ratios.append(latency_ratio([(other, base)], resamples=2000, confidence=0.95).to_dict())
    return {
        "ratios": ratios,
        "max_deviation": max(abs(r["ratio"] - 1) for r in ratios),
        "one_pair_ci_excludes_1": sum(not r["lower"] <= 1.0 <= r["upper"] for r in ratios),
    }


def main() -> None:
    args = parse_args(__doc__, _add_args)
    rounds, seconds, runs = (2, 3.0, 3) if args.quick else (args.rounds, args.round_seconds, args.runs)
    rng = np.random.default_rng(1)
    w = rng.standard_normal((K, C)).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model = onnx_linear_classifier(tmp / "m.onnx", w, b, slow_repeats=REPEATS, hidden=HIDDEN)
        twin = onnx_linear_classifier(tmp / "slow.onnx", w, b, slow_repeats=SLOW_REPEATS, hidden=HIDDEN)
        rows = samples(1000, K, seed=2)
        loads = load_to_load(model, rows, tmp)
        over = overhead(model, rows, tmp, 3 if args.quick else 5)
        prec = precision(model, twin, rows, tmp, runs)
        iso = isolation(model, rows, tmp, rounds, seconds)
    ok = iso["ok"] and prec["ok"] and over["ok"]
    slow = statistics.median(r["ratio"] for r in prec["ratios"]["slow"])
    summary = (
        f"shadow: ingestion {fmt_rate(iso['with_median'])}/s with a run vs {fmt_rate(iso['without_median'])}/s "
        f"without (drop {iso['drop']:.1%}, target <= 15%: {verdict(iso['ok'])}); "
        f"p50 spread over {runs} runs {prec['spread']:.1%} (<= 10%), identical CI brackets 1 "
        f"{prec['identical_ci_brackets_1']}, slower twin (ratio {slow:.2f}) excludes 1 {prec['slower_ci_excludes_1']}: "
        f"{verdict(prec['ok'])}; harness p50 {statistics.median(over['inferwatch_p50_seconds']) * 1e6:.1f} µs vs "
        f"tight loop {statistics.median(over['tight_loop_p50_seconds']) * 1e6:.1f} µs ({over['ratio'] - 1:+.1%}, "
        f"within 5%: {verdict(over['ok'])})"
    )
    summary += (
        f"; load-to-load: up to {loads['max_deviation']:.2%} between sessions of one file, "
        f"{loads['one_pair_ci_excludes_1']}/{len(loads['ratios'])} one-pair CIs exclude 1"
    )
    body = {"isolation": iso, "precision": prec, "overhead": over, "load_to_load": loads, "ok": ok}
    write_result(NAME, args.quick, body, summary)


if __name__ == "__main__":
    main()
