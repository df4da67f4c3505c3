"""Checkpoints in a local directory: a daemon killed with SIGKILL again and again ends with exactly
the state of one that never stopped, on the real broker: no event lost, none counted twice.
(tests/integration/test_chaos.py does the same at scale with the default store, the topic.)"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

from daemon.dev.broker import TansuBroker
from tests.integration.checkpointing import daemon_config, key_state, traffic, wait_counted
from tests.integration.support import DaemonProcess, produce, running_daemon, total, wait_for

WAVES, WAVE = 6, 2_500
KILLS = 5


def test_kill_9_mid_stream_loses_and_double_counts_nothing(broker: TansuBroker, tmp_path: Path, unique: str) -> None:
    topics = (f"ckpt-events-{unique}", f"ckpt-labels-{unique}")
    broker.create_topics(list(topics), partitions=1)
    events, labels = traffic(WAVES * WAVE, seed=8)
    rng = random.Random(1)
    checkpoint = {"directory": str(tmp_path / "state"), "interval_seconds": 0.3}
    cfg = daemon_config(broker, topics, f"ckpt-{unique}", checkpoint)
    kills = 0
    for wave in range(WAVES):
        produce(broker.bootstrap, topics[0], events[wave * WAVE : (wave + 1) * WAVE])
        produce(broker.bootstrap, topics[1], labels[wave * WAVE : (wave + 1) * WAVE])
        d = DaemonProcess(tmp_path, cfg).start()
        try:
            if kills < KILLS:
                wait_for(lambda d=d: total(d.scrape(), "inferwatch_events_total") > 0, 60, "consumption")
                time.sleep(rng.uniform(0.0, 0.6))  # mid-batch, mid-checkpoint or between: wherever it lands
                d.stop(signal.SIGKILL)
                kills += 1
            else:
                assert d.stop(signal.SIGTERM) == 0
        finally:
            d.kill()
    assert kills == KILLS
    with running_daemon(tmp_path, cfg) as survivor:
        wait_counted(survivor, len(events), len(labels), 90, "every event and label after the kills")
        time.sleep(1.0)
        resumed = key_state(survivor)
        assert total(survivor.scrape(), "inferwatch_checkpoints_total", outcome="ok") > 0
    # The same topics, read once by a daemon that never stops (another group, no checkpoints).
    with running_daemon(tmp_path, daemon_config(broker, topics, f"once-{unique}", {"store": "off"})) as once:
        wait_counted(once, len(events), len(labels), 90, "the uninterrupted run")
        time.sleep(1.0)
        uninterrupted = key_state(once)
    assert resumed == uninterrupted
    detections = [k["drift"]["detections"] for k in resumed if k["model"] == "fraud-detector"]
    assert any("feature:f0" in d for d in detections)  # the scenario did carry a detection across the kills
