"""Chaos: 300,000 labelled events through the real broker while the daemon is SIGKILLed at ten
random points (mid-batch, between checkpoints, mid-write) and twice in the middle of a checkpoint
for sure (the broker stopped, so the write cannot finish), and restarted each time; the end state
equals one uninterrupted run's: per-key counts, accuracy windows, detector summaries, alerts.

The default store, the compacted topic, with small records so that a checkpoint takes many. Run
with both clients; with confluent-kafka on a third of the events and random kills.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from daemon.dev.broker import TansuBroker
from tests.integration.checkpointing import daemon_config, key_state, traffic, wait_counted
from tests.integration.support import DaemonProcess, get, produce, running_daemon, total, wait_for

EVENTS = 300_000
RANDOM_KILLS = 10
MID_CHECKPOINT_KILLS = 2


def _torn_checkpoints(bootstrap: str, topic: str) -> int:
    """Checkpoints of which fewer records reached the topic than their header announces."""
    consumer = KafkaConsumer(
        bootstrap_servers=[bootstrap], enable_auto_commit=False, receive_message_max_bytes=100 * 1024 * 1024
    )
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    chunks: dict[str, set[int]] = {}
    announced: dict[str, int] = {}
    while consumer.highwater(tp) is None or consumer.position(tp) < (consumer.highwater(tp) or 0):
        for batch in consumer.poll(timeout_ms=500).values():
            for r in batch:
                if r.value is not None:
                    partition, cid, chunk = r.key.decode().split("/")
                    chunks.setdefault(f"{partition}/{cid}", set()).add(int(chunk))
                    announced[f"{partition}/{cid}"] = int(dict(r.headers)["chunks"])
    consumer.close()
    return sum(len(got) < announced[c] for c, got in chunks.items())


def _canary(d: DaemonProcess) -> Any:
    """The canary decisions: verdicts, request counts, and each metric's p-value and effect. They
    are read at event-count looks, so they do not depend on where polls cut the stream, killed or
    not; the moments are sums, added in another order after a restart, hence the rounding. Labels
    count towards accuracy by event time, not on arrival (daemon/monitors/graded.py), so its
    p-value is compared too, and no label may have come too late."""
    models = json.loads(get(d.url + "/v1/canary")[1])["models"]

    def rounded(x: float | None) -> float | None:
        return None if x is None else float(f"{x:.9g}")

    return {
        (model, variant): (
            c["verdict"],
            c["requests"],
            {name: (m["verdict"], rounded(m["p_value"]), rounded(m["effect"])) for name, m in c["metrics"].items()},
            m["late_labels"],
        )
        for model, m in models.items()
        for variant, c in m["variants"].items()
    }


def _kill_mid_checkpoint(d: DaemonProcess, broker: TansuBroker) -> None:
    """Stop the broker, wait until a checkpoint is on its way (it cannot finish), SIGKILL the daemon."""
    assert broker.process is not None
    os.kill(broker.process.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: total(d.scrape(), "inferwatch_checkpoint_write_age_seconds") > 0, 30, "a checkpoint in flight")
        d.stop(signal.SIGKILL)
    finally:
        os.kill(broker.process.pid, signal.SIGCONT)


@pytest.mark.timeout(900)
def test_kill_9_again_and_again_changes_nothing(tmp_path: Path, kafka_client: str) -> None:
    with TansuBroker() as broker:  # its own: the test stops it
        topics = ("chaos-events", "chaos-labels")
        broker.create_topics(list(topics), partitions=3)
        # The full round with the default client; a third of it with confluent-kafka (the suite's time).
        n_events, random_kills = (
            (EVENTS, RANDOM_KILLS) if kafka_client == "kafka-python" else (EVENTS // 3, RANDOM_KILLS // 3)
        )
        events, labels = traffic(n_events, seed=3)
        cfg = daemon_config(broker, topics, "chaos", {"interval_seconds": 0.5, "max_record_bytes": 16384}, kafka_client)
        cfg["source"]["kafka"]["session_timeout_ms"] = 3000  # a killed member leaves the group sooner
        rng = random.Random(7)
        kills = ["random"] * random_kills + ["mid-checkpoint"] * MID_CHECKPOINT_KILLS
        rng.shuffle(kills)
        wave = n_events // len(kills)
        behind = []  # at each kill: events produced so far less events counted (> 0: mid-stream)
        for i, kind in enumerate(kills):
            # In waves, so that every kill finds the daemon with work in hand.
            produce(broker.bootstrap, topics[0], events[i * wave : (i + 1) * wave])
            produce(broker.bootstrap, topics[1], labels[i * wave : (i + 1) * wave])
            d = DaemonProcess(tmp_path, cfg).start()
            try:
                # Progress is events counted past the restored state: once partitions are assigned
                # (and restored), as lag shows.
                wait_for(lambda d=d: d.status()["lag"], 60, "partitions assigned")
                before = total(d.scrape(), "inferwatch_events_total")
                wait_for(lambda d=d, n=before: total(d.scrape(), "inferwatch_events_total") > n, 60, "progress")
                if kind == "random":
                    time.sleep(rng.uniform(0.0, 1.0))
                behind.append((i + 1) * wave - total(d.scrape(), "inferwatch_events_total"))
                if kind == "random":
                    d.stop(signal.SIGKILL)
                else:
                    _kill_mid_checkpoint(d, broker)
            finally:
                d.kill()
        produce(broker.bootstrap, topics[0], events[len(kills) * wave :])
        produce(broker.bootstrap, topics[1], labels[len(kills) * wave :])
        assert sum(b > 0 for b in behind) >= random_kills, f"most kills must land mid-stream: {behind}"
        torn = _torn_checkpoints(broker.bootstrap, "chaos-inferwatch-checkpoints")
        with running_daemon(tmp_path, cfg) as survivor:
            wait_counted(survivor, n_events, n_events, 300, "every event and label after the kills")
            time.sleep(1.0)
            resumed, resumed_canary = key_state(survivor), _canary(survivor)
        with running_daemon(tmp_path, daemon_config(broker, topics, "once", {"store": "off"})) as once:
            wait_counted(once, n_events, n_events, 300, "the uninterrupted run")
            time.sleep(1.0)
            uninterrupted, uninterrupted_canary = key_state(once), _canary(once)
    print(f"events behind at each kill: {behind}; torn checkpoints left in the topic: {torn}")
    assert resumed == uninterrupted
    assert resumed_canary == uninterrupted_canary
    assert resumed_canary, "the scenario has a canary"
    detections = [k["drift"]["detections"] for k in resumed if k["model"] == "fraud-detector"]
    assert any("feature:f0" in d for d in detections)  # alerts were raised, and carried across kills
