"""The daemon against a real broker: exact counts, commits, dead letters, SIGTERM and restart."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from daemon.dev.broker import TansuBroker
from daemon.dev.generator import TrafficGenerator, TrafficSpec
from tests.integration.support import DaemonProcess, Samples, consume, produce, total, wait_for

PARTITIONS = 3
MAX_EVENT_BYTES = 4096
# One of each way a record can be bad, with the reason the daemon must count it under.
BAD_RECORDS: list[tuple[bytes, str]] = [
    (b'{"request_id": "x", "model": "fraud-detector", "latency_ms": ', "malformed_json"),
    (b"\xff\xfe\xfd not utf-8", "malformed_json"),
    (b"", "malformed_json"),
    (b'{"request_id": "x", "model": "m", "latency_ms": NaN}', "malformed_json"),
    (b"[1, 2, 3]", "not_an_object"),
    (b'{"model": "fraud-detector"}', "missing_field"),
    (b'{"request_id": "x", "model": "m", "latency_ms": "fast"}', "wrong_type"),
    (b'{"request_id": "x", "model": "m", "latency_ms": -3}', "out_of_range"),
    (b'{"request_id": "x", "model": "' + b"m" * 500 + b'"}', "out_of_range"),
    (b'{"request_id": "x", "model": "m", "pad": "' + b"p" * MAX_EVENT_BYTES + b'"}', "oversize"),
]


@dataclass
class FirstRun:
    events: list[dict[str, Any]]
    bad: Counter[str]
    scrape: Samples
    metrics_text: str
    status: dict[str, Any]
    exit_code: int
    stop_seconds: float
    ends: dict[int, int]
    committed: dict[int, int | None]
    daemon: DaemonProcess
    config: dict[str, Any]
    topic: str
    dead_letter_topic: str


def _committed(bootstrap: str, group: str, topic: str) -> dict[int, int | None]:
    c = KafkaConsumer(bootstrap_servers=[bootstrap], group_id=group, enable_auto_commit=False)
    try:
        return {p: c.committed(TopicPartition(topic, p)) for p in range(PARTITIONS)}
    finally:
        c.close()


@pytest.fixture(scope="module")
def first_run(broker: TansuBroker, tmp_path_factory: pytest.TempPathFactory) -> FirstRun:
    tag = str(int(time.time() * 1000))
    topic, dlq, group = f"logs-{tag}", f"logs-{tag}-dlq", f"g-{tag}"
    broker.create_topics([topic], partitions=PARTITIONS)
    broker.create_topics([dlq])
    events = list(TrafficGenerator(TrafficSpec(rate=400, duration_s=10, seed=5)).events())
    rng = random.Random(5)
    items: list[tuple[bytes | None, bytes]] = [(e["model"].encode(), json.dumps(e).encode()) for e in events]
    bad: Counter[str] = Counter()
    for i in range(60):
        value, reason = BAD_RECORDS[i % len(BAD_RECORDS)]
        items.insert(rng.randrange(len(items)), (f"bad{i}".encode(), value))
        bad[reason] += 1
    ends = produce(broker.bootstrap, topic, items)

    config = {
        "source": {"kafka": {"bootstrap_servers": [broker.bootstrap], "topics": [topic], "group_id": group}},
        "dead_letter": {"topic": dlq},
        "limits": {"max_event_bytes": MAX_EVENT_BYTES},
        "lifecycle": {"shutdown_timeout_seconds": 15},
    }
    d = DaemonProcess(tmp_path_factory.mktemp("daemon"), config).start()
    try:
        expected = len(items)
        wait_for(
            lambda: (
                total(s := d.scrape(), "inferwatch_events_total") + total(s, "inferwatch_events_invalid_total")
                >= expected
            ),
            120,
            f"{expected} records counted",
        )
        time.sleep(1.0)  # a few more loop turns: nothing further may arrive
        scrape, text, status = d.scrape(), d.metrics_text(), d.status()
        t0 = time.monotonic()
        rc = d.stop()
        stop_s = time.monotonic() - t0
    finally:
        d.kill()
    return FirstRun(
        events, bad, scrape, text, status, rc, stop_s, ends,
        _committed(broker.bootstrap, group, topic), d, config, topic, dlq,
    )  # fmt: skip


def test_every_exported_count_is_exact(first_run: FirstRun) -> None:
    s, events = first_run.scrape, first_run.events
    by_key = Counter((e["model"], e["version"], e.get("variant", "default")) for e in events)
    assert total(s, "inferwatch_events_total") == len(events)
    for (model, version, variant), n in by_key.items():
        labels = {"model": model, "version": version, "variant": variant}
        assert total(s, "inferwatch_events_total", **labels) == n
        mine = [
            e for e in events if (e["model"], e["version"], e.get("variant", "default")) == (model, version, variant)
        ]
        for error_type, k in Counter(e["error_type"] for e in mine if e["status"] == "error").items():
            assert total(s, "inferwatch_errors_total", error_type=error_type, **labels) == k
        assert total(s, "inferwatch_request_latency_seconds_count", **labels) == n
        le_50ms = sum(e["latency_ms"] / 1000 <= 0.05 for e in mine)
        assert total(s, "inferwatch_request_latency_seconds_bucket", le="0.05", **labels) == le_50ms
        # f3 is tracked from the 10th event that names it (limits.feature_admission_events).
        admitted = [i for i, e in enumerate(mine) if "f3" in e["features"]][9]
        assert total(s, "inferwatch_feature_missing_total", feature="f3", **labels) == sum(
            e["features"]["f3"] is None for e in mine[admitted:]
        )
        for cls, k in Counter(str(e["prediction"]) for e in mine).items():
            assert total(s, "inferwatch_predictions_total", **{"class": cls}, **labels) == k
        assert total(s, "inferwatch_prediction_score_count", **labels) == n
        assert total(s, "inferwatch_last_event_timestamp_seconds", **labels) == max(e["timestamp"] for e in mine)
    for reason, n in first_run.bad.items():
        assert total(s, "inferwatch_events_invalid_total", reason=reason) == n
    assert total(s, "inferwatch_events_invalid_total") == sum(first_run.bad.values())
    assert total(s, "inferwatch_dead_letter_records_total", outcome="sent") == sum(first_run.bad.values())
    assert total(s, "inferwatch_consumer_lag_records") == 0


def test_status_endpoint_agrees_with_metrics(first_run: FirstRun) -> None:
    st = first_run.status
    assert st["events"] == len(first_run.events)
    assert sum(st["invalid"].values()) == sum(first_run.bad.values())
    assert {(k["model"], k["variant"]) for k in st["keys"]} == {
        ("fraud-detector", "control"),
        ("fraud-detector", "canary"),
        ("recsys-ranker", "default"),
    }


def test_promtool_check_metrics_passes_on_live_scrape(first_run: FirstRun) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make test` installs Debian's prometheus package"
    out = subprocess.run([promtool, "check", "metrics"], input=first_run.metrics_text, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_sigterm_exits_zero_with_everything_committed(first_run: FirstRun) -> None:
    assert first_run.exit_code == 0, first_run.daemon.logs()[-2000:]
    assert first_run.stop_seconds < 15
    # The log end we produced to, per partition (the high watermark), not end_offsets().
    assert first_run.committed == {p: first_run.ends.get(p) for p in range(PARTITIONS)}


def test_dead_letter_copies_carry_connect_headers(first_run: FirstRun, broker: TansuBroker) -> None:
    got = consume(broker.bootstrap, first_run.dead_letter_topic, sum(first_run.bad.values()))
    assert len(got) == sum(first_run.bad.values())
    headers = dict(got[0].headers)
    assert headers["__connect.errors.topic"] == first_run.topic.encode()
    assert {"__connect.errors.partition", "__connect.errors.offset", "__connect.errors.exception.message"} <= set(
        headers
    )
    reasons = Counter(dict(r.headers)["__connect.errors.exception.class.name"].decode() for r in got)
    assert reasons == Counter({f"inferwatch.{k}": v for k, v in first_run.bad.items()})


def test_restarted_daemon_does_not_reprocess(first_run: FirstRun, broker: TansuBroker, tmp_path: Path) -> None:
    """The restart restores the first run's per-key state (checkpointed at its shutdown) and counts
    only the new events on top: none lost, none read twice."""
    more = list(TrafficGenerator(TrafficSpec(rate=100, duration_s=5, seed=9)).events())
    ends = produce(broker.bootstrap, first_run.topic, [(e["model"].encode(), json.dumps(e).encode()) for e in more])
    d = DaemonProcess(tmp_path, first_run.config).start()
    expected = len(first_run.events) + len(more)
    try:
        wait_for(lambda: total(d.scrape(), "inferwatch_events_total") >= expected, 90, "new events counted")
        time.sleep(2.0)
        s = d.scrape()
        assert total(s, "inferwatch_events_total") == expected
        # Invalid records are counted per partition and checkpointed with it: the restart goes on
        # from the first run's count.
        assert total(s, "inferwatch_events_invalid_total") == sum(first_run.bad.values())
        assert d.stop() == 0
    finally:
        d.kill()
    committed = _committed(broker.bootstrap, first_run.config["source"]["kafka"]["group_id"], first_run.topic)
    for p in range(PARTITIONS):
        assert committed[p] == ends.get(p, first_run.ends.get(p))
