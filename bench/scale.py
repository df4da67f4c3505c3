"""State at 1,000 keys (issue 13): resident memory, and what a checkpoint costs the loop.

The pipeline (default config) is fed generator-like events for 1,000 keys, 10 drift streams each
(6 numeric features, 2 categorical, the score and the latency), until every stream's reference is
full and its window part-filled: 1,250 events per key. Then, on that state:

- RSS: the process's resident memory (from /proc/self/statm) after more ingestion; the baseline is
  the RSS of the same process before the pipeline existed. Target: <= 400 MB.
- The loop's stall: `Pipeline.snapshot()`, which is all a checkpoint does on the loop (the copy;
  encoding and writing run on the store's thread). Target: the longest of 10 <= 50 ms.
- The size of the checkpoint (every partition's shard encoded, `daemon.state.codec`). Target:
  <= 20 MB.
- The throughput cost: ingestion in alternating stretches without checkpoints and with one every
  5 s through `Handover` and a directory store, as the daemon's loop does. Target: <= 5%.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from typing import Any

from _common import GENERATOR_START_TIME, fmt_rate, parse_args, pin_to_one_core, verdict, write_result

from daemon.config import Config
from daemon.export.exposition import CheckpointStats
from daemon.ingest.sources import Chunk
from daemon.runtime.app import build_pipeline
from daemon.runtime.lifecycle import tune_gc
from daemon.state import codec
from daemon.state.checkpoint import LocalCheckpoints
from daemon.state.handover import Handover

NAME = "scale"
KEYS = 1000
BATCH = 2000
TARGET_RSS_MB = 400.0
TARGET_STALL_MS = 50.0
TARGET_SIZE_MB = 20.0
TARGET_COST = 0.05


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--per-key", type=int, help="events per key before measuring (default 1250; 1050 with --quick)")
    p.add_argument("--rounds", type=int, default=3, help="alternating stretches each way (default 3)")
    p.add_argument("--round-seconds", type=float, default=12.0)
    p.add_argument("--every", type=float, default=5.0, help="checkpoint interval in seconds (default 5)")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def events(per_key: int, seed: int, start: int = 0) -> list[bytes]:
    """Generator-like events for KEYS models, interleaved: 6 numeric features, 2 categorical."""
    rng = random.Random(seed)
    out = []
    for i in range(start, start + KEYS * per_key):
        m = rng.randrange(KEYS)
        score = rng.random()
        feats: dict[str, Any] = {f"f{j}": round(rng.gauss(j, 1), 5) for j in range(6)}
        feats["c0"] = rng.choice(("a", "b", "c", "d"))
        feats["c1"] = rng.random() < 0.3
        ev = {
            "request_id": f"r{i}",
            "model": f"model-{m:04d}",
            "version": "1",
            "timestamp": round(GENERATOR_START_TIME + i / 1000.0, 3),
            "latency_ms": round(rng.lognormvariate(3.3, 0.4), 3),
            "score": round(score, 5),
            "prediction": int(score > 0.5),
            "features": feats,
        }
        out.append(json.dumps(ev, separators=(",", ":")).encode())
    return out


def polls(values: list[bytes], offset0: int) -> list[list[Chunk]]:
    return [
        [Chunk("inference-logs", 0, range(offset0 + i, offset0 + i + len(vs)), None, None, vs)]
        for i in range(0, len(values), BATCH)
        for vs in [values[i : i + BATCH]]
    ]


def main() -> None:
    args = parse_args(__doc__, _add_args)
    per_key = args.per_key or (1050 if args.quick else 1250)
    rounds = 1 if args.quick else args.rounds
    seconds = 4.0 if args.quick else args.round_seconds
    cpu = pin_to_one_core()
    tune_gc()
    rss_before = rss_mb()
    pipeline = build_pipeline(Config())
    t0 = time.perf_counter()
    offset = 0
    for chunk_values in (events(per_key, seed=1),):
        for poll in polls(chunk_values, offset):
            pipeline.process(poll)
        offset += len(chunk_values)
    populate_s = time.perf_counter() - t0
    state = pipeline.partitions[0]
    assert state.drift is not None
    streams = state.drift.states()
    more = polls(events(50, seed=2, start=offset), offset)
    offset += KEYS * 50
    for poll in more:
        pipeline.process(poll)
    rss = rss_mb() - rss_before

    stalls = []
    for _ in range(10):
        t = time.perf_counter()
        snapshot = pipeline.snapshot()
        stalls.append(time.perf_counter() - t)
    t = time.perf_counter()
    encoded = {p: codec.encode(shard) for p, shard in snapshot["partitions"].items()}
    encode_s = time.perf_counter() - t
    size = sum(map(len, encoded.values())) + len(codec.encode(snapshot["process"]))
    back = codec.decode(encoded[0])
    assert back["keys"] == snapshot["partitions"][0]["keys"]

    # Throughput with and without a checkpoint every `every` seconds, alternating.
    rates: dict[str, list[float]] = {"without": [], "with": []}
    loop_stalls: list[float] = []
    written = 0
    with tempfile.TemporaryDirectory() as d:
        store = LocalCheckpoints(d, "bench")
        stats = CheckpointStats()
        handover = Handover(pipeline, store, stats, timeout_s=60)
        feed = polls(events(200, seed=3, start=offset), offset)
        for _ in range(rounds):
            for mode in ("without", "with"):
                done, start = 0, time.perf_counter()
                next_save = start + args.every
                i = 0
                while time.perf_counter() - start < seconds:
                    poll = feed[i % len(feed)]
                    i += 1
                    offsets = pipeline.process(poll)
                    handover.position.update(offsets)
                    done += BATCH
                    if mode == "with":
                        handover.finished()
                        now = time.perf_counter()
                        if not handover.writing and now >= next_save:
                            s = time.perf_counter()
                            handover.checkpoint(offsets)
                            loop_stalls.append(time.perf_counter() - s)
                            next_save = now + args.every
                rates[mode].append(done / (time.perf_counter() - start))
                if handover.finished(60) is not None or stats.written:
                    written = stats.written
        store.close()
    without, with_ = statistics.median(rates["without"]), statistics.median(rates["with"])
    cost = 1 - with_ / without
    stall_ms = max(stalls) * 1000
    ok = {
        "rss": rss <= TARGET_RSS_MB,
        "stall": stall_ms <= TARGET_STALL_MS,
        "size": size / 1e6 <= TARGET_SIZE_MB,
        "cost": cost <= TARGET_COST,
    }
    summary = (
        f"{NAME}: {KEYS:,} keys x {sum(streams.values()) // KEYS} streams ({streams['active']:,} active): "
        f"RSS {rss:.0f} MB vs <= {TARGET_RSS_MB:.0f}: {verdict(ok['rss'])} | checkpoint: loop stall max "
        f"{stall_ms:.0f} ms vs <= {TARGET_STALL_MS:.0f}: {verdict(ok['stall'])}, size {size / 1e6:.1f} MB vs <= "
        f"{TARGET_SIZE_MB:.0f}: {verdict(ok['size'])}, ingest with one every {args.every:g} s {fmt_rate(with_)} vs "
        f"{fmt_rate(without)} events/s without = {cost:+.1%} cost vs <= {TARGET_COST:.0%}: {verdict(ok['cost'])}"
        + (" [quick]" if args.quick else "")
    )
    write_result(
        NAME,
        args.quick,
        {
            "pass": all(ok.values()),
            "verdicts": ok,
            "setup": {
                "keys": KEYS,
                "events_per_key": per_key,
                "populate_seconds": round(populate_s, 1),
                "streams": streams,
                "pinned_cpu": cpu,
                "checkpoint_every_s": args.every,
                "store": "directory (LocalCheckpoints), encoding on its writer thread",
            },
            "rss_mb_over_baseline": round(rss, 1),
            "rss_mb_baseline": round(rss_before, 1),
            "snapshot_stall_ms": [round(s * 1000, 1) for s in stalls],
            "loop_stall_ms_in_the_timed_run": [round(s * 1000, 1) for s in loop_stalls],
            "encode_seconds": round(encode_s, 2),
            "checkpoint_bytes": size,
            "rates": rates,
            "checkpoints_written": written,
            "cost": cost,
        },
        summary,
    )


if __name__ == "__main__":
    main()
