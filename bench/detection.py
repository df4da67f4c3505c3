"""Drift detection (issues 3, 15 and 16): delay against the information bound, false alarms, River's
defaults, replay throughput and CBPE error.

"Ours" is what the daemon runs for one stream: a partition's `Drift` with its defaults and one key,
whose only stream has the default detector for its kind: a feature `x` (numeric or categorical)
fed as columnar batches of events, as the pipeline builds them, or the label-error stream fed as
graded predictions. Its first 1,000 values are its first reference. River's detectors run with
their default parameters on the same arrays. Every case is R independent runs of L events, each
with a seeded change position.

- Change cases run at a stated mean run length to a false alarm of DELAY_ERT (10M) events per
  stream: a key of 10 features at the default 1M per key, with Bonferroni. The information bound
  (Lorden) is the least expected delay of any detector with that run length, ≈ ln(10⁷) / KL(after
  ‖ before) events; the target is a median delay ≤ 3× the bound over ≥ 20 runs:
  - abrupt: the mean moves by 0.25, 0.5 or 1 sd, or the sd grows ×1.25 or ×1.5, at a position in
    [10k, 40k] of 50k;
  - a categorical swap of k points: five levels with shares BEFORE; at the change, k points of
    share move from the most frequent level ("a") to the second ("b"): 10 points is 35%/25% →
    25%/35%;
  - gradual: the mean ramps linearly from 0 to 1 sd over events [20k, 70k) of 100k, then holds
    (target: caught within the ramp, every run);
  - errors: a Bernoulli error stream whose rate goes from 5% to 8% at 30k of 100k.
  - TTFT (issue 16): an LLM's time to first token, lognormal around 200 ms, doubles at a position
    in [10k, 40k] of 50k (target: every run within 1,000 requests).
- Stationary cases run at the default 1M per stream (what one stream of a one-feature key gets),
  20 streams of 1M events per kind (numeric, categorical): target ≤ 1 false alarm per 1M.

Per run: the delay is the first detection at or after the change minus the change (missed if
none); detections before the change are false alarms. KSWIN (~2k updates/s here) only sees a
slice of 5,000 events of its first 4 runs, centred on the change (a stationary run's first events),
so its figures come from far fewer events and say so.

Throughput: a zero-config `replay` (drift on, every default detector) of a JSONL file with 8
numeric and 2 categorical features, against a plain `json.loads` pass over the same file.
CBPE: the label-free accuracy estimate (`daemon.monitors.quality`) against the realized accuracy of
a classifier under covariate shift.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import GENERATOR_START_TIME, parse_args, percentile, verdict, write_result
from daemon.config import Config, DriftConfig
from daemon.ingest.batch import Batch, Key, build
from daemon.ingest.events import InferenceEvent
from daemon.monitors import drift
from daemon.monitors.names import Overflow
from daemon.runtime.replay import replay
from detectors.base import InputKind
from detectors.registry import DETECTORS

BATCH = 2000
KEY: Key = ("bench", "1", "default")
LEVELS = ("a", "b", "c", "d", "e")
BEFORE = (0.35, 0.25, 0.20, 0.12, 0.08)
ABRUPT = (10_000, 40_000)
DELAY_ERT = 10_000_000
STATIONARY_ERT = 1_000_000
BOUND_FACTOR = 3.0
TTFT, TTFT_LIMIT = "ttft x2", 1_000
RAMP_START, RAMP = 20_000, 50_000
RIVER: dict[InputKind, tuple[str, ...]] = {
    "numeric": ("adwin", "page_hinkley", "kswin"),
    "binary": ("ddm", "eddm", "hddm_a", "hddm_w", "fhddm"),
    "categorical": (),  # River has no categorical detector
}
STATIONARY_FA_TARGET = 1.0
THROUGHPUT_TARGET = 0.5

Maker = Callable[[np.random.Generator, int, int], list[Any]]


# -- streams --------------------------------------------------------------------------------


def normal(mean: float, sd: float) -> Maker:
    """N(0, 1) until the change, N(mean, sd²) from it."""

    def make(rng: np.random.Generator, length: int, change: int) -> list[Any]:
        x = rng.standard_normal(length)
        x[change:] = x[change:] * sd + mean
        return x.tolist()

    return make


def ttft_doubling(rng: np.random.Generator, length: int, change: int) -> list[Any]:
    """An LLM's time to first token in ms, lognormal around 200 ms (σ 0.5), twice as long from `change`."""
    x = np.exp(math.log(200.0) + 0.5 * rng.standard_normal(length))
    x[change:] *= 2.0
    return x.tolist()


