"""Pipeline throughput: decode + route + per-key metrics over in-memory batches, on one core.

The generator's events (8 features each) become polls of 2,000 records, the default
`max_poll_records` (one chunk per partition, as the Kafka source hands them over), and go through
`build_pipeline(Config()).process(chunks)`, the call the daemon's loop makes. No Kafka and no
HTTP: this is the ceiling of the loop.

Baselines over the same bytes in the same run: a plain `json.loads` pass, and msgspec's
typed decode alone (the pipeline's first step). Repetitions rotate between the variants so
that a noisy neighbour hurts all of them alike.

Also measured: the same pipeline fed 1,000 distinct keys (`limits.max_keys` default), where a
2,000-record batch holds ~2 events per key. Issue 13's target: the rate at 1,000 keys is at least
0.8x the rate at the generator's 3 keys (cost flat in the number of keys). It is timed on a
pipeline that has seen every key once already (30 events each, untimed), as a daemon at 1,000
keys runs; the first sight of 1,000 keys (creating their rows, drift streams and canary arms,
and growing the preallocated drift banks to 8,000 rows) is timed apart and reported beside it.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from typing import Any

import msgspec
from _common import (
    GENERATOR_START_TIME,
    fmt_rate,
    generator_values,
    keyed_events,
    latency_stats,
    parse_args,
    pin_to_one_core,
    rate_stats,
    verdict,
    write_result,
)

from daemon.config import Config
from daemon.ingest.events import InferenceEvent
from daemon.ingest.sources import Chunk, RawRecord, chunks_of
from daemon.runtime.app import build_pipeline
from daemon.runtime.lifecycle import tune_gc

NAME = "pipeline_throughput"
TARGET_EVENTS_PER_S = 150_000  # the Foundation issue's target, one core
TARGET_FLAT = 0.8  # issue 13: the rate at 1,000 keys over the rate at 3 keys
BATCH_SIZE = 2000  # KafkaConfig.max_poll_records default
MANY_KEYS = 1000  # LimitsConfig.max_keys default
TOPIC = "inference-logs"
PARTITIONS = 3


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--events", type=int, help="events per pass (default 200,000; 40,000 with --quick)")
    p.add_argument("--repeats", type=int, default=7, help="timed passes of each variant (default 7)")
    p.add_argument("--cpu", type=int, help="CPU to pin to (default: the highest allowed)")


def main() -> None:
    args = parse_args(__doc__, _add_args)
    n = args.events or (40_000 if args.quick else 200_000)
    repeats = max(args.repeats if not args.quick else 5, 5)
    cpu = pin_to_one_core(args.cpu)
    tune_gc()  # as the daemon does at start-up

    t0 = time.perf_counter()
    pairs = generator_values(n)
    gen_s = time.perf_counter() - t0
    values = [v for _, v in pairs]
    # Spread over partitions and give every record a broker timestamp, as KafkaSource does.
    records = [
        RawRecord(TOPIC, i % PARTITIONS, i // PARTITIONS, GENERATOR_START_TIME + i / 1000.0, k, v)
        for i, (k, v) in enumerate(pairs)
    ]
    # A poll: per partition, its records in offset order.
    batches = [
        chunks_of(sorted(records[i : i + BATCH_SIZE], key=lambda r: r.partition)) for i in range(0, n, BATCH_SIZE)
    ]
    config = Config()

    batch_seconds: list[float] = []
    checks: dict[str, Any] = {}

    def run_pipeline() -> None:
        pipeline = build_pipeline(config)
        process = pipeline.process
        clock = time.perf_counter
        for batch in batches:
            b0 = clock()
            process(batch)
            batch_seconds.append(clock() - b0)
        checks["events"] = pipeline.events
        checks["invalid"] = pipeline.totals().invalid_records
        checks["keys"] = len(pipeline.router)

    loads = json.loads

    def run_json() -> None:
        for v in values:
            loads(v)

    decode = msgspec.json.Decoder(InferenceEvent).decode

    def run_msgspec() -> None:
        for v in values:
            decode(v)

    per_key = 10 if args.quick else 30
    many_values = keyed_events(MANY_KEYS, per_key)

    def many_batches(first: int) -> list[list[Chunk]]:
        return [
            chunks_of(
                RawRecord(TOPIC, 0, first + i + j, GENERATOR_START_TIME, None, v)
                for j, v in enumerate(many_values[i : i + BATCH_SIZE])
            )
            for i in range(0, len(many_values), BATCH_SIZE)
        ]

    first_sight, again = many_batches(0), many_batches(len(many_values))

    def run_many_keys_first_sight() -> None:
        pipeline = build_pipeline(config)
        for batch in first_sight:
            pipeline.process(batch)
        checks["many_keys"] = len(pipeline.router)

    def run_many_keys() -> float:
        """Seconds of the second pass, on a pipeline that has seen every key."""
        pipeline = build_pipeline(config)
        for batch in first_sight:
            pipeline.process(batch)
        gc.collect()
        t0 = time.perf_counter()
        for batch in again:
            pipeline.process(batch)
        seconds = time.perf_counter() - t0
        checks["many_keys_events"] = pipeline.events
        return seconds

    variants = {
        "pipeline": run_pipeline,
        "json_loads": run_json,
        "msgspec_decode": run_msgspec,
        "pipeline_1000_keys": run_many_keys,
        "pipeline_1000_keys_first_sight": run_many_keys_first_sight,
    }
    sizes = {name: n for name in variants} | {
        "pipeline_1000_keys": len(many_values),
        "pipeline_1000_keys_first_sight": len(many_values),
    }
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():  # warm-up: first-touch allocations, imports, caches
        fn()
    batch_seconds.clear()
    for _ in range(repeats):
        for name, fn in variants.items():
            gc.collect()
            t0 = time.perf_counter()
            own = fn()  # a variant that times part of its work returns those seconds
            wall = time.perf_counter() - t0
            rates[name].append(sizes[name] / (own if isinstance(own, float) else wall))
    if (
        checks["events"] != n
        or checks["invalid"] != 0
        or checks["many_keys"] != MANY_KEYS
        or checks["many_keys_events"] != 2 * len(many_values)
    ):
        raise SystemExit(f"pipeline counted {checks} for {n} generated events")

    stats = {k: rate_stats(v) for k, v in rates.items()}
    pipe = stats["pipeline"]
    ratio_json = pipe["median"] / stats["json_loads"]["median"]
    ratio_msgspec = pipe["median"] / stats["msgspec_decode"]["median"]
    ok = pipe["median"] >= TARGET_EVENTS_PER_S
    flat = stats["pipeline_1000_keys"]["median"] / pipe["median"]
    flat_ok = flat >= TARGET_FLAT
    summary = (
        f"{NAME}: {MANY_KEYS:,} keys vs 3 keys {flat:.2f}x ({fmt_rate(stats['pipeline_1000_keys']['median'])} vs "
        f"{fmt_rate(pipe['median'])} events/s) vs target >= {TARGET_FLAT}: {verdict(flat_ok)} (first sight of the keys "
        f"{stats['pipeline_1000_keys_first_sight']['median'] / pipe['median']:.2f}x) | "
        f"3 keys {fmt_rate(pipe['median'])} events/s vs >= {fmt_rate(TARGET_EVENTS_PER_S)}: {verdict(ok)} | "
        f"baselines: {ratio_json:.2f}x json.loads ({fmt_rate(stats['json_loads']['median'])}/s), "
        f"{ratio_msgspec:.2f}x msgspec decode alone ({fmt_rate(stats['msgspec_decode']['median'])}/s)"
        + (" [quick]" if args.quick else "")
    )
    write_result(
        NAME,
        args.quick,
        {
            "unit": "events/s",
            "target": {
                "metric": "pipeline median events/s on one core; 1,000 keys over 3 keys (issue 13)",
                "min": TARGET_EVENTS_PER_S,
                "min_flat": TARGET_FLAT,
            },
            "pass": ok and flat_ok,
            "flat": flat,
            "verdict_on": "median of the timed runs",
            "setup": {
                "events_per_run": n,
                "batch_size": BATCH_SIZE,
                "batches": len(batches),
                "repeats": repeats,
                "pinned_cpu": cpu,
                "mean_event_bytes": round(sum(map(len, values)) / n, 1),
                "keys": checks["keys"],
                "generator_seconds": round(gen_s, 2),
                "config": "Config() defaults",
                "gc": "tune_gc() as the daemon does; gc.collect() before each timed run",
            },
            "pipeline": stats["pipeline"],
            "json_loads": stats["json_loads"],
            "msgspec_decode": stats["msgspec_decode"],
            "ratios_of_medians": {
                "pipeline_over_json_loads": ratio_json,
                "pipeline_over_msgspec_decode": ratio_msgspec,
            },
            "ratios_of_best": {
                "pipeline_over_json_loads": pipe["best"] / stats["json_loads"]["best"],
                "pipeline_over_msgspec_decode": pipe["best"] / stats["msgspec_decode"]["best"],
            },
            "pipeline_batch_latency": latency_stats(batch_seconds),
            "pipeline_1000_keys": {
                **stats["pipeline_1000_keys"],
                "note": f"target: >= {TARGET_FLAT}x the 3-key rate; 1,000 keys x "
                f"{per_key} events (bench/_common.keyed_events), batches of {BATCH_SIZE}",
                "events_per_run": len(many_values),
                "timed": "the second pass, every key seen in the first",
            },
            "pipeline_1000_keys_first_sight": {
                **stats["pipeline_1000_keys_first_sight"],
                "ratio_to_3_keys": stats["pipeline_1000_keys_first_sight"]["median"] / pipe["median"],
                "note": "a fresh pipeline's first pass: every key, stream and arm created, banks grown",
            },
        },
        summary,
    )


if __name__ == "__main__":
    main()
