"""Broker away at start-up and mid-run: HTTP keeps answering, the daemon reconnects by itself."""

from __future__ import annotations

import time
from pathlib import Path

from daemon.dev.broker import TansuBroker, free_port
from daemon.dev.generator import TrafficGenerator, TrafficSpec
from daemon.ingest.decode import DecodeFailure
from daemon.ingest.kafka import KafkaDeadLetter
from daemon.ingest.sources import RawRecord
from tests.integration.support import get, produce, running_daemon, total, wait_for


def _events(n_seconds: int, seed: int) -> list[tuple[bytes, bytes]]:
    spec = TrafficSpec(rate=20, duration_s=n_seconds, seed=seed)
    return list(TrafficGenerator(spec).encoded())


def test_daemon_waits_for_broker_and_survives_its_loss(tmp_path: Path, kafka_client: str) -> None:
    port = free_port()
    config = {
        "source": {
            "kafka": {
                "bootstrap_servers": [f"127.0.0.1:{port}"],
                "topics": ["logs"],
                "group_id": "outage",
                "session_timeout_ms": 6000,
                "client": kafka_client,
            }
        },
        # The dead-letter producer must wait for the broker too, not crash the start-up.
        "dead_letter": {"topic": "logs-dlq"},
        # The test broker comes back empty (it keeps its log in memory): offsets restart at 0, and
        # state checkpointed at offsets that no longer exist has no meaning. A broker that comes
        # back with its log is test_stall.py's case, with the default (topic) store.
        "checkpoint": {"store": "off"},
    }
    with running_daemon(tmp_path, config) as d:
        # No broker yet: ready and healthy anyway (readiness never depends on Kafka).
        time.sleep(3)
        assert get(d.url + "/readyz")[0] == 200
        assert get(d.url + "/healthz")[0] == 200
        samples = d.scrape()
        assert total(samples, "inferwatch_source_errors_total", operation="connect") >= 1
        # Never reached yet: an outage, with no last contact to report.
        assert total(samples, "inferwatch_source_up") == 0
        assert not total(samples, "inferwatch_source_last_contact_timestamp_seconds")

        first = _events(5, seed=1)
        with TansuBroker(port) as broker:
            broker.create_topics(["logs", "logs-dlq"])
            produce(broker.bootstrap, "logs", [*first, (None, b"{not json")])
            wait_for(lambda: total(d.scrape(), "inferwatch_events_total") == len(first), 60, "first batch")
            assert total(d.scrape(), "inferwatch_source_up") == 1
            wait_for(
                lambda: total(d.scrape(), "inferwatch_dead_letter_records_total", outcome="sent") == 1,
                30,
                "dead letter sent",
            )

        # Broker gone (and, being in-memory, its data with it): connections refused, an outage
        # once the session timeout (6 s) has passed without an answer.
        gone = time.monotonic()
        wait_for(lambda: total(d.scrape(), "inferwatch_source_up") == 0, 30, "the outage in inferwatch_source_up")
        assert time.monotonic() - gone > 4
        assert get(d.url + "/healthz")[0] == 200

        second = _events(3, seed=2)
        with TansuBroker(port) as broker:
            broker.create_topics(["logs"])
            produce(broker.bootstrap, "logs", second)
            wait_for(
                lambda: total(d.scrape(), "inferwatch_events_total") == len(first) + len(second),
                90,
                "events after the broker came back",
            )
            # The probe asks every second, and retries a lost broker at least as often.
            wait_for(lambda: total(d.scrape(), "inferwatch_source_up") == 1, 5, "contact again")
        assert d.stop() == 0


def test_dead_letter_copies_waiting_for_an_absent_broker_are_bounded() -> None:
    counts = {"sent": 0, "failed": 0, "dropped": 0}
    with TansuBroker() as broker:
        broker.create_topics(["dlq"])
        sink = KafkaDeadLetter((broker.bootstrap,), "dlq", counts, max_buffered_bytes=10 * 1024)
        sink.send(RawRecord("logs", 0, 0, None, None, b"x" * 1000), DecodeFailure("malformed_json", "x"))
        assert sink.flush(10) and counts["sent"] == 1 and sink.buffered_bytes == 0
    # The broker is gone: copies wait for it, up to the cap, and the rest are counted, not held.
    try:
        for i in range(100):
            sink.send(RawRecord("logs", 0, i, None, None, b"x" * 1000), DecodeFailure("malformed_json", "x"))
        assert sink.buffered_bytes == 10_000
        assert counts["dropped"] == 90
    finally:
        sink.close(timeout_s=0)
