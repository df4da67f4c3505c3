"""Static membership (confluent client, `group_instance_id`): a replica killed with SIGKILL and
restarted under the same name takes its own partitions back, with their state, and every event is
counted once.

On Kafka a static member's rejoin causes no rebalance at all. The test broker (Tansu 0.6) does
rebalance then, and pauses every static member's join and sync for 3 s: that part is not
asserted here (docs/benchmarks.md has the figures)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from daemon.dev.broker import TansuBroker
from daemon.dev.generator import TrafficGenerator, TrafficSpec
from tests.integration.support import DaemonProcess, produce, total, wait_for


def _items(seed: int) -> list[tuple[bytes, bytes]]:
    spec = TrafficSpec(models=tuple((f"model-{i}", ()) for i in range(8)), rate=200, duration_s=5, seed=seed)
    return list(TrafficGenerator(spec).encoded())


def _events(d: DaemonProcess, name: str) -> list[list[str]]:
    """The partitions of each `name` log line (partitions_assigned, partitions_revoked)."""
    out = []
    for line in d.logs().splitlines():
        if f'"{name}"' in line:
            out.append(json.loads(line)["partitions"])
    return out


def _config(broker: TansuBroker, topic: str, name: str) -> dict[str, object]:
    return {
        "source": {
            "kafka": {
                "bootstrap_servers": [broker.bootstrap],
                "topics": [topic],
                "group_id": f"{topic}-group",
                "session_timeout_ms": 6000,
                "client": "confluent",
                "group_instance_id": name,
                # Tansu 0.6 never hands a static member the partitions of a cooperative second
                # round (a dynamic one gets them): eager here. Real Kafka does both.
                "cooperative": False,
            }
        },
        "checkpoint": {"interval_seconds": 0.5},
    }


def test_a_restarted_static_member_takes_its_partitions_back_alone(
    broker: TansuBroker, tmp_path: Path, unique: str
) -> None:
    topic = f"static-{unique}"
    broker.create_topics([topic], partitions=4)
    first, second = _items(1), _items(2)
    a = DaemonProcess(tmp_path, _config(broker, topic, "replica-a")).start()
    b = DaemonProcess(tmp_path, _config(broker, topic, "replica-b"))
    try:
        wait_for(lambda: a.status()["lag"], 60, "A assigned partitions")
        b.start()
        wait_for(lambda: len(a.status()["lag"]) == 2 and len(b.status()["lag"]) == 2, 60, "two partitions each")
        produce(broker.bootstrap, topic, first)

        def combined(x: DaemonProcess, y: DaemonProcess) -> float:
            return total(x.scrape(), "inferwatch_events_total") + total(y.scrape(), "inferwatch_events_total")

        wait_for(lambda: combined(a, b) == len(first), 60, "batch 1 counted across replicas")
        wait_for(lambda: total(b.scrape(), "inferwatch_checkpoints_total", outcome="ok") > 0, 30, "B checkpoints")
        mine = _events(b, "partitions_assigned")[-1]

        b.stop(signal.SIGKILL)
        killed = time.monotonic()
        b = DaemonProcess(tmp_path, _config(broker, topic, "replica-b"), port=b.port).start()
        wait_for(lambda: b.status()["lag"], 60, "the restarted B assigned partitions")
        back = time.monotonic() - killed
        produce(broker.bootstrap, topic, second)
        wait_for(lambda: combined(a, b) >= len(first) + len(second), 90, "both batches counted")
        time.sleep(2)
        assert combined(a, b) == len(first) + len(second)
        assert _events(b, "partitions_assigned") == [mine]  # its own partitions, in one assignment
        print(f"the restarted static member had its partitions {back:.1f} s after the kill")
        assert a.stop() == 0
        assert b.stop() == 0
    finally:
        a.kill()
        b.kill()
