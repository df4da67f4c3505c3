"""Static membership (confluent client, `group_instance_id`): a replica killed with SIGKILL and
restarted at once under the same name takes its partitions back, with their state, and every
event is counted once.

On Kafka a static member's rejoin causes no rebalance at all. The test broker (Tansu 0.6) does
rebalance then, pauses every static member's join and sync for 3 s, and lists no members in
DescribeGroups: so this test shows that a static member runs and hands its state over exactly,
not that the broker treated it as static (a dynamic member passes it too, 5 s slower). The time is
printed, not asserted (docs/benchmarks.md has the figures)."""

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


def _assigned(d: DaemonProcess) -> list[list[str]]:
    return [json.loads(ln)["partitions"] for ln in d.logs().splitlines() if '"partitions_assigned"' in ln]


def test_a_restarted_static_member_takes_its_partitions_back_with_their_state(
    broker: TansuBroker, tmp_path: Path, unique: str
) -> None:
    topic = f"static-{unique}"
    broker.create_topics([topic], partitions=4)
    config = {
        "source": {
            "kafka": {
                "bootstrap_servers": [broker.bootstrap],
                "topics": [topic],
                "group_id": f"{topic}-group",
                "session_timeout_ms": 6000,
                "client": "confluent",
                "group_instance_id": "replica-0",
            }
        },
        "checkpoint": {"interval_seconds": 0.5},
    }
    first, second = _items(1), _items(2)
    d = DaemonProcess(tmp_path, config).start()
    try:
        wait_for(lambda: d.status()["lag"], 60, "partitions assigned")
        produce(broker.bootstrap, topic, first)
        wait_for(lambda: total(d.scrape(), "inferwatch_events_total") == len(first), 60, "batch 1 counted")
        wait_for(lambda: total(d.scrape(), "inferwatch_checkpoints_total", outcome="ok") > 0, 30, "a checkpoint")
        before = _assigned(d)[-1]

        d.stop(signal.SIGKILL)
        killed = time.monotonic()
        d = DaemonProcess(tmp_path, config, port=d.port).start()
        wait_for(lambda: d.status()["lag"], 60, "the restarted replica assigned partitions")
        back = time.monotonic() - killed
        produce(broker.bootstrap, topic, second)
        wait_for(lambda: total(d.scrape(), "inferwatch_events_total") >= len(first) + len(second), 60, "batch 2")
        time.sleep(1)
        assert total(d.scrape(), "inferwatch_events_total") == len(first) + len(second)
        assert _assigned(d) == [before]  # all its partitions, in one assignment
        print(f"the restarted static member had its partitions {back:.1f} s after the kill")
        assert d.stop() == 0
    finally:
        d.kill()
