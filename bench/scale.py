"""State at 1,000 keys (issue 13): resident memory, and what a checkpoint costs the loop.

The pipeline (default config) is fed generator-like events for 1,000 keys, 10 drift streams each
(6 numeric features, 2 categorical, the score and the latency), until every stream's reference is
full and its window part-filled: 1,250 events per key. Then, on that state:

- RSS: the process's resident memory (from /proc/self/statm) after more ingestion, over the RSS of
  the same process before the pipeline existed (events are made as they are fed, never held).
  Target: <= 400 MB.
- The loop's stall: what a checkpoint takes on the loop (`Handover.checkpoint()`: the copy;
  encoding and writing run on the store's thread), for every checkpoint of the run, one every 5 s
  through a directory store from the first event on, as the daemon does. Target: the longest
  <= 50 ms once the references are full (99% of them); those taken while they fill (the first one
  allocates the snapshot buffers, later ones copy what the references gained) are reported apart.
- The size of the checkpoint (every partition's shard encoded, `daemon.state.codec`). Target:
  <= 20 MB.
- The throughput cost: ingestion in alternating stretches without checkpoints and with one every
  5 s through `Handover` and a directory store, as the daemon's loop does. Target: <= 5%.

Not pinned to one core: the store's writer thread encodes on the second core while the loop
ingests, as in the daemon (where the Kafka consumer's process shares that core).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import statistics
import tempfile
import time
from collections.abc import Iterator
from itertools import islice
from typing import Any

from _common import GENERATOR_START_TIME, fmt_rate, parse_args, verdict, write_result

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


def events(per_key: int, seed: int, start: int = 0) -> Iterator[bytes]:
    """Generator-like events for KEYS models, interleaved: 6 numeric features, 2 categorical."""
    rng = random.Random(seed)
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
        yield json.dumps(ev, separators=(",", ":")).encode()


def polls(values: Iterator[bytes], offset0: int) -> Iterator[list[Chunk]]:
    """Polls of BATCH records, made as they are needed (the events are not held: RSS is the state's)."""
    offset = offset0
    while batch := list(islice(values, BATCH)):
        yield [Chunk("inference-logs", 0, range(offset, offset + len(batch)), None, None, batch)]
        offset += len(batch)


def main() -> None:
    args = parse_args(__doc__, _add_args)
    per_key = args.per_key or (1050 if args.quick else 1250)
    rounds = 1 if args.quick else args.rounds
    seconds = 6.0 if args.quick else args.round_seconds
    tune_gc()
    rss_before = rss_mb()
    pipeline = build_pipeline(Config())
    stalls: dict[str, list[float]] = {"filling": [], "full": []}  # checkpoints' time on the loop
    rates: dict[str, list[float]] = {"without": [], "with": []}
    with tempfile.TemporaryDirectory() as d:
        store = LocalCheckpoints(d, "bench")
        stats = CheckpointStats()
        handover = Handover(pipeline, store, stats, timeout_s=60)
        next_save = time.perf_counter() + args.every

        def feed(poll: list[Chunk], checkpoints: bool = True) -> None:
            nonlocal next_save
            offsets = pipeline.process(poll)
            handover.position.update(offsets)
            if not checkpoints:
                return
            handover.finished()
            now = time.perf_counter()
            if not handover.writing and now >= next_save:
                drift = pipeline.partitions[0].drift
                assert drift is not None
                counts = drift.states()
                # Full: all but the odd key that had too few events (under 1%) are past their reference.
                phase = "filling" if counts["reference"] + counts["calibrating"] > len(drift.streams) // 100 else "full"
                s = time.perf_counter()
                handover.checkpoint(offsets)
                stalls[phase].append(time.perf_counter() - s)
                next_save = now + args.every

        t0 = time.perf_counter()
        for poll in polls(events(per_key, seed=1), 0):
            feed(poll)
        populate_s = time.perf_counter() - t0
        offset = KEYS * per_key
        for poll in polls(events(50, seed=2, start=offset), offset):
            feed(poll)
        offset += KEYS * 50
        handover.finished(60)
        gc.collect()
        rss = rss_mb() - rss_before
        state = pipeline.partitions[0]
        assert state.drift is not None
        streams = state.drift.states()
        t = time.perf_counter()
        snapshot = pipeline.snapshot()
        snapshot_s = time.perf_counter() - t
        t = time.perf_counter()
        encoded = {p: codec.encode(shard) for p, shard in snapshot["partitions"].items()}
        encode_s = time.perf_counter() - t
        size = sum(map(len, encoded.values())) + len(codec.encode(snapshot["process"]))
        assert codec.decode(encoded[0])["keys"] == snapshot["partitions"][0]["keys"]
        del snapshot, encoded

        # Throughput with and without a checkpoint every `every` seconds, alternating.
        stretch = list(polls(events(200, seed=3, start=offset), offset))
        for _ in range(rounds):
            for mode in ("without", "with"):
                handover.finished(60)
                done, start = 0, time.perf_counter()
                next_save = start + args.every
                i = 0
                while time.perf_counter() - start < seconds:
                    feed(stretch[i % len(stretch)], checkpoints=mode == "with")
                    i += 1
                    done += BATCH
                rates[mode].append(done / (time.perf_counter() - start))
        handover.finished(60)
        written = stats.written
        store.close()
    without, with_ = statistics.median(rates["without"]), statistics.median(rates["with"])
    cost = 1 - with_ / without
    stall_ms = max(stalls["full"], default=math.nan) * 1000
    filling_ms = max(stalls["filling"], default=math.nan) * 1000
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
        f"; stall max while references fill {filling_ms:.0f} ms" + (" [quick]" if args.quick else "")
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
                "checkpoint_every_s": args.every,
                "store": "directory (LocalCheckpoints), encoding on its writer thread",
            },
            "rss_mb_over_baseline": round(rss, 1),
            "rss_mb_baseline": round(rss_before, 1),
            "checkpoint_loop_stall_ms": {k: [round(s * 1000, 1) for s in v] for k, v in stalls.items()},
            "snapshot_at_the_end_ms": round(snapshot_s * 1000, 1),
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
