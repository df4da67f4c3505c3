"""Issue 7, measured: what checkpoints cost, and how fast a daemon killed with SIGKILL is back.

1. Cost: the daemon's ingestion (`Pipeline.process` over generated traffic with labels on their
   own topic, drift and canary on: the demo's keys) in events/s, alternating rounds without
   checkpoints and with one every `--every` seconds through `Handover`, as the daemon's loop
   does (the snapshot inline, the topic write polled), for each store: the compacted topic on a
   real broker (the default) and a local directory. Target: <= 10% lower.
2. Recovery: the records are on the broker and the topic holds a checkpoint of that state; a
   daemon is started, SIGKILLed once it has restored, and started again, 3 times, for each client:
   kafka-python (a dynamic member: the group join waits for the killed member's session to expire
   first) and confluent-kafka with static membership (`group_instance_id`: the restarted member
   takes its place; issue 14's target: state back <= 2 s). Per start: seconds to /readyz (target
   <= 5 s), to its partitions restored, and the restore itself (reading the topic, loading).
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from _common import GENERATOR_START_TIME, fmt_rate, parse_args, verdict, write_result
from kafka import KafkaProducer

from daemon.config import Config, from_mapping
from daemon.dev.broker import TansuBroker, free_port
from daemon.dev.generator import TrafficGenerator, TrafficSpec, encode
from daemon.export.exposition import CheckpointStats
from daemon.ingest.sources import Chunk, RawRecord, chunks_of
from daemon.runtime.app import build_pipeline
from daemon.state import codec
from daemon.state.checkpoint import CheckpointStore, KafkaCheckpoints, LocalCheckpoints
from daemon.state.handover import Handover

NAME = "checkpoint"
BATCH = 2000
TARGET_DROP = 0.10
TARGET_READY_S = 5.0
TARGET_STATIC_S = 2.0
GROUP = "bench"
# Each client's round in a group of its own: on the test broker a static member never joined a
# group that still held the previous round's killed kafka-python member.
GROUPS = {"kafka-python": GROUP, "confluent": f"{GROUP}-static"}
TOPICS = ("inference-logs", "labels")
# The config's default (10 s): the state-back time after kill -9 is mostly this wait.
SESSION_TIMEOUT_MS = 10_000


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--round-seconds", type=float, default=15.0)
    p.add_argument("--every", type=float, default=5.0, help="checkpoint interval in seconds (default 5)")
    p.add_argument("--session-timeout-ms", type=int, default=SESSION_TIMEOUT_MS, help="the group's (default 10000)")


def _config() -> Config:
    return from_mapping({"labels": {"topic": TOPICS[1]}, "http": {"port": 0}})


def _records(n: int) -> list[RawRecord]:
    gen = TrafficGenerator(TrafficSpec(rate=200, duration_s=n / 200, seed=3, start_time=GENERATOR_START_TIME))
    records = []
    for i, ev in enumerate(gen.events()):
        records.append(RawRecord(TOPICS[0], 0, i, ev["timestamp"], *encode(ev)))
        records.append(RawRecord(TOPICS[1], 0, i, ev["timestamp"], *encode(gen.label(ev))))
    return records


def _polls(records: list[RawRecord]) -> list[list[Chunk]]:
    """Polls of BATCH records: per topic-partition, its records in offset order, as the Kafka
    source hands them over (each poll's labels follow its events)."""
    return [
        chunks_of(sorted(records[i : i + BATCH], key=lambda r: (r.topic, r.partition)))
        for i in range(0, len(records), BATCH)
    ]


def cost(
    batches: list[list[Chunk]], store: CheckpointStore, rounds: int, seconds: float, every: float
) -> dict[str, Any]:
    def ingest(checkpoints: bool) -> tuple[float, CheckpointStats]:
        stats = CheckpointStats()
        handover = Handover(build_pipeline(_config()), store, stats, timeout_s=30)
        pending: dict[tuple[str, int], int] = {}
        done, t0 = 0, time.perf_counter()
        next_save = t0 + every
        while time.perf_counter() - t0 < seconds:
            for b in batches:
                offsets = handover.pipeline.process(b)
                pending.update(offsets)
                handover.position.update(offsets)
                done += sum(map(len, b))
                now = time.perf_counter()
                if checkpoints:
                    handover.finished()
                    if not handover.writing and now >= next_save:
                        handover.checkpoint(pending)
                        next_save = now + every
                if now - t0 >= seconds:
                    break
        handover.finished(30)
        return done / (time.perf_counter() - t0), stats

    ingest(False)  # warm-up
    rates: dict[str, list[float]] = {"without": [], "with": []}
    durations: list[float] = []
    for _ in range(rounds):
        rates["without"].append(ingest(False)[0])
        rate, stats = ingest(True)
        rates["with"].append(rate)
        durations.append(stats.last_duration)
    without, with_ = statistics.median(rates["without"]), statistics.median(rates["with"])
    return {
        "rates": rates,
        "without_median": without,
        "with_median": with_,
        "drop": 1 - with_ / without,
        "last_checkpoint_seconds": durations,
        "ok": 1 - with_ / without <= TARGET_DROP,
    }


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return int(r.status)
    except OSError:
        return 0


def recovery(
    broker: TansuBroker, tmp: Path, starts: int, session_timeout_ms: int, client: str
) -> list[dict[str, float]]:
    """Start, wait for the restore, SIGKILL; `starts` times. Seconds from each start."""
    port = free_port()
    static = {"client": "confluent", "group_instance_id": "bench-0"} if client == "confluent" else {}
    cfg = {
        "http": {"host": "127.0.0.1", "port": port},
        "labels": {"topic": TOPICS[1]},
        "source": {
            "kafka": {
                "bootstrap_servers": [broker.bootstrap],
                "topics": [TOPICS[0]],
                "group_id": GROUPS[client],
                "session_timeout_ms": session_timeout_ms,
                **static,
            }
        },
    }
    path = tmp / "recovery.json"
    path.write_text(json.dumps(cfg))
    runs = []
    for i in range(starts):
        log = tmp / f"recovery-{i}.log"
        t0 = time.perf_counter()
        with log.open("wb") as out:
            argv = [sys.executable, "-m", "daemon", "run", "--config", str(path)]
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)  # logs go to stderr
        try:
            ready = restored = None
            while time.perf_counter() - t0 < 120 and restored is None:
                if ready is None and _get(f"http://127.0.0.1:{port}/readyz") == 200:
                    ready = time.perf_counter() - t0
                line = next((ln for ln in log.read_text().splitlines() if "partitions_restored" in ln), None)
                if line is not None:
                    restored = (time.perf_counter() - t0, json.loads(line))
                time.sleep(0.02)
            if ready is None or restored is None:
                tail = log.read_text()[-3000:]
                raise SystemExit(f"start {i}: not restored within 120 s ({ready=}, {restored=}):\n{tail}")
            runs.append({"ready": ready, "restored": restored[0], "restore_itself": restored[1]["seconds"]})
            if not restored[1]["restored"]:
                raise SystemExit(f"start {i}: no partition restored from the checkpoint: {restored[1]}")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    return runs


