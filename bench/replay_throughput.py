"""Zero-config replay against a plain `json.loads` pass over the same file (issue 13).

A JSONL file of N events (10 features: 8 numeric, 2 categorical; score, latency, prediction,
~1% errors) goes through `daemon.runtime.replay.replay()` with the default config, which watches every
feature, the score and the latency for drift, on one core. The baseline is the same file read
line by line and passed to `json.loads`, in the same run, alternating with the replay.

Two spreads of the same events: all of them on 1 model, and uniformly over 1,000 models
(1,000 keys, the default `limits.max_keys`). Targets: replay >= 1.0x the `json.loads` pass with
1 model, >= 0.8x with 1,000 models.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    GENERATOR_START_TIME,
    parse_args,
    pin_to_one_core,
    rate_stats,
    timed,
    verdict,
    write_result,
)

from daemon.config import Config
from daemon.runtime.lifecycle import tune_gc
from daemon.runtime.replay import replay

NAME = "replay_throughput"
TARGETS = {1: 1.0, 1000: 0.8}


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--events", type=int, help="events per file (default 1,000,000; 100,000 with --quick)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes of each variant (default 3)")
    p.add_argument("--cpu", type=int, help="CPU to pin to (default: the highest allowed)")


def write_events(path: Path, n: int, models: int, seed: int = 13) -> None:
    """Generator-like events: 8 numeric features, 2 categorical, score, latency, prediction."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            m = i % models if models > 1 else 0
            score = rng.random()
            feats: dict[str, Any] = {f"f{j}": round(rng.gauss(j, 1 + j / 4), 5) for j in range(8)}
            feats["c0"] = rng.choice(("a", "b", "c", "d"))
            feats["c1"] = rng.choice(("x", "y"))
            ev: dict[str, Any] = {
                "request_id": f"r{i}",
                "model": f"model-{m:04d}",
                "version": "1",
                "timestamp": round(GENERATOR_START_TIME + i / 1000.0, 3),
                "latency_ms": round(rng.lognormvariate(3.3, 0.4), 3),
                "status": "ok",
                "score": round(score, 5),
                "prediction": int(score > 0.5),
                "features": feats,
            }
            if rng.random() < 0.01:
                ev["status"] = "error"
                ev["error_type"] = rng.choice(("timeout", "oom"))
            f.write(json.dumps(ev, separators=(",", ":")) + "\n")


def json_pass(path: Path) -> int:
    loads = json.loads
    n = 0
    with path.open("rb") as f:
        for line in f:
            loads(line)
            n += 1
    return n


def main() -> None:
    args = parse_args(__doc__, _add_args)
    n = args.events or (100_000 if args.quick else 1_000_000)
    repeats = args.repeats if not args.quick else 1
    cpu = pin_to_one_core(args.cpu)
    tune_gc()  # as `inferwatch replay` does (both variants run under it)
    config = Config()
    results: dict[str, Any] = {}
    lines = []
    ok_all = True
    with tempfile.TemporaryDirectory() as d:
        for models, target in TARGETS.items():
            path = Path(d) / f"events-{models}.jsonl"
            write_events(path, n, models)
            checks: dict[str, Any] = {}

            def run_replay(path: Path = path, checks: dict[str, Any] = checks) -> None:
                report = replay(path, config)
                checks["events"], checks["keys"] = report["events"], len(report["summary"])

            rates: dict[str, list[float]] = {"replay": [], "json_loads": []}
            json_pass(path)  # warm the page cache
            for _ in range(repeats):
                rates["json_loads"].append(n / timed(lambda path=path: json_pass(path)))
                rates["replay"].append(n / timed(run_replay))
            if checks["events"] != n or checks["keys"] != models:
                raise SystemExit(f"replay counted {checks} for {n} events over {models} models")
            stats = {k: rate_stats(v) for k, v in rates.items()}
            ratio = stats["replay"]["median"] / stats["json_loads"]["median"]
            ok = ratio >= target
            ok_all &= ok
            results[f"{models}_models"] = {**stats, "ratio_of_medians": ratio, "target": target, "pass": ok}
            lines.append(
                f"{models} model{'s' if models > 1 else ''}: {ratio:.2f}x json.loads "
                f"({stats['replay']['median']:,.0f} vs {stats['json_loads']['median']:,.0f} events/s) "
                f"vs >= {target}x {verdict(ok)}"
            )
    summary = f"{NAME}: " + " | ".join(lines) + (" [quick]" if args.quick else "")
    write_result(
        NAME,
        args.quick,
        {
            "unit": "events/s",
            "pass": ok_all,
            "setup": {
                "events": n,
                "repeats": repeats,
                "pinned_cpu": cpu,
                "config": "Config() defaults (drift on every feature, score and latency; canary on)",
                "features": "8 numeric, 2 categorical",
                "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            },
            **results,
        },
        summary,
    )


if __name__ == "__main__":
    main()