def gradual(rng: np.random.Generator, length: int, change: int) -> list[Any]:
    """N(0, 1) plus a mean that ramps from 0 to 1 over RAMP events from `change`, then holds."""
    ramp = np.clip((np.arange(length) - change) / RAMP, 0.0, 1.0)
    return (rng.standard_normal(length) + ramp).tolist()


def swapped(points: float) -> tuple[float, ...]:
    """BEFORE with `points` of share moved from the most frequent level to the second."""
    return (BEFORE[0] - points, BEFORE[1] + points, *BEFORE[2:])


def categorical(points: float) -> Maker:
    def make(rng: np.random.Generator, length: int, change: int) -> list[Any]:
        before = rng.choice(LEVELS, p=BEFORE, size=change)
        after = rng.choice(LEVELS, p=swapped(points), size=length - change)
        return np.concatenate([before, after]).tolist()

    return make


def kl_normal(mean: float, sd: float) -> float:
    """KL(N(mean, sd²) ‖ N(0, 1)) in nats."""
    return (mean * mean + sd * sd - 1.0) / 2.0 - math.log(sd)


def kl_levels(points: float) -> float:
    after, before = np.array(swapped(points)), np.array(BEFORE)
    return float(np.sum(after * np.log(after / before)))


def bound(kl: float) -> float:
    """Lorden's bound on the expected delay at a mean run length of DELAY_ERT."""
    return math.log(DELAY_ERT) / kl


def errors(rng: np.random.Generator, length: int, change: int) -> list[Any]:
    rate = np.where(np.arange(length) < change, 0.05, 0.08)
    return (rng.random(length) < rate).tolist()


@dataclass(frozen=True)
class Case:
    name: str
    kind: InputKind
    runs: int
    length: int
    change: tuple[int, int] | None  # the change position is drawn from this range; None: stationary
    make: Maker
    limit: float | None = None  # delay target, in events
    limit_on: str = "median_delay"
    bound: float | None = None  # the information bound, events
    river: bool = True  # River's detectors run too


def cases(quick: bool) -> list[Case]:
    runs, long_runs, streams, stationary = (3, 2, 1, 200_000) if quick else (20, 10, 20, 1_000_000)

    def change(name: str, kind: InputKind, make: Maker, kl: float, river: bool = False) -> Case:
        b = bound(kl)
        return Case(name, kind, runs, 50_000, ABRUPT, make, BOUND_FACTOR * b, bound=b, river=river)

    return [
        Case("stationary numeric", "numeric", streams, stationary, None, normal(0.0, 1.0)),
        Case("stationary categorical", "categorical", streams, stationary, None, categorical(0.0)),
        Case("stationary errors 5%", "binary", 1 if quick else 3, stationary, None, errors),
        change("mean +0.25 sd", "numeric", normal(0.25, 1.0), kl_normal(0.25, 1.0)),
        change("mean +0.5 sd", "numeric", normal(0.5, 1.0), kl_normal(0.5, 1.0), river=True),
        change("mean +1 sd", "numeric", normal(1.0, 1.0), kl_normal(1.0, 1.0), river=True),
        change("scale x1.25", "numeric", normal(0.0, 1.25), kl_normal(0.0, 1.25)),
        change("scale x1.5", "numeric", normal(0.0, 1.5), kl_normal(0.0, 1.5), river=True),
        change("swap 5 points", "categorical", categorical(0.05), kl_levels(0.05)),
        change("swap 10 points", "categorical", categorical(0.10), kl_levels(0.10)),
        change("swap 20 points", "categorical", categorical(0.20), kl_levels(0.20)),
        # "Caught before the ramp ends": every run's delay from the ramp start is under RAMP.
        Case("gradual 1 sd over 50k", "numeric", long_runs, 100_000, (RAMP_START,) * 2, gradual, RAMP - 1, "max_delay"),
        Case("errors 5% -> 8%", "binary", long_runs, 100_000, (30_000, 30_000), errors),
        # Issue 16: every run's delay within TTFT_LIMIT requests.
        Case(TTFT, "numeric", runs, 50_000, ABRUPT, ttft_doubling, TTFT_LIMIT, "max_delay"),
    ]