def _produce(bootstrap: str, records: list[RawRecord]) -> None:
    producer = KafkaProducer(bootstrap_servers=[bootstrap], linger_ms=10)
    for r in records:
        producer.send(r.topic, key=r.key, value=r.value, partition=0)
    producer.flush()
    producer.close()


def _store(broker: TansuBroker, group: str) -> KafkaCheckpoints:
    """The group's checkpoint topic, where the daemon of that group looks by default."""
    return KafkaCheckpoints(
        (broker.bootstrap,), f"{group}-inferwatch-checkpoints", group, max_record_bytes=512 * 1024, timeout_s=30
    )


def main() -> None:
    args = parse_args(__doc__, _add_args)
    rounds, seconds = (2, 6.0) if args.quick else (args.rounds, args.round_seconds)
    records = _records(20_000 if args.quick else 60_000)
    batches = _polls(records)
    with tempfile.TemporaryDirectory() as d, TansuBroker() as broker:
        tmp = Path(d)
        broker.create_topics(list(TOPICS))
        topic_store = _store(broker, GROUP)
        costs = {
            "topic": cost(batches, topic_store, rounds, seconds, args.every),
            "directory": cost(batches, LocalCheckpoints(tmp / "state", GROUP), rounds, seconds, args.every),
        }
        # The state to recover: every record once, checkpointed at their offsets, records on the broker.
        _produce(broker.bootstrap, records)
        pipeline = build_pipeline(_config())
        offsets: dict[tuple[str, int], int] = {}
        for b in batches:
            offsets.update(pipeline.process(b))
        snapshot = pipeline.snapshot()
        assert {(t, p): o for p, shard in snapshot["partitions"].items() for t, o in shard["offsets"]} == offsets
        size = sum(len(codec.encode(shard)) for shard in snapshot["partitions"].values())
        topic_store.save(snapshot).result(30)
        topic_store.close()
        static_store = _store(broker, GROUPS["confluent"])
        static_store.save(snapshot).result(30)
        static_store.close()
        starts = 2 if args.quick else 3
        runs = {c: recovery(broker, tmp, starts, args.session_timeout_ms, c) for c in ("kafka-python", "confluent")}
    ready = statistics.median(r["ready"] for rs in runs.values() for r in rs)
    ok_ready = ready <= TARGET_READY_S
    back = {c: statistics.median(r["restored"] for r in rs) for c, rs in runs.items()}
    itself = statistics.median(r["restore_itself"] for rs in runs.values() for r in rs)
    ok_static = back["confluent"] <= TARGET_STATIC_S
    ok = costs["topic"]["ok"] and costs["directory"]["ok"] and ok_ready and ok_static
    t, dr = costs["topic"], costs["directory"]
    summary = (
        f"checkpoint: a checkpoint every {args.every:g} s costs {t['drop']:.1%} of ingestion with the topic "
        f"({fmt_rate(t['with_median'])}/s vs {fmt_rate(t['without_median'])}/s) and {dr['drop']:.1%} with a "
        f"directory (target <= 10%: {verdict(t['ok'] and dr['ok'])}); {size / 1e6:.1f} MB of state; after SIGKILL "
        f"ready in {ready:.2f} s (target <= 5 s: {verdict(ok_ready)}); state back {back['kafka-python']:.1f} s "
        f"after the start with kafka-python (the group join, session timeout {args.session_timeout_ms / 1000:g} s), "
        f"{back['confluent']:.1f} s with confluent-kafka and static membership (target <= 2 s: "
        f"{verdict(ok_static)}); the restore itself {itself:.2f} s"
    )
    write_result(NAME, args.quick, {"cost": costs, "state_bytes": size, "recovery": runs, "ok": ok}, summary)


if __name__ == "__main__":
    main()
