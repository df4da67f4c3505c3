"""Soak (issue 7, Pressure): 10M events of the demo's traffic; RSS after warm-up must grow by <= 10%.

The daemon as `inferwatch demo` builds it, less its shadow models and retraining webhooks
(`Daemon(demo_config(...))`: the label join, drift and canary on, calibration on its background
thread), without Kafka: the demo's traffic (its 3 keys,
its change plan, one truncated event in 500, every event's label LABEL_DELAY_S later on the labels
topic, keyed by model onto 3 partitions) goes to `Pipeline.process` in polls of max_poll_records,
and `Pipeline.tick()` runs every commit_interval_ms, as the daemon's loop does. Traffic is
generated as it is consumed, so nothing but the daemon's state stays in memory.

Every `--every` events, /metrics is rendered and /v1/status answered (a scrape), then RSS is read
from /proc/self/statm. Warm-up is the first `--warmup` events: the largest store, the joins' memory
of joined request ids (labels.max_entries = 200,000 in each partition's join, kept for
labels.ttl_seconds = 24 h of wall time), is full after ~400,000 events (the demo's two models key
onto two of the three partitions, half the traffic each); every window (drift, quality, estimate,
canary warm-up) after ~1,000 per key. 1M is 2.5 times the slowest fill.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import zlib
from collections import deque
from collections.abc import Iterator
from typing import Any

from _common import GENERATOR_START_TIME, fmt_rate, parse_args, peak_rss_mb, pin_to_one_core, verdict, write_result

from daemon.dev.demo import LABELS_TOPIC, MALFORMED_EVERY, TOPIC, changes, demo_config
from daemon.dev.generator import LABEL_DELAY_S, TrafficGenerator, TrafficSpec, encode, parse_change
from daemon.ingest.sources import RawRecord, chunks_of
from daemon.runtime.app import Daemon

NAME = "soak"
TARGET_GROWTH = 0.10
DEMO_RATE = 200.0  # events per simulated second: `inferwatch demo --rate` default
PARTITIONS = 3  # the demo's topics


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--events", type=int, help="events in all (default 10,000,000; 650,000 with --quick)")
    p.add_argument(
        "--warmup", type=int, help="events before the RSS baseline (default 1,000,000; 450,000 with --quick)"
    )
    p.add_argument("--every", type=int, help="events between RSS samples (default 250,000; 50,000 with --quick)")
    p.add_argument("--cpu", type=int, help="CPU to pin to (default: the highest allowed)")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def traffic(n: int) -> Iterator[tuple[int, RawRecord]]:
    """(events so far, record) in the order a consumer would see the demo's records."""
    spec = TrafficSpec(
        rate=DEMO_RATE,
        duration_s=n / DEMO_RATE,
        seed=1,
        start_time=GENERATOR_START_TIME,
        changes=tuple(parse_change(c) for c in changes()),
    )
    gen = TrafficGenerator(spec)
    offsets: dict[tuple[str, int], int] = {}
    due: deque[tuple[float, bytes, bytes]] = deque()

    def record(topic: str, ts: float, key: bytes, value: bytes) -> RawRecord:
        tp = (topic, zlib.crc32(key) % PARTITIONS)
        offset = offsets[tp] = offsets.get(tp, -1) + 1
        return RawRecord(topic, tp[1], offset, ts, key, value)

    for i, ev in enumerate(gen.events(), 1):
        t = ev["timestamp"]
        key, value = encode(ev)
        if i % MALFORMED_EVERY == 0:
            value = value[: len(value) // 2]  # truncated JSON, as the demo sends
        yield i, record(TOPIC, t, key, value)
        label = gen.label(ev)
        due.append((label["timestamp"], *encode(label)))
        while due and due[0][0] <= t:
            yield i, record(LABELS_TOPIC, *due.popleft())


def main() -> None:
    args = parse_args(__doc__, _add_args)
    n = args.events or (650_000 if args.quick else 10_000_000)
    # Quick: past the joins' fill (~400,000), or it measures the warm-up.
    warmup = args.warmup or (450_000 if args.quick else 1_000_000)
    every = args.every or (50_000 if args.quick else 250_000)
    cpu = pin_to_one_core(args.cpu)

    daemon = Daemon(demo_config("127.0.0.1:9092", 0))  # no broker: the source is this loop
    pipeline = daemon.pipeline
    kafka = daemon.config.source.kafka
    tick_s = kafka.commit_interval_ms / 1000.0
    samples: list[dict[str, Any]] = []
    busy = 0.0  # seconds inside process() and tick(): the daemon's own work
    next_tick = time.monotonic() + tick_s
    started = time.perf_counter()

    def sample(events: int) -> None:
        daemon.exposition.render()
        daemon.status()
        joins = [s.join for s in pipeline.partitions.values() if s.join is not None]
        samples.append(
            {
                "events": events,
                "rss_mb": round(rss_mb(), 2),
                "wall_s": round(time.perf_counter() - started, 1),
                "allocated_blocks": sys.getallocatedblocks(),
                # Summed over the partitions' joins.
                "join": {k: sum(j.sizes()[k] for j in joins) for k in joins[0].sizes()} if joins else None,
                "keys": len(pipeline.router),
            }
        )
        print(f"soak: {events:>11,} events  RSS {samples[-1]['rss_mb']:8.1f} MB", file=sys.stderr, flush=True)

    def poll(batch: list[RawRecord]) -> None:
        nonlocal busy, next_tick
        # As the Kafka source hands a poll over: per topic-partition, its records in offset order.
        chunks = chunks_of(sorted(batch, key=lambda r: (r.topic, r.partition)))
        t0 = time.perf_counter()
        pipeline.process(chunks)
        if time.monotonic() >= next_tick:
            pipeline.tick()
            next_tick = time.monotonic() + tick_s
        busy += time.perf_counter() - t0

    next_sample = every
    try:
        batch: list[RawRecord] = []
        for i, rec in traffic(n):
            batch.append(rec)
            if len(batch) == kafka.max_poll_records:
                poll(batch)
                batch = []
                if i >= next_sample:
                    sample(i)
                    next_sample += every
        poll(batch)
    finally:
        pipeline.calibrator.close()
        daemon.http.stop()

    invalid = pipeline.totals().invalid_records
    if pipeline.events + invalid != n:
        raise SystemExit(f"the pipeline counted {pipeline.events:,} events and {invalid:,} invalid of {n:,}")
    base = next(s for s in samples if s["events"] >= warmup)
    after = [s for s in samples if s["events"] >= base["events"]]
    peak = max(after, key=lambda s: s["rss_mb"])
    growth = peak["rss_mb"] / base["rss_mb"] - 1
    final_growth = after[-1]["rss_mb"] / base["rss_mb"] - 1
    ok = growth <= TARGET_GROWTH
    rate = n / busy
    summary = (
        f"{NAME}: RSS {base['rss_mb']:.0f} MB after {base['events']:,} events, max {peak['rss_mb']:.0f} MB "
        f"(+{growth:.1%}), final {after[-1]['rss_mb']:.0f} MB (+{final_growth:.1%}) over {n:,} events "
        f"vs target <= +{TARGET_GROWTH:.0%}: {verdict(ok)} | {fmt_rate(rate)} events/s in the daemon's loop "
        f"(1 core, demo's 3 keys, labels joined)" + (" [quick]" if args.quick else "")
    )
    write_result(
        NAME,
        args.quick,
        {
            "unit": "MB",
            "target": {"metric": "max RSS after warm-up over RSS at the end of warm-up, minus 1", "max": TARGET_GROWTH},
            "pass": ok,
            "setup": {
                "events": n,
                "warmup_events": warmup,
                "sample_every_events": every,
                "batch_records": kafka.max_poll_records,
                "tick_every_s": tick_s,
                "pinned_cpu": cpu,
                # glibc's malloc tunables change RSS here (docs/benchmarks.md, Soak).
                "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
                "config": "daemon.dev.demo.demo_config (labels join, drift, canary; defaults otherwise)",
                "traffic": f"demo: rate {DEMO_RATE:g}/simulated s, changes {list(changes())}, "
                f"1 in {MALFORMED_EVERY} truncated, labels {LABEL_DELAY_S:g} simulated s later",
            },
            "rss_mb": {
                "after_warmup": base["rss_mb"],
                "max_after_warmup": peak["rss_mb"],
                "max_at_events": peak["events"],
                "final": after[-1]["rss_mb"],
                "growth": growth,
                "final_growth": final_growth,
                "peak_rss_mb": peak_rss_mb(),
            },
            "events_per_s": {"in_loop": rate, "with_generation": n / (time.perf_counter() - started)},
            "counts": {
                "events": pipeline.events,
                "invalid": pipeline.totals().invalid_records,
                "join": pipeline.totals().labels if pipeline.join_labels else None,
                "overflow": dict(pipeline.overflow.counts),
            },
            "samples": samples,
        },
        summary,
    )


if __name__ == "__main__":
    main()
