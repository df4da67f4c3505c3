"""`inferwatch replay --html` against the same replay without it (issue 18): what the page adds.

N generator events (default 1,000,000; 100,000 with --quick) of the default models
(fraud-detector control and canary, recsys-ranker: 3 keys) with a feature drift, a 20% slower
canary and every event's label, replayed by the command as a user runs it, in child processes
(`inferwatch replay ... --labels ... --report` with and without `--html`, alternating), pinned
to one core. The render alone is also timed in a child of its own (reading the JSON report,
importing matplotlib included). Target: the page adds <= 10% to the replay's time, read as the
render's time over the replay's (the end-to-end difference is reported too; on this machine it
swings more than the render costs).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import REPO_ROOT, parse_args, pin_to_one_core, write_result

from daemon.dev.generator import TrafficGenerator, TrafficSpec, encode, parse_change

NAME = "replay_html"
TARGET = 0.10
RENDER = (
    "import json, sys, time; t = time.perf_counter(); from daemon.report.html import render; "
    "page = render(json.load(open(sys.argv[1]))); print(time.perf_counter() - t, len(page))"
)


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--events", type=int, help="events (default 1,000,000; 100,000 with --quick)")
    p.add_argument("--repeats", type=int, default=2, help="timed replays of each variant (default 2)")
    p.add_argument("--cpu", type=int, help="CPU to pin to (default: the highest allowed)")


def write_traffic(events: Path, labels: Path, n: int) -> None:
    rate = 1000.0
    spec = TrafficSpec(
        rate=rate,
        duration_s=n / rate,
        seed=18,
        start_time=1_764_300_000.0,
        changes=(
            parse_change(f"after={n / rate / 2:.0f}s model=fraud-detector feature=f0 shift=1"),
            parse_change("after=0 model=fraud-detector variant=canary latency=+20%"),
        ),
    )
    gen = TrafficGenerator(spec)
    with events.open("wb") as ev, labels.open("wb") as lab:
        for e in gen.events():
            ev.write(encode(e)[1] + b"\n")
            lab.write(encode(gen.label(e))[1] + b"\n")


def run(argv: list[str]) -> tuple[float, str]:
    t = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO_ROOT, timeout=3600)
    elapsed = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}: {done.stderr[-2000:]}")
    return elapsed, done.stdout


def main() -> None:
    args = parse_args(__doc__, _add_args)
    n = args.events or (100_000 if args.quick else 1_000_000)
    repeats = 1 if args.quick else args.repeats
    cpu = pin_to_one_core(args.cpu)  # the children inherit it
    times: dict[str, list[float]] = {"replay": [], "replay_html": [], "render": []}
    with tempfile.TemporaryDirectory() as d:
        events, labels, report, page = (Path(d) / f for f in ("e.jsonl", "l.jsonl", "r.json", "r.html"))
        write_traffic(events, labels, n)
        base = [sys.executable, "-m", "daemon", "replay", str(events), "--labels", str(labels), "--report", str(report)]
        for _ in range(repeats):
            times["replay"].append(run(base)[0])
            times["replay_html"].append(run([*base, "--html", str(page)])[0])
            out = run([sys.executable, "-c", RENDER, str(report)])[1].split()
            times["render"].append(float(out[0]))
        page_bytes, report_bytes = int(out[1]), report.stat().st_size
    med = {k: statistics.median(v) for k, v in times.items()}
    render_share = med["render"] / med["replay"]
    end_to_end = med["replay_html"] / med["replay"] - 1.0
    ok = render_share <= TARGET
    summary = (
        f"{NAME}: --html adds {100 * render_share:.1f}% to a replay of {n:,} events "
        f"(render {med['render']:.2f} s, replay {med['replay']:.1f} s; end to end {100 * end_to_end:+.1f}%) "
        f"vs <= {100 * TARGET:.0f}% {'PASS' if ok else 'MISS'}" + (" [quick]" if args.quick else "")
    )
    body: dict[str, Any] = {
        "unit": "seconds",
        "pass": ok,
        "target_render_share": TARGET,
        "render_share": render_share,
        "end_to_end_share": end_to_end,
        "seconds": times,
        "medians": med,
        "page_bytes": page_bytes,
        "report_bytes": report_bytes,
        "setup": {
            "events": n,
            "keys": 3,
            "repeats": repeats,
            "pinned_cpu": cpu,
            "traffic": "generator defaults, f0 +1 sd from half-way, canary latency +20%, every label",
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        },
    }
    write_result(NAME, args.quick, body, summary)


if __name__ == "__main__":
    main()
