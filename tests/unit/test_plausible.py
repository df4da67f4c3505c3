"""Implausible values are dropped from their events, counted by field and logged; the events count."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from typing import Any

import structlog

from daemon.config import from_mapping
from daemon.export.exposition import LoopStats, MetricsExposition
from daemon.ingest.sources import RawRecord, chunks_of
from daemon.runtime.app import build_pipeline
from tests.integration.support import Samples, parse, total

NOW = 1_764_300_000.0


def _record(i: int, record_time: float | None = NOW, **fields: object) -> RawRecord:
    body = {"request_id": f"r{i}", "model": "m", **fields}
    return RawRecord("t", 0, i, record_time, None, json.dumps(body).encode())


def _scrape(config_tree: Mapping[str, Any], records: list[RawRecord]) -> Samples:
    config = from_mapping(config_tree)
    pipeline = build_pipeline(config)
    pipeline.process(chunks_of(records))
    return parse(MetricsExposition(pipeline, config.metrics, lambda: LoopStats.idle()).render().decode())


def test_a_huge_latency_and_token_count_stay_out_of_sums_and_the_events_still_count() -> None:
    with structlog.testing.capture_logs() as logs:
        s = _scrape(
            {},
            [
                _record(0, latency_ms=20.0, tokens_in=10, tokens_out=5),
                _record(1, latency_ms=1e308, tokens_in=1_000_000_000),
                _record(2, latency_ms=30.0, ttft_ms=4e6, tokens_out=7),
            ],
        )
    assert total(s, "inferwatch_events_total") == 3
    assert total(s, "inferwatch_request_latency_seconds_sum") == 0.05
    assert total(s, "inferwatch_request_latency_seconds_count") == 2
    assert total(s, "inferwatch_llm_input_tokens_total") == 10
    assert total(s, "inferwatch_llm_output_tokens_total") == 12
    assert total(s, "inferwatch_llm_time_to_first_token_seconds_count") == 0
    assert total(s, "inferwatch_values_out_of_range_total", field="latency_ms") == 1
    assert total(s, "inferwatch_values_out_of_range_total", field="tokens_in") == 1
    assert total(s, "inferwatch_values_out_of_range_total", field="ttft_ms") == 1
    assert total(s, "inferwatch_values_out_of_range_total", field="tokens_out") == 0
    assert total(s, "inferwatch_events_invalid_total") == 0
    lines = [line for line in logs if line["event"] == "value_out_of_range"]
    assert {line["field"] for line in lines} == {"latency_ms", "tokens_in", "ttft_ms"}
    assert next(line for line in lines if line["field"] == "latency_ms")["offset"] == 1


def test_a_timestamp_far_from_the_record_time_is_replaced_by_it() -> None:
    s = _scrape(
        {"plausibility": {"max_timestamp_behind_s": 7 * 86_400}},
        [
            _record(0, timestamp=NOW - 10),
            _record(1, timestamp=1e15),  # would pin the freshness gauge for ever
            _record(2, timestamp=NOW - 30 * 86_400),  # a month behind its record
        ],
    )
    assert total(s, "inferwatch_last_event_timestamp_seconds") == NOW
    assert total(s, "inferwatch_values_out_of_range_total", field="timestamp") == 2


def test_without_record_times_1970_to_2100_is_plausible() -> None:
    records = [_record(0, None, timestamp=NOW), _record(1, None, timestamp=1e15), _record(2, None, timestamp=-5.0)]
    s = _scrape({}, records)
    assert total(s, "inferwatch_last_event_timestamp_seconds") == NOW
    assert total(s, "inferwatch_values_out_of_range_total", field="timestamp") == 2


def test_bounds_come_from_config() -> None:
    tree = {"plausibility": {"max_latency_ms": 100, "max_tokens": 5, "max_timestamp_ahead_s": 0}}
    s = _scrape(tree, [_record(0, latency_ms=150, tokens_out=6, timestamp=NOW + 1), _record(1, latency_ms=99)])
    assert total(s, "inferwatch_request_latency_seconds_count") == 1
    assert math.isclose(total(s, "inferwatch_request_latency_seconds_sum"), 0.099)
    assert total(s, "inferwatch_values_out_of_range_total") == 3


def test_now_is_plausible_by_default() -> None:
    now = time.time()
    s = _scrape({}, [_record(0, now, timestamp=now + 1, latency_ms=1_000_000, tokens_in=2_000_000)])
    assert total(s, "inferwatch_values_out_of_range_total") == 0


def test_old_logs_written_to_kafka_late_keep_their_time_by_default() -> None:
    s = _scrape({}, [_record(0, timestamp=NOW - 3 * 365 * 86_400)])
    assert total(s, "inferwatch_last_event_timestamp_seconds") == NOW - 3 * 365 * 86_400
    assert total(s, "inferwatch_values_out_of_range_total") == 0
