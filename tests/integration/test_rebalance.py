"""Two replicas in one group: partitions move with their state (checkpointed on revoke, restored on
assignment), nothing counted twice; a replica killed with SIGKILL hands its partitions over whole."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from daemon.dev.broker import TansuBroker
from daemon.dev.generator import TrafficGenerator, TrafficSpec
from tests.integration.checkpointing import daemon_config, key_state, traffic, wait_counted
from tests.integration.support import DaemonProcess, produce, running_daemon, total, wait_for


def _items(seed: int, models: int) -> list[tuple[bytes, bytes]]:
    spec = TrafficSpec(models=tuple((f"model-{i}", ()) for i in range(models)), rate=200, duration_s=5, seed=seed)
    return list(TrafficGenerator(spec).encoded())


def test_second_replica_takes_partitions_without_double_counting(
    broker: TansuBroker, tmp_path: Path, kafka_client: str
) -> None:
    topic = f"rebalance-{int(time.time() * 1000)}"
    broker.create_topics([topic], partitions=4)
    config = {
        "source": {
            "kafka": {
                "bootstrap_servers": [broker.bootstrap],
                "topics": [topic],
                "group_id": f"{topic}-group",
                "session_timeout_ms": 6000,
                "client": kafka_client,
            }
        }
    }
    first, second = _items(1, models=8), _items(2, models=8)
    with running_daemon(tmp_path, config) as a:
        produce(broker.bootstrap, topic, first)
        wait_for(lambda: total(a.scrape(), "inferwatch_events_total") == len(first), 60, "replica A counts batch 1")
        with running_daemon(tmp_path, config) as b:
            # Wait until B owns partitions (A's were revoked and committed).
            wait_for(lambda: b.status()["lag"], 60, "replica B assigned partitions")
            produce(broker.bootstrap, topic, second)

            def combined() -> float:
                return total(a.scrape(), "inferwatch_events_total") + total(b.scrape(), "inferwatch_events_total")

            wait_for(lambda: combined() >= len(first) + len(second), 90, "both batches counted across replicas")
            time.sleep(2)
            assert combined() == len(first) + len(second)
            assert total(b.scrape(), "inferwatch_events_total") > 0
            assert b.stop() == 0
        assert a.stop() == 0


def test_the_survivor_takes_a_killed_replicas_partitions_with_their_state(
    broker: TansuBroker, tmp_path: Path, unique: str, kafka_client: str
) -> None:
    topics = (f"handover-events-{unique}", f"handover-labels-{unique}")
    broker.create_topics(list(topics), partitions=4)
    events, labels = traffic(12_000, seed=5, extra_models=6)
    half = len(events) // 2
    cfg = daemon_config(broker, topics, f"handover-{unique}", {"interval_seconds": 0.5}, kafka_client)
    a = DaemonProcess(tmp_path, cfg).start()
    try:
        with running_daemon(tmp_path, cfg) as b:
            wait_for(lambda: a.status()["lag"] and b.status()["lag"], 60, "both replicas own partitions")
            produce(broker.bootstrap, topics[0], events[:half])
            produce(broker.bootstrap, topics[1], labels[:half])
            wait_for(lambda: a.status()["keys"] and b.status()["keys"], 60, "both replicas hold keys")
            wait_for(lambda: total(a.scrape(), "inferwatch_checkpoints_total", outcome="ok") > 0, 30, "A checkpoints")
            a.stop(signal.SIGKILL)  # whatever A processed after its last checkpoint, B does again
            produce(broker.bootstrap, topics[0], events[half:])
            produce(broker.bootstrap, topics[1], labels[half:])
            wait_counted(b, len(events), len(labels), 120, "the survivor counts everything")
            time.sleep(1.0)
            survivor = key_state(b)
    finally:
        a.kill()
    with running_daemon(tmp_path, daemon_config(broker, topics, f"single-{unique}", {"store": "off"})) as once:
        wait_counted(once, len(events), len(labels), 120, "one uninterrupted replica")
        time.sleep(1.0)
        assert survivor == key_state(once)