# -- detection ------------------------------------------------------------------------------


def ours_detector(kind: InputKind) -> str:
    s = DriftConfig()
    return {"numeric": s.numeric_detector, "categorical": s.categorical_detector, "binary": s.error_detector}[kind]


def ours(kind: InputKind, values: list[Any], target_ert: int) -> list[int]:
    """Detection positions of the daemon's drift for one key whose one stream is of this kind."""
    settings = DriftConfig(target_ert_events=target_ert)
    monitor = drift.Drift(settings, drift.Calibrator(), Config().limits.max_features, [KEY], Overflow())
    monitor.add_rows(1)
    hits: list[int] = []
    for lo in range(0, len(values), BATCH):
        chunk = values[lo : lo + BATCH]
        index = np.arange(lo, lo + len(chunk), dtype=np.int64)
        rows = np.zeros(len(chunk), dtype=np.int64)  # the one key's row
        if kind == "binary":  # True: a wrong prediction
            alerts = monitor.update_errors(rows, np.array(chunk, dtype=np.bool_), index, index.astype(np.float64))
        else:
            alerts = monitor.update(rows, np.arange(len(chunk)), feature_batch(chunk, index))
        hits.extend(a.index for a in alerts)
    return hits


def feature_batch(values: list[Any], index: npt.NDArray[np.int64]) -> Batch:
    """Events of the key with feature `x`, as a poll decodes them: input index and record time `index`."""
    model, version, variant = KEY
    events = [
        InferenceEvent(request_id="r", model=model, version=version, variant=variant, features={"x": v}) for v in values
    ]
    return build(events, [0] * len(events), index.tolist(), index.astype(np.float64).tolist())


@dataclass(frozen=True)
class RunResult:
    change: int | None
    first_detections: list[int]
    delay: int | None
    false_alarms: int
    pre_change_events: int


def account(hits: list[int], change: int | None, lo: int, hi: int) -> RunResult:
    """Delay and false alarms of detections in events [lo, hi) of a run (change None: stationary)."""
    end = hi if change is None else min(change, hi)
    after = [h - change for h in hits if change is not None and h >= change]
    return RunResult(change, hits[:5], after[0] if after else None, sum(h < end for h in hits), end - lo)


def summarize(results: list[RunResult], stationary: bool) -> dict[str, Any]:
    events = sum(r.pre_change_events for r in results)
    alarms = sum(r.false_alarms for r in results)
    out: dict[str, Any] = {
        "runs": len(results),
        "false_alarms": alarms,
        "pre_change_events": events,
        "false_alarms_per_1m": alarms * 1e6 / events,
    }
    if not stationary:
        delays = [r.delay for r in results if r.delay is not None]
        out["detected"] = len(delays)
        out["median_delay"] = percentile(delays, 50) if delays else None
        out["max_delay"] = max(delays, default=None)
    out["per_run"] = [{"change": r.change, "first_detections": r.first_detections} for r in results]
    return out


