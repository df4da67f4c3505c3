"""Issue 7 groundwork, measured: what checkpoints cost, and how fast a restart is ready.

1. Cost: the daemon's ingestion (`Pipeline.process` over generated traffic with labels on their
   own topic, drift on: the demo's keys) in events/s, alternating rounds without checkpoints
   and with `snapshot()` + `LocalCheckpoints.save()` every `--every` seconds inline (as the
   daemon's loop does). Target: <= 10% lower.
2. Recovery: `inferwatch run` from a checkpoint of that state until /readyz answers, against the
   same start without a checkpoint, each in a fresh process (no broker: readiness never waits
   for Kafka). Target: <= 5 s to ready.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from _common import GENERATOR_START_TIME, fmt_rate, parse_args, verdict, write_result

from daemon.app import build_pipeline
from daemon.broker import free_port
from daemon.checkpoint import LocalCheckpoints
from daemon.config import Config, from_mapping
from daemon.generator import TrafficGenerator, TrafficSpec, encode
from daemon.sources import RawRecord

NAME = "checkpoint"
BATCH = 2000
TARGET_DROP = 0.10
TARGET_READY_S = 5.0
GROUP = "inferwatch"


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--round-seconds", type=float, default=15.0)
    p.add_argument("--every", type=float, default=5.0, help="checkpoint interval in seconds (default 5)")


def _config() -> Config:
    return from_mapping({"labels": {"topic": "labels"}, "http": {"port": 0}})


def _batches(n: int) -> list[list[RawRecord]]:
    gen = TrafficGenerator(TrafficSpec(rate=200, duration_s=n / 200, seed=3, start_time=GENERATOR_START_TIME))
    records = []
    for i, ev in enumerate(gen.events()):
        records.append(RawRecord("inference-logs", 0, i, ev["timestamp"], *encode(ev)))
        records.append(RawRecord("labels", 0, i, ev["timestamp"], *encode(gen.label(ev))))
    return [records[i : i + BATCH] for i in range(0, len(records), BATCH)]


def cost(
    batches: list[list[RawRecord]], store: LocalCheckpoints, rounds: int, seconds: float, every: float
) -> dict[str, Any]:
    def ingest(checkpoints: bool) -> tuple[float, list[float]]:
        pipeline = build_pipeline(_config())
        offsets: dict[tuple[str, int], int] = {}
        saves: list[float] = []
        done, t0 = 0, time.perf_counter()
        next_save = t0 + every
        while time.perf_counter() - t0 < seconds:
            for b in batches:
                offsets.update(pipeline.process(b))
                done += len(b)
                now = time.perf_counter()
                if checkpoints and now >= next_save:
                    s0 = time.perf_counter()
                    store.save(pipeline.snapshot(offsets), GROUP)
                    saves.append(time.perf_counter() - s0)
                    next_save = now + every
                if now - t0 >= seconds:
                    break
        return done / (time.perf_counter() - t0), saves

    ingest(False)  # warm-up
    rates: dict[str, list[float]] = {"without": [], "with": []}
    saves: list[float] = []
    for _ in range(rounds):
        rates["without"].append(ingest(False)[0])
        rate, s = ingest(True)
        rates["with"].append(rate)
        saves += s
    without, with_ = statistics.median(rates["without"]), statistics.median(rates["with"])
    return {
        "rates": rates,
        "without_median": without,
        "with_median": with_,
        "drop": 1 - with_ / without,
        "save_seconds": saves,
        "ok": 1 - with_ / without <= TARGET_DROP,
    }


def ready_seconds(directory: Path | None, tmp: Path) -> float:
    port = free_port()
    cfg = {
        "http": {"host": "127.0.0.1", "port": port},
        "labels": {"topic": "labels"},
        "source": {"kafka": {"bootstrap_servers": ["127.0.0.1:1"]}},
        "checkpoint": {"directory": str(directory) if directory else None},
    }
    path = tmp / f"cfg-{port}.json"
    path.write_text(json.dumps(cfg))
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon", "run", "--config", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while time.perf_counter() - t0 < 60:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            except OSError:
                time.sleep(0.02)
        raise SystemExit("the daemon was not ready within 60 s")
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    args = parse_args(__doc__, _add_args)
    rounds, seconds = (2, 6.0) if args.quick else (args.rounds, args.round_seconds)
    batches = _batches(20_000 if args.quick else 60_000)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        store = LocalCheckpoints(tmp / "state")
        c = cost(batches, store, rounds, seconds, args.every)
        size = store.path.stat().st_size
        ready = {
            "with_checkpoint": [ready_seconds(store.directory, tmp) for _ in range(3)],
            "without": [ready_seconds(None, tmp) for _ in range(3)],
        }
    ready_med = statistics.median(ready["with_checkpoint"])
    ok = c["ok"] and ready_med <= TARGET_READY_S
    summary = (
        f"checkpoint: ingestion {fmt_rate(c['with_median'])}/s with a checkpoint every {args.every:g} s vs "
        f"{fmt_rate(c['without_median'])}/s without (drop {c['drop']:.1%}, target <= 10%: {verdict(c['ok'])}); "
        f"a save takes {statistics.median(c['save_seconds']) * 1e3:.0f} ms for {size / 1e6:.1f} MB; "
        f"ready after a restart from it {ready_med:.2f} s vs {statistics.median(ready['without']):.2f} s without "
        f"(target <= 5 s: {verdict(ready_med <= TARGET_READY_S)})"
    )
    write_result(NAME, args.quick, {"cost": c, "checkpoint_bytes": size, "ready_seconds": ready, "ok": ok}, summary)


if __name__ == "__main__":
    main()
