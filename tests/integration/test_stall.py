"""A broker that hangs (SIGSTOP for 15 s, past the 6 s session timeout) must not hang the daemon (issue 7).

/healthz and /metrics answer every second throughout, `inferwatch_source_up` shows the outage, and
after SIGCONT the daemon catches up with every event counted exactly once.

The stall starts right after a batch is processed and before its commit is due, so the commit
meets the hung broker: without `commit_timeout_ms` the loop would block until it returns.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from daemon.dev.broker import TansuBroker
from daemon.dev.generator import TrafficGenerator, TrafficSpec
from tests.integration.support import DaemonProcess, get, parse, produce, running_daemon, total, wait_for

STALL_S = 15
SESSION_S = 6
# Slack for a loaded machine when reading the outage gauge against the session timeout.
MARGIN_S = 1.5


def _items(seed: int) -> list[tuple[bytes, bytes]]:
    spec = TrafficSpec(rate=50, duration_s=4, seed=seed)
    return list(TrafficGenerator(spec).encoded())


def _contact(d: DaemonProcess) -> tuple[float, float]:
    """inferwatch_source_up and the last contact timestamp (0 while absent)."""
    s = d.scrape()
    return total(s, "inferwatch_source_up"), total(s, "inferwatch_source_last_contact_timestamp_seconds")


def test_broker_stall_keeps_the_loop_alive_and_loses_nothing(tmp_path: Path, kafka_client: str) -> None:
    with TansuBroker() as broker:
        assert broker.process is not None
        broker.create_topics(["stall"], partitions=2)
        config = {
            "source": {
                "kafka": {
                    "bootstrap_servers": [broker.bootstrap],
                    "topics": ["stall"],
                    "group_id": "stall",
                    "session_timeout_ms": SESSION_S * 1000,
                    "commit_timeout_ms": 1000,
                    # Processed offsets wait up to 3 s, so a commit falls inside the stall.
                    "commit_interval_ms": 3000,
                    "client": kafka_client,
                }
            },
            # Tight watchdog: a loop stuck in a commit or poll for 5 s would fail /healthz.
            "lifecycle": {"watchdog_timeout_seconds": 5},
        }
        warmup, first, second = _items(0), _items(1), _items(2)
        with running_daemon(tmp_path, config) as d:
            # An idle topic is no outage: the broker still answers (empty fetches, heartbeats).
            wait_for(lambda: _contact(d)[0] == 1, 30, "first broker contact")
            idle_until = time.monotonic() + SESSION_S + 3
            while time.monotonic() < idle_until:
                assert _contact(d)[0] == 1, "an idle topic read as an outage"
                time.sleep(1)

            # The first commit is immediate; the next one is due 3 s after it.
            produce(broker.bootstrap, "stall", warmup)
            wait_for(lambda: total(d.scrape(), "inferwatch_events_total") == len(warmup), 60, "warm-up batch")
            produce(broker.bootstrap, "stall", first)
            first = warmup + first
            wait_for(lambda: total(d.scrape(), "inferwatch_events_total") == len(first), 60, "first batch")

            os.kill(broker.process.pid, signal.SIGSTOP)
            stopped = time.time()
            seen: list[tuple[float, float, float]] = []  # (seconds into the stall, up, last contact)
            try:
                while time.time() < stopped + STALL_S:
                    assert get(d.url + "/healthz")[0] == 200, d.logs()[-2000:]
                    status, body = get(d.url + "/metrics")
                    assert status == 200
                    s = parse(body.decode())
                    contact = total(s, "inferwatch_source_last_contact_timestamp_seconds")
                    seen.append((time.time() - stopped, total(s, "inferwatch_source_up"), contact))
                    time.sleep(1)
            finally:
                os.kill(broker.process.pid, signal.SIGCONT)
            resumed = time.time()
            # Down from one session timeout into the stall to its end; no contact during it.
            down = [up for t, up, _ in seen if t > SESSION_S + MARGIN_S]
            assert len(down) > STALL_S - SESSION_S - 5 and set(down) == {0}, seen
            assert all(0 < contact <= stopped for _, _, contact in seen), seen

            wait_for(lambda: (c := _contact(d))[0] == 1 and c[1] >= resumed, 30, "contact after the stall")
            produce(broker.bootstrap, "stall", second)
            wait_for(
                lambda: total(d.scrape(), "inferwatch_events_total") == len(first) + len(second),
                90,
                "events after the stall",
            )
            time.sleep(2)
            assert total(d.scrape(), "inferwatch_events_total") == len(first) + len(second)
            assert d.stop() == 0
