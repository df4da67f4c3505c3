"""Two replicas in one group: the rebalance commits on revoke, so nothing is counted twice."""

from __future__ import annotations

import time
from pathlib import Path

from daemon.broker import TansuBroker
from daemon.generator import TrafficGenerator, TrafficSpec
from tests.integration.support import produce, running_daemon, total, wait_for


def _items(seed: int, models: int) -> list[tuple[bytes, bytes]]:
    spec = TrafficSpec(models=tuple((f"model-{i}", ()) for i in range(models)), rate=200, duration_s=5, seed=seed)
    return list(TrafficGenerator(spec).encoded())


def test_second_replica_takes_partitions_without_double_counting(broker: TansuBroker, tmp_path: Path) -> None:
    topic = f"rebalance-{int(time.time() * 1000)}"
    broker.create_topics([topic], partitions=4)
    config = {
        "source": {
            "kafka": {
                "bootstrap_servers": [broker.bootstrap],
                "topics": [topic],
                "group_id": f"{topic}-group",
                "session_timeout_ms": 6000,
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