def run_case(case: Case, seed: int, kswin_runs: int, kswin_slice: int) -> dict[str, dict[str, Any]]:
    rng = np.random.default_rng(seed)
    river = RIVER[case.kind] if case.river else ()
    results: dict[str, list[RunResult]] = {name: [] for name in ("ours", *river)}
    target = STATIONARY_ERT if case.change is None else DELAY_ERT
    for run in range(case.runs):
        change = None if case.change is None else int(rng.integers(case.change[0], case.change[1] + 1))
        values = case.make(rng, case.length, case.length if change is None else change)
        results["ours"].append(account(ours(case.kind, values, target), change, 0, case.length))
        for name in river:
            lo, hi = 0, case.length
            if name == "kswin":
                if run >= kswin_runs:
                    continue
                lo = 0 if change is None else max(0, change - kswin_slice // 2)
                hi = lo + kswin_slice
            hits = [lo + h for h in DETECTORS[name]().update_many(values[lo:hi])]
            results[name].append(account(hits, change, lo, hi))
    return {name: summarize(rs, case.change is None) for name, rs in results.items()}


def case_verdicts(case: Case, ours_row: dict[str, Any]) -> dict[str, bool]:
    """Stationary: at most STATIONARY_FA_TARGET false alarms per 1M. Change: every run detected, delay target met."""
    if case.change is None:
        return {"false_alarms": ours_row["false_alarms_per_1m"] <= STATIONARY_FA_TARGET}
    out = {"detected": ours_row["detected"] == ours_row["runs"]}
    if case.limit is not None:
        stat = ours_row[case.limit_on]
        out["delay"] = stat is not None and stat <= case.limit
    return out


def kswin_sample(quick: bool) -> tuple[int, int]:
    """KSWIN's runs per case, and the events of each run it sees."""
    return (1, 2000) if quick else (4, 5000)


def detection_suite(quick: bool) -> dict[str, Any]:
    kswin_runs, kswin_slice = kswin_sample(quick)
    out = {}
    for seed, case in enumerate(cases(quick), start=1):
        t0 = time.perf_counter()
        rows = run_case(case, seed, kswin_runs, kswin_slice)
        out[case.name] = {
            "kind": case.kind,
            "runs": case.runs,
            "events_per_run": case.length,
            "change_range": case.change,
            "target": {"stat": case.limit_on, "max_events": case.limit} if case.limit else None,
            "stated_ert": STATIONARY_ERT if case.change is None else DELAY_ERT,
            "information_bound": case.bound,
            "delay_over_bound": None
            if case.bound is None or rows["ours"].get("median_delay") is None
            else rows["ours"]["median_delay"] / case.bound,
            "ours_detector": ours_detector(case.kind),
            "detectors": rows,
            "verdicts": case_verdicts(case, rows["ours"]),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(case.name, {k: _brief(v) for k, v in rows.items()}, f"{out[case.name]['seconds']}s", file=sys.stderr)
    return out


def _brief(row: dict[str, Any]) -> str:
    fa = f"FA/1M {row['false_alarms_per_1m']:.1f}"
    if "detected" not in row:
        return fa
    return f"{row['detected']}/{row['runs']} median {row['median_delay']} max {row['max_delay']} {fa}"


# -- throughput -----------------------------------------------------------------------------


def write_events(path: Path, n: int, seed: int = 5) -> None:
    """`n` single-key events: 8 numeric features f0-f7, 2 categorical c0-c1, score and prediction."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            feats: dict[str, Any] = {f"f{j}": round(rng.gauss(0, 1), 5) for j in range(8)}
            feats["c0"] = rng.choice(("a", "b", "c"))
            feats["c1"] = rng.choice(("w", "x", "y", "z"))
            score = round(rng.random(), 5)
            ev = {
                "request_id": f"r-{i}",
                "model": "bench",
                "timestamp": round(GENERATOR_START_TIME + i / 1000, 3),
                "latency_ms": round(rng.lognormvariate(3.3, 0.4), 3),
                "score": score,
                "prediction": int(score >= 0.5),
                "features": feats,
            }
            f.write(json.dumps(ev, separators=(",", ":")) + "\n")


def json_pass(path: Path) -> float:
    t0 = time.perf_counter()
    with path.open("rb") as f:
        for line in f:
            json.loads(line)
    return time.perf_counter() - t0


@contextmanager
def calibration_clock() -> Iterator[list[float]]:
    """Seconds spent in each `calibrate()` the drift monitors make, while in the block."""
    spent: list[float] = []
    real = drift.calibrate

    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - t0)

    with mock.patch.object(drift, "calibrate", timed):
        yield spent


def replay_pass(path: Path) -> tuple[float, float, int]:
    """(seconds, of which calibrating, drift alerts) of a zero-config replay."""
    with calibration_clock() as spent:
        t0 = time.perf_counter()
        report = replay(path, Config())
        seconds = time.perf_counter() - t0
    return seconds, sum(spent), len(report["alerts"])


def throughput(quick: bool) -> dict[str, Any]:
    # The machine is noisy (json.loads alone swings by a third between runs): best of three alternated pairs.
    n, repeats = (50_000, 1) if quick else (300_000, 3)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.jsonl"
        write_events(path, n)
        json_runs, replays = [], []
        for _ in range(repeats):  # alternated, so that a change in machine load hits both
            json_runs.append(json_pass(path))
            replays.append(replay_pass(path))
    json_s = min(json_runs)
    seconds, calibrating, alerts = min(replays)
    out = {
        "events": n,
        "features": {"numeric": 8, "categorical": 2},
        "json_loads_per_s": n / json_s,
        "replay_per_s": n / seconds,
        "ratio": json_s / seconds,
        "calibration_seconds": calibrating,
        "calibration_share": calibrating / seconds,
        "replay_per_s_without_calibration": n / (seconds - calibrating),
        "drift_alerts": alerts,
        "pass": json_s / seconds >= THROUGHPUT_TARGET,
        "json_loads_seconds": json_runs,
        "replay_seconds": [r[0] for r in replays],
    }
    print("throughput", {k: v for k, v in out.items() if k not in ("features", "json_loads_seconds")}, file=sys.stderr)
    return out


# -- CBPE -----------------------------------------------------------------------------------


def classify(rng: np.random.Generator, mu: float, n: int, slope: float) -> tuple[list[float], list[bool]]:
    """Confidences and correctness of a model scoring sigmoid(slope·x) for P(y=1|x) = sigmoid(2x), x ~ N(mu, 1)."""
    from daemon.monitors.quality import confidence

    x = rng.normal(mu, 1.0, n)
    y = rng.random(n) < 1.0 / (1.0 + np.exp(-2.0 * x))
    scores = 1.0 / (1.0 + np.exp(-slope * x))
    predictions = (scores >= 0.5).astype(int)
    conf = [confidence(int(p), float(s), None) for p, s in zip(predictions, scores, strict=True)]
    return conf, (predictions == y).tolist()


def cbpe_run(slope: float, windows: int, seed: int) -> dict[str, float]:
    """Reference of 1,000 labelled events at mu = 0, then windows of 1,000 with mu drifting 0 -> 1.5.

    The errors are the estimate's (signed: estimate - realized) and, for comparison, those of
    two naive estimates: the reference's accuracy, and the mean raw confidence (no calibration)."""
    from daemon.monitors.quality import ConfidenceEstimator

    rng = np.random.default_rng(seed)
    estimator = ConfidenceEstimator(reference_size=1000, window_events=1000)
    conf, correct = classify(rng, 0.0, 1000, slope)
    estimator.add_labelled(conf, correct)
    reference_accuracy = statistics.fmean(correct)
    cbpe_err, stale_err, raw_err = [], [], []
    for mu in np.linspace(0.0, 1.5, windows):
        conf, correct = classify(rng, float(mu), 1000, slope)
        estimator.add_predictions(conf)
        realized = statistics.fmean(correct)
        cbpe_err.append(estimator.expected_accuracy - realized)
        stale_err.append(abs(reference_accuracy - realized))
        raw_err.append(abs(statistics.fmean(conf) - realized))
    return {
        "mae": statistics.fmean(abs(e) for e in cbpe_err),
        "max_error": max(abs(e) for e in cbpe_err),
        "bias": statistics.fmean(cbpe_err),
        "reference_accuracy_mae": statistics.fmean(stale_err),
        "raw_confidence_mae": statistics.fmean(raw_err),
    }


def cbpe_scenario(slope: float, windows: int, seeds: range) -> dict[str, Any]:
    """`cbpe_run` over several seeds: the reference's own sampling error moves the estimate."""
    runs = [cbpe_run(slope, windows, seed) for seed in seeds]
    maes = [r["mae"] for r in runs]
    return {
        "score_slope": slope,
        "windows": windows,
        "references": len(runs),
        "mae": statistics.fmean(maes),
        "mae_range": [min(maes), max(maes)],
        "max_error": max(r["max_error"] for r in runs),
        "reference_accuracy_mae": statistics.fmean(r["reference_accuracy_mae"] for r in runs),
        "raw_confidence_mae": statistics.fmean(r["raw_confidence_mae"] for r in runs),
        "runs": runs,
    }


def cbpe(quick: bool) -> dict[str, Any]:
    windows, seeds = (20, range(3)) if quick else (100, range(10))
    out = {"calibrated": cbpe_scenario(2.0, windows, seeds), "miscalibrated": cbpe_scenario(3.0, windows, seeds)}
    print(
        "cbpe",
        {k: {m: v[m] for m in ("mae", "mae_range", "max_error", "raw_confidence_mae")} for k, v in out.items()},
        file=sys.stderr,
    )
    return out


# -- summary --------------------------------------------------------------------------------


def summary_line(suite: dict[str, Any], tp: dict[str, Any], est: dict[str, Any]) -> str:
    ours = {name: c["detectors"]["ours"] for name, c in suite.items()}
    mis = est["miscalibrated"]
    changes = [n for n, c in suite.items() if c["change_range"] is not None]
    stationary = [n for n, c in suite.items() if c["change_range"] is None]
    bounded = [n for n in changes if suite[n]["information_bound"] is not None]

    def delay(name: str, stat: str = "median_delay") -> str:
        d = ours[name][stat]
        return "missed" if d is None else f"{d:,.0f}"

    def ok(names: list[str], what: str) -> str:
        return verdict(all(suite[n]["verdicts"][what] for n in names))

    detected = sum(ours[n]["detected"] for n in changes)
    runs = sum(ours[n]["runs"] for n in changes)
    misses = ", ".join(
        f"{n} {ours[n]['detected']}/{ours[n]['runs']}" for n in changes if not suite[n]["verdicts"]["detected"]
    )
    found = verdict(detected == runs) + (f": {misses}" if misses else "")

    def ratio(name: str) -> str:
        r = suite[name]["delay_over_bound"]
        return "-" if r is None else f"{r:.1f}x"

    ratios = ", ".join(f"{n} {delay(n)} ({ratio(n)})" for n in bounded)
    grad = "gradual 1 sd over 50k"
    fa_ours = ", ".join(
        f"{suite[n]['kind']} {ours[n]['false_alarms_per_1m']:.2f} over {ours[n]['pre_change_events'] / 1e6:.1f}M"
        for n in stationary
    )
    fa_pre = "/".join(f"{pre_change_rate(suite, changes, kind):.2f}" for kind in ("numeric", "categorical", "binary"))
    river = " ".join(
        f"{name} {'~' if name == 'kswin' else ''}{row['false_alarms_per_1m']:,.0f}"
        for n in stationary
        for name, row in suite[n]["detectors"].items()
        if name != "ours"
    )
    return (
        f"detection: {detected}/{runs} changes detected ({found}); "
        f"median delay (x information bound at {DELAY_ERT:,.0f}) {ratios} "
        f"(≤{BOUND_FACTOR:.0f}x {ok(bounded, 'delay')}); "
        f"gradual max {delay(grad, 'max_delay')} (<{RAMP:,} {ok([grad], 'delay')}); "
        f"TTFT x2 max {delay(TTFT, 'max_delay')} (≤{TTFT_LIMIT:,} {ok([TTFT], 'delay')}); "
        f"false alarms/1M/stream at a stated run length of {STATIONARY_ERT:,.0f}: {fa_ours} "
        f"(≤1 {ok(stationary, 'false_alarms')}), before the change (at {DELAY_ERT:,.0f}) num/cat/err {fa_pre}; "
        f"River defaults {river}; "
        f"replay {tp['ratio']:.0%} of json.loads (≥50% {verdict(tp['pass'])}); "
        f"CBPE accuracy MAE {est['calibrated']['mae']:.3f}, miscalibrated score {mis['mae']:.3f} "
        f"(its raw confidence: {mis['raw_confidence_mae']:.3f})"
    )


def pre_change_rate(suite: dict[str, Any], changes: list[str], kind: str) -> float:
    """Ours' false alarms per 1M pre-change events, pooled over the change cases of one kind."""
    rows = [suite[n]["detectors"]["ours"] for n in changes if suite[n]["kind"] == kind]
    return sum(r["false_alarms"] for r in rows) * 1e6 / sum(r["pre_change_events"] for r in rows)


def main() -> None:
    args = parse_args(__doc__)
    suite = detection_suite(args.quick)
    tp = throughput(args.quick)
    est = cbpe(args.quick)
    kswin_runs, kswin_slice = kswin_sample(args.quick)
    body = {
        "cases": suite,
        "kswin_sample": {"runs_per_case": kswin_runs, "events_per_run": kswin_slice},
        "throughput": tp,
        "cbpe": est,
    }
    write_result("detection", args.quick, body, summary_line(suite, tp, est))


if __name__ == "__main__":
    main()
