"""A broker that hangs (SIGSTOP) must not hang the daemon: /healthz stays up, nothing is lost.

The stall starts right after a batch is processed and before its commit is due, so the commit
meets the hung broker: without `commit_timeout_ms` the loop would block until it returns.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from daemon.broker import TansuBroker
from daemon.generator import TrafficGenerator, TrafficSpec
from tests.integration.support import get, produce, running_daemon, total, wait_for

STALL_S = 12


def _items(seed: int) -> list[tuple[bytes, bytes]]:
    spec = TrafficSpec(rate=50, duration_s=4, seed=seed)
    return list(TrafficGenerator(spec).encoded())


def test_broker_stall_keeps_the_loop_alive_and_loses_nothing(tmp_path: Path) -> None:
    with TansuBroker() as broker:
        assert broker.process is not None
        broker.create_topics(["stall"], partitions=2)
        config = {
            "source": {
                "kafka": {
                    "bootstrap_servers": [broker.bootstrap],
                    "topics": ["stall"],
                    "group_id": "stall",
                    "session_timeout_ms": 6000,
                    "commit_timeout_ms": 1000,
                    # Processed offsets wait up to 3 s, so a commit falls inside the stall.
                    "commit_interval_ms": 3000,
                }
            },
            # Tight watchdog: a loop stuck in a commit or poll for 5 s would fail /healthz.
            "lifecycle": {"watchdog_timeout_seconds": 5},
        }
        warmup, first, second = _items(0), _items(1), _items(2)
        with running_daemon(tmp_path, config) as d:
            # The first commit is immediate; the next one is due 3 s after it.
            produce(broker.bootstrap, "stall", warmup)
            wait_for(lambda: total(d.scrape(), "inferwatch_events_total") == len(warmup), 60, "warm-up batch")
            produce(broker.bootstrap, "stall", first)
            first = warmup + first
            wait_for(lambda: total(d.scrape(), "inferwatch_events_total") == len(first), 60, "first batch")

            os.kill(broker.process.pid, signal.SIGSTOP)
            try:
                deadline = time.monotonic() + STALL_S
                while time.monotonic() < deadline:
                    assert get(d.url + "/healthz")[0] == 200, d.logs()[-2000:]
                    assert get(d.url + "/metrics")[0] == 200
                    time.sleep(1)
            finally:
                os.kill(broker.process.pid, signal.SIGCONT)

            produce(broker.bootstrap, "stall", second)
            wait_for(
                lambda: total(d.scrape(), "inferwatch_events_total") == len(first) + len(second),
                90,
                "events after the stall",
            )
            time.sleep(2)
            assert total(d.scrape(), "inferwatch_events_total") == len(first) + len(second)
            assert d.stop() == 0
