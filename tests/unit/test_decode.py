from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.config import Config
from daemon.ingest.decode import REASONS, DecodeFailure, EventDecoder
from daemon.ingest.events import DEFAULT_VARIANT, DEFAULT_VERSION, InferenceEvent, event_time
from daemon.ingest.sources import RawRecord, chunks_of
from daemon.runtime.app import build_pipeline

decoder = EventDecoder(max_bytes=4096, type_=InferenceEvent)


def test_minimal_event_gets_defaults() -> None:
    ev = decoder.decode(b'{"request_id": "r1", "model": "m", "extra_field": [1, 2]}')
    assert isinstance(ev, InferenceEvent)
    assert (ev.model, ev.version, ev.variant, ev.status) == ("m", DEFAULT_VERSION, DEFAULT_VARIANT, "ok")


def test_full_event_round_trips_types() -> None:
    raw = {
        "request_id": "r1",
        "model": "m",
        "version": "3",
        "variant": "canary",
        "timestamp": "2026-01-01T00:00:01Z",
        "latency_ms": 12,
        "status": "error",
        "error_type": "timeout",
        "prediction": "cat",
        "probabilities": {"cat": 0.7, "dog": 0.3},
        "features": {"a": 1, "b": "x", "c": None, "d": True},
        "label": "dog",
        "ttft_ms": 5.5,
        "tokens_in": 10,
        "tokens_out": 20,
    }
    ev = decoder.decode(json.dumps(raw).encode())
    assert isinstance(ev, InferenceEvent)
    assert ev.latency_ms == 12.0 and ev.features == {"a": 1.0, "b": "x", "c": None, "d": True}
    assert event_time(ev.timestamp, None) == 1767225601.0


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b'{"request_id": "r", "model": ', "malformed_json"),
        (b"\xff\xfe\x00garbage", "malformed_json"),
        (b'{"request_id": "r", "model": "m", "latency_ms": NaN}', "malformed_json"),
        (b"[1, 2]", "not_an_object"),
        (b'"just a string"', "not_an_object"),
        (b'{"model": "m"}', "missing_field"),
        (b'{"request_id": "r", "model": 5}', "wrong_type"),
        (b'{"request_id": "r", "model": "m", "features": [1]}', "wrong_type"),
        (b'{"request_id": "r", "model": "m", "latency_ms": -1}', "out_of_range"),
        (b'{"request_id": "r", "model": "m", "latency_ms": 1e400}', "out_of_range"),
        (b'{"request_id": "r", "model": "m", "status": "maybe"}', "out_of_range"),
        (b'{"request_id": "r", "model": "' + b"x" * 129 + b'"}', "out_of_range"),
        (b'{"request_id": "r", "model": "' + b"x" * 5000 + b'"}', "oversize"),
        (b'{"request_id": "r", "model": "m", "tokens_in": 1' + b"0" * 400 + b"}", "out_of_range"),
        (None, "malformed_json"),
    ],
)
def test_failures_are_classified(value: bytes | None, reason: str) -> None:
    out = decoder.decode(value)
    assert isinstance(out, DecodeFailure)
    assert out.reason == reason
    assert out.reason in REASONS


def test_naive_timestamp_is_utc_and_missing_falls_back() -> None:
    ev = decoder.decode(b'{"request_id": "r", "model": "m", "timestamp": "2026-01-01T00:00:00"}')
    assert isinstance(ev, InferenceEvent)
    assert event_time(ev.timestamp, None) == 1767225600.0
    assert event_time(None, 42.0) == 42.0


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    assert isinstance(decoder.decode(data), InferenceEvent | DecodeFailure)


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
event_like = st.fixed_dictionaries(
    {"request_id": st.text(max_size=5), "model": st.text(max_size=5)},
    optional={
        k: json_values
        for k in ("version", "variant", "timestamp", "latency_ms", "status", "prediction", "score", "features")
    },
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200) | event_like.map(lambda d: json.dumps(d).encode()), max_size=30))
def test_pipeline_survives_any_batch_and_counts_every_record(values: list[bytes]) -> None:
    pipeline = build_pipeline(Config())
    records = [RawRecord("t", 0, i, 1.0, None, v) for i, v in enumerate(values)]
    offsets = pipeline.process(chunks_of(records))
    assert pipeline.events + pipeline.totals().invalid_records == len(values)
    if values:
        assert offsets == {("t", 0): len(values)}
