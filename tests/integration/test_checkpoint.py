"""Checkpoints (local directory): a daemon killed with SIGKILL again and again ends with exactly
the state of one that never stopped, on the real broker: no event lost, none counted twice."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path
from typing import Any

from daemon.broker import TansuBroker
from daemon.generator import TrafficGenerator, TrafficSpec, encode, parse_change
from tests.integration.support import DaemonProcess, produce, running_daemon, total, wait_for

WAVES, WAVE = 6, 2_500
KILLS = 5


def _traffic() -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
    spec = TrafficSpec(
        rate=200,
        duration_s=WAVES * WAVE / 200,
        seed=8,
        start_time=1_700_000_000.0,
        changes=(parse_change(f"after={WAVES * WAVE / 400}s model=fraud-detector feature=f0 shift=2"),),
    )
    gen = TrafficGenerator(spec)
    events = list(gen.events())
    return [encode(e) for e in events], [encode(gen.label(e)) for e in events]


def _config(
    tmp: Path, broker: TansuBroker, topics: tuple[str, str], group: str, directory: Path | None
) -> dict[str, Any]:
    return {
        "source": {
            "kafka": {
                "bootstrap_servers": [broker.bootstrap],
                "topics": [topics[0]],
                "group_id": group,
                "max_poll_records": 300,
                "commit_interval_ms": 100,
                "session_timeout_ms": 6000,
            }
        },
        "labels": {"topic": topics[1]},
        # Every labelled prediction stays in the window and the error stream (graded in label
        # order, which depends on how polls interleave the two topics) is left out: the rest of
        # the state must match exactly.
        "accuracy": {"window_events": 1_000_000},
        "drift": {"reference_events": 500, "window_events": 250, "streams": ["features", "score", "latency"]},
        "checkpoint": {"directory": str(directory) if directory else None, "interval_seconds": 0.3},
    }


def _state(d: DaemonProcess) -> list[dict[str, Any]]:
    keys = d.status()["keys"]
    for k in keys:
        k["quality"].pop("accuracy_estimated", None)  # CBPE fits on the first labels to arrive: poll order
    return sorted(keys, key=lambda k: (k["model"], k["version"], k["variant"]))


def test_kill_9_mid_stream_loses_and_double_counts_nothing(broker: TansuBroker, tmp_path: Path, unique: str) -> None:
    topics = (f"ckpt-events-{unique}", f"ckpt-labels-{unique}")
    broker.create_topics(list(topics), partitions=1)
    events, labels = _traffic()
    rng = random.Random(1)
    checkpoints = tmp_path / "state"
    cfg = _config(tmp_path, broker, topics, f"ckpt-{unique}", checkpoints)
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
        wait_for(
            lambda: (
                total(survivor.scrape(), "inferwatch_events_total") == len(events)
                and total(survivor.scrape(), "inferwatch_labels_total", outcome="joined") == len(labels)
            ),
            90,
            "every event and label after the kills",
        )
        time.sleep(1.0)
        resumed = _state(survivor)
        assert total(survivor.scrape(), "inferwatch_checkpoints_total", outcome="ok") > 0
    # The same topics, read once by a daemon that never stops (another group, no checkpoints).
    with running_daemon(tmp_path, _config(tmp_path, broker, topics, f"once-{unique}", None)) as once:
        wait_for(
            lambda: (
                total(once.scrape(), "inferwatch_events_total") == len(events)
                and total(once.scrape(), "inferwatch_labels_total", outcome="joined") == len(labels)
            ),
            90,
            "the uninterrupted run",
        )
        time.sleep(1.0)
        uninterrupted = _state(once)
    assert resumed == uninterrupted
    detections = [k["drift"]["detections"] for k in resumed if k["model"] == "fraud-detector"]
    assert any("feature:f0" in d for d in detections)  # the scenario did carry a detection across the kills
