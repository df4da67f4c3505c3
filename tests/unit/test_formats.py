"""Log formats (issue 17): records of other shapes decode into the same events, bad ones are
counted by reason with the field and path named, and a bad mapping fails at start-up."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.config import ConfigError, from_mapping
from daemon.dev import formats as fixtures
from daemon.export.exposition import LoopStats, MetricsExposition
from daemon.ingest.decode import ChunkDecoder, DecodeFailure
from daemon.ingest.events import InferenceEvent
from daemon.ingest.formats import build
from daemon.ingest.formats.mapped import parse_path
from daemon.ingest.sources import Chunk
from daemon.runtime.replay import replay_state

FIELDS = {"request_id": "id", "model": "m"}


def decoder(fmt: dict[str, Any]) -> ChunkDecoder:
    config = from_mapping({"source": {"format": fmt}})
    return ChunkDecoder(config.limits.max_event_bytes, None, config.plausibility, config.source)


def decode(fmt: dict[str, Any], *records: bytes | None, headers: list[Any] | None = None) -> Any:
    chunk = Chunk("t", 0, list(range(len(records))), None, None, list(records), headers=headers)
    return decoder(fmt).decode([chunk])


def events(fmt: dict[str, Any], *records: bytes, headers: list[Any] | None = None) -> list[InferenceEvent]:
    out = decode(fmt, *records, headers=headers)
    assert out.failures == []
    return list(out.batch.events)


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("a", ("a",)),
        ("a.b", ("a", "b")),
        ("a[0]", ("a", 0)),
        ("a.b[2].c", ("a", "b", 2, "c")),
        ("a[0][1]", ("a", 0, 1)),
    ],
)
def test_paths_parse(text: str, path: tuple[Any, ...]) -> None:
    assert parse_path(text) == path


@pytest.mark.parametrize("text", ["", ".a", "a.", "a..b", "[0]", "a[x]", "a[0", "a]"])
def test_a_bad_path_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a path"):
        parse_path(text)


def test_mapped_reads_paths_indices_headers_constants_units_and_times() -> None:
    fmt = {
        "type": "mapped",
        "fields": {
            "request_id": "req.id",
            "model": ["model", {"header": "x-model"}],
            "version": {"const": "v7"},
            "variant": [{"header": "x-variant"}, {"const": "default"}],
            "timestamp": "at",
            "latency_ms": {"path": "t.s", "unit": "s"},
            "ttft_ms": {"path": "t.us", "unit": "us"},
            "tpot_ms": {"path": "t.ns", "unit": "ns"},
            "queue_ms": "t.ms",
            "prediction": "out[1].label",
        },
        "features": {"age": "in.age", "country": "in.where[0]"},
    }
    records = [
        b'{"req": {"id": "r1"}, "model": "m", "at": "2025-12-01T10:00:00.5Z", "t": {"s": 0.25, "us": 1500,'
        b' "ns": 2000000, "ms": 4}, "out": [{"label": "a"}, {"label": "b"}], "in": {"age": 41, "where": ["de"]}}',
        b'{"req": {"id": "r2"}, "at": 1764583200.25, "out": [], "in": {}}',
    ]
    headers = [[("x-variant", b"canary")], [("x-model", b"from-header"), ("other", None)]]
    a, b = events(fmt, *records, headers=headers)
    assert (a.request_id, a.model, a.version, a.variant) == ("r1", "m", "v7", "canary")
    assert (a.latency_ms, a.ttft_ms, a.tpot_ms, a.queue_ms) == (250.0, 1.5, 2.0, 4.0)
    assert a.prediction == "b" and a.features == {"age": 41.0, "country": "de"}
    assert a.timestamp is not None and not isinstance(a.timestamp, float)
    assert a.timestamp.timestamp() == 1764583200.5
    assert (b.model, b.variant, b.timestamp, b.prediction, b.features) == (
        "from-header",
        "default",
        1764583200.25,
        None,
        None,
    )


def test_epoch_timestamps_take_their_unit() -> None:
    fmt = {"type": "mapped", "fields": {**FIELDS, "timestamp": {"path": "ts", "unit": "ms"}}}
    (e,) = events(fmt, b'{"id": "r", "m": "m", "ts": 1764583200250}')
    assert e.timestamp == pytest.approx(1764583200.25)


def test_features_from_a_map_path() -> None:
    fmt = {"type": "mapped", "fields": FIELDS, "features": "payload.inputs"}
    (e,) = events(fmt, b'{"id": "r", "m": "m", "payload": {"inputs": {"a": 1, "b": "x", "c": null, "d": true}}}')
    assert e.features == {"a": 1.0, "b": "x", "c": None, "d": True}


@pytest.mark.parametrize(
    ("record", "reason", "detail"),
    [
        (b'{"m": "m"}', "missing_field", "request_id: path id not in the record"),
        (b'{"id": "r"}', "missing_field", "model: path m not in the record"),
        (b'{"id": "r", "m": "m", "lat": "slow"}', "wrong_type", "$.lat"),
        (b'{"id": "r", "m": "m", "lat": -1}', "out_of_range", "$.lat"),
        (b'{"id": 5, "m": "m"}', "wrong_type", "$.id"),
        (b'{"id": "r", "m": ""}', "out_of_range", "$.m"),
        (b"[1, 2]", "not_an_object", ""),
        (b"null", "not_an_object", ""),
        (b'{"id": "r", "m": ', "malformed_json", ""),
        (b"\xff\xfe", "malformed_json", ""),
        (None, "malformed_json", "tombstone"),
    ],
)
def test_bad_records_are_counted_by_reason_with_the_place_named(record: bytes | None, reason: str, detail: str) -> None:
    fmt = {"type": "mapped", "fields": {**FIELDS, "latency_ms": "lat"}}
    out = decode(fmt, b'{"id": "ok1", "m": "m"}', record, b'{"id": "ok2", "m": "m"}')
    assert [e.request_id for e in out.batch.events] == ["ok1", "ok2"]  # the good ones around it stay
    ((raw, failure),) = out.failures
    assert raw.offset == 1 and isinstance(failure, DecodeFailure)
    assert failure.reason == reason and detail in failure.detail


def test_an_oversize_record_is_counted() -> None:
    config = from_mapping(
        {"source": {"format": {"type": "mapped", "fields": FIELDS}}, "limits": {"max_event_bytes": 1024}}
    )
    d = ChunkDecoder(config.limits.max_event_bytes, None, config.plausibility, config.source)
    out = d.decode([Chunk("t", 0, [0], None, None, [b'{"id": "r", "m": "m", "x": "' + b"x" * 2000 + b'"}'])])
    assert out.batch is None and out.failures[0][1].reason == "oversize"


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        ({"type": "mapped", "fields": {"request_id": "id"}}, "fields.model: required"),
        ({"type": "mapped", "fields": {**FIELDS, "latncy_ms": "x"}}, "fields.latncy_ms: not a schema field"),
        ({"type": "mapped", "fields": {**FIELDS, "latency_ms": "a..b"}}, "fields.latency_ms: 'a..b' is not a path"),
        ({"type": "mapped", "fields": {**FIELDS, "model": {"path": "m", "header": "h"}}}, "fields.model: exactly one"),
        ({"type": "mapped", "fields": {**FIELDS, "score": {"path": "s", "unit": "ms"}}}, "score is not a time"),
        ({"type": "mapped", "fields": {**FIELDS, "latency_ms": {"path": "l", "unit": "h"}}}, "fields.latency_ms"),
        ({"type": "mapped", "fields": {**FIELDS, "version": {"const": ""}}}, "fields.version: constant ''"),
        ({"type": "mapped", "fields": {**FIELDS, "latency_ms": "a.b", "score": "a"}}, "both a value and goes on"),
        ({"type": "mapped", "fields": {**FIELDS, "latency_ms": "a[0]", "score": "a.b"}}, "both an object and a list"),
        ({"type": "mapped", "fields": FIELDS, "features": "x["}, "features: 'x[' is not a path"),
        ({"type": "native", "fields": FIELDS}, "set type: mapped"),
    ],
)
def test_a_bad_mapping_fails_at_start_up_naming_the_field(fmt: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=r"source\.format") as e:
        from_mapping({"source": {"format": fmt}})
    assert message in str(e.value)


def test_per_topic_formats_name_input_topics() -> None:
    with pytest.raises(ConfigError, match=r"formats names llm-logs, not among kafka\.topics"):
        from_mapping({"source": {"formats": {"llm-logs": {"type": "openai"}}}})
    config = from_mapping(
        {"source": {"kafka": {"topics": ["native", "llm-logs"]}, "formats": {"llm-logs": {"type": "openai"}}}}
    )
    assert config.source.format_of("native").type == "native" and config.source.format_of("llm-logs").type == "openai"
    with pytest.raises(ConfigError, match="repartition"):
        from_mapping({"source": {"kafka": {"repartition": True}, "format": {"type": "openai"}}})


def test_topics_decode_in_their_own_format() -> None:
    config = from_mapping(
        {"source": {"kafka": {"topics": ["native", "llm-logs"]}, "formats": {"llm-logs": {"type": "openai"}}}}
    )
    d = ChunkDecoder(config.limits.max_event_bytes, None, config.plausibility, config.source)
    out = d.decode(
        [
            Chunk("native", 0, [0], None, None, [b'{"request_id": "a", "model": "m"}']),
            Chunk("llm-logs", 0, [0], None, None, [b'{"id": "b", "model": "llm", "created": 1764583200}']),
        ]
    )
    assert [(e.request_id, e.model) for e in out.batch.events] == [("a", "m"), ("b", "llm")]


# -- openai ---------------------------------------------------------------------------------


def test_openai_reads_a_chat_completion_with_vllm_metrics() -> None:
    ev = fixtures.llm_events(1)[0]
    value, headers = fixtures.openai(ev)
    (e,) = events(fixtures.OPENAI, value, headers=[headers])
    body = json.loads(value)
    assert (e.request_id, e.model, e.variant, e.version) == (ev["request_id"], "chat-llm", ev["variant"], ev["version"])
    assert e.timestamp == body["created"]
    assert (e.tokens_in, e.tokens_out, e.finish_reason) == (ev["tokens_in"], ev["tokens_out"], ev["finish_reason"])
    assert e.ttft_ms == ev["ttft_ms"] and e.latency_ms == pytest.approx(ev["latency_ms"])
    assert e.tpot_ms == body["metrics"]["mean_itl_ms"] and e.decode_ms == body["metrics"]["generation_time_ms"]
    assert e.status == "ok" and e.queue_ms is None


def test_an_openai_error_object_is_an_error() -> None:
    ev = {**fixtures.llm_events(1)[0], "status": "error", "error_type": "timeout"}
    value, headers = fixtures.openai(ev)
    (e,) = events(fixtures.OPENAI, value, headers=[headers])
    assert (e.status, e.error_type, e.latency_ms) == ("error", "timeout", None)


def test_openai_fields_override_its_defaults() -> None:
    fmt = {"type": "openai", "fields": {"request_id": "x_request_id", "latency_ms": "duration_ms"}}
    (e,) = events(fmt, b'{"id": "chatcmpl-1", "x_request_id": "r9", "model": "m", "duration_ms": 12}')
    assert (e.request_id, e.latency_ms) == ("r9", 12.0)


# -- the same metrics as the native events ----------------------------------------------------


def _write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


@pytest.mark.parametrize("name", ["openai", "mapped"])
def test_a_replay_of_another_format_gives_the_native_figures(tmp_path: Path, name: str) -> None:
    """The same events, logged natively and in the format (variant and version in headers, which a
    file cannot carry: there, in the mapping as constants of one variant)."""
    evs = [e for e in fixtures.llm_events(400) if e["variant"] == "canary"]
    convert, fmt = (fixtures.openai, fixtures.OPENAI) if name == "openai" else (fixtures.mapped, fixtures.MAPPED)
    version = evs[0]["version"]
    fields = {**fmt["fields"], "variant": {"const": "canary"}, "version": {"const": version}}
    config = {"drift": {"enabled": False}, "canary": {"enabled": False}}
    logged = [fixtures.openai_view(e) if name == "openai" else e for e in evs]
    native = replay_state(
        _write(tmp_path / "native.jsonl", [msgspec.json.encode(e) for e in logged]), from_mapping(config)
    )
    other = replay_state(
        _write(tmp_path / f"{name}.jsonl", [convert(e)[0] for e in evs]),
        from_mapping({**config, "source": {"format": {**fmt, "fields": fields}}}),
    )
    assert other[0]["invalid"] == 0 and other[0]["events"] == native[0]["events"] == len(evs)
    assert _rounded(other[0]["summary"]) == _rounded(native[0]["summary"])
    assert _samples(other[1], config) == _samples(native[1], config)


def _samples(pipeline: Any, config: dict[str, Any]) -> dict[str, float]:
    """The pipeline's /metrics, rounded, without what depends on the machine."""
    text = MetricsExposition(pipeline, from_mapping(config).metrics, LoopStats.idle).render().decode()
    return {
        f"{s.name}{sorted(s.labels.items())}": float(f"{s.value:.9g}")
        for fam in text_string_to_metric_families(text)
        if fam.name not in ("inferwatch_build_info", "inferwatch_batch_duration_seconds")
        for s in fam.samples
    }


def _rounded(x: Any) -> Any:
    if isinstance(x, float):
        return float(f"{x:.9g}")
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    return x


def test_build_returns_no_format_for_native() -> None:
    assert build("native", {}, None) is None


def test_replay_takes_a_format_flag(tmp_path: Path) -> None:
    from daemon.cli import main

    evs = fixtures.llm_events(50)
    path = _write(tmp_path / "openai.jsonl", [fixtures.openai(e)[0] for e in evs] + [b'{"id": 1}'])
    report = tmp_path / "r.json"
    assert main(["replay", str(path), "--report", str(report), "--format", "openai"]) == 0
    out = json.loads(report.read_text())
    assert (out["events"], out["invalid_by_reason"]) == (50, {"wrong_type": 1})
    assert main(["replay", str(path), "--report", str(report)]) == 0  # native: none of it is an event
    assert json.loads(report.read_text())["events"] == 0
