"""Calibrated vs River/Evidently default thresholds: false alarms per 1M stationary events, and detection delay.

For each calibratable detector: calibrate to an ERT of 1M on 10k N(0, 1) values (Bernoulli 5%
errors for binary detectors, a 5-level mix for categorical ones), run >= 1M fresh stationary
events through the calibrated and the default detector, and measure the delay to detect a
1-sd shift (5% -> 8% errors; a level-mix change) after 20k stationary events.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import parse_args, write_result
from detectors.calibration import NOT_CALIBRATABLE, calibrate
from detectors.registry import DETECTORS

LEVELS = np.array(["a", "b", "c", "d", "e"])
BEFORE = [0.4, 0.3, 0.15, 0.1, 0.05]
AFTER = [0.3, 0.3, 0.15, 0.1, 0.15]
PREFIX = 20_000
AFTER_N = 50_000


def stream(kind: str, seed: int, n: int, shifted: bool = False) -> list[Any]:
    rng = np.random.default_rng(seed)
    if kind == "numeric":
        return [float(v) for v in rng.normal(1.0 if shifted else 0.0, 1.0, n)]
    if kind == "binary":
        return [bool(v) for v in rng.random(n) < (0.08 if shifted else 0.05)]
    return [str(v) for v in rng.choice(LEVELS, p=AFTER if shifted else BEFORE, size=n)]


def delay(det: Any, kind: str) -> int | None:
    hits = det.update_many(stream(kind, 11, PREFIX) + stream(kind, 12, AFTER_N, shifted=True))
    after = [h - PREFIX for h in hits if h >= PREFIX]
    return after[0] if after else None


def main() -> None:
    args = parse_args(__doc__)
    n = 200_000 if args.quick else 1_000_000
    rows = {}
    for name in sorted(DETECTORS):
        if name in NOT_CALIBRATABLE:
            continue
        kind = DETECTORS[name].input_kind
        t0 = time.perf_counter()
        cal = calibrate(name, stream(kind, 1, 10_000), 1_000_000, seed=0)
        cal_s = time.perf_counter() - t0
        data = stream(kind, 2, n)
        calibrated = len(cal.build().update_many(data)) * 1_000_000 / n
        default = len(DETECTORS[name]().update_many(data)) * 1_000_000 / n
        rows[name] = {
            "params": cal.params,
            "method": cal.method,
            "calibration_seconds": round(cal_s, 2),
            "simulated_events": cal.simulated_events,
            "false_alarms_per_1m": {"calibrated": calibrated, "default": default},
            "delay": {"calibrated": delay(cal.build(), kind), "default": delay(DETECTORS[name](), kind)},
        }
        print(name, rows[name]["false_alarms_per_1m"], rows[name]["delay"], f"{cal_s:.1f}s", file=sys.stderr)
    cal_fa = sum(r["false_alarms_per_1m"]["calibrated"] for r in rows.values())
    def_fa = sum(r["false_alarms_per_1m"]["default"] for r in rows.values())
    missed = sorted(k for k, r in rows.items() if r["delay"]["calibrated"] is None)
    summary = (
        f"calibration: {len(rows)} detectors at ERT 1M, {n:,} stationary events each: "
        f"{cal_fa:.1f} false alarms/1M summed (defaults {def_fa:.1f}); missed shift: {', '.join(missed) or 'none'}"
    )
    write_result("calibration", args.quick, {"stationary_events": n, "detectors": rows}, summary)


if __name__ == "__main__":
    main()
