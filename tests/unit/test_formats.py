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
from daemon.dev.generator import TrafficGenerator, TrafficSpec
from daemon.export.exposition import LoopStats, MetricsExposition
from daemon.ingest.decode import ChunkDecoder, DecodeFailure
from daemon.ingest.events import InferenceEvent
from daemon.ingest.formats import build
from daemon.ingest.formats.cloudevents import CloudEventsFormat
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
        ({"type": "native", "fields": FIELDS}, "map the mapped and openai formats, not native"),
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


# -- cloudevents-inference ------------------------------------------------------------------


def classic_events(n: int = 300) -> list[dict[str, Any]]:
    """A classic model's requests (no errors: KServe's logger pairs answered requests)."""
    spec = TrafficSpec(models=(("fraud", ("control", "canary")),), rate=50, duration_s=n / 50, seed=8)
    return [e for e in TrafficGenerator(spec).events() if e["status"] == "ok"]


def ce_chunks(records: list[tuple[bytes, list[Any]]], binary: bool = True) -> list[Chunk]:
    values = [v for v, _ in records]
    return [
        Chunk("t", 0, list(range(len(values))), None, None, values, headers=[h for _, h in records] if binary else None)
    ]


@pytest.mark.parametrize(
    ("mode", "protocol"), [("binary", "v1"), ("binary", "v2"), ("structured", "v1"), ("structured", "v2")]
)
def test_kserve_pairs_decode_into_the_native_events(mode: str, protocol: str) -> None:
    evs = classic_events(40)
    records = [r for e in evs for r in fixtures.kserve(e, mode, protocol)]
    out = decoder(fixtures.CLOUDEVENTS).decode(ce_chunks(records))
    assert out.failures == []
    want = [msgspec.convert(fixtures.kserve_view(e, protocol), InferenceEvent) for e in evs]
    got = list(out.batch.events)
    assert [e.request_id for e in got] == [e.request_id for e in want]
    for g, w in zip(got, want, strict=True):
        assert msgspec.structs.replace(g, latency_ms=None) == msgspec.structs.replace(w, latency_ms=None)
        assert g.latency_ms == pytest.approx(w.latency_ms, abs=1e-6)
    assert list(out.batch.index) == [2 * i + 1 for i in range(len(evs))]  # the response completes each


def test_halves_join_in_either_order_across_polls() -> None:
    ev = classic_events(1)[0]
    request, response = fixtures.kserve(ev)
    d = decoder(fixtures.CLOUDEVENTS)
    first = d.decode(ce_chunks([response]))
    assert first.batch is None and first.failures == []
    (e,) = d.decode(ce_chunks([request])).batch.events
    assert e.request_id == ev["request_id"] and e.prediction == ev["prediction"]


def test_a_batched_request_becomes_one_event_per_row() -> None:
    attrs = {"id": "b1", "inferenceservicename": "iris", "namespace": "ml", "endpoint": "canary"}
    request = {
        "inputs": [
            {"name": "x", "shape": [3, 2], "datatype": "FP32", "data": [[1, 2], [3, 4], [5, 6]]},
            {"name": "country", "shape": [3], "datatype": "BYTES", "data": ["de", "fr", "de"]},
        ]
    }
    response = {
        "model_version": "7",
        "outputs": [{"name": "p", "shape": [3, 2], "datatype": "FP32", "data": [0.1, 0.9, 0.8, 0.2, 0.5, 0.5]}],
    }
    records = [
        _ce(attrs | {"type": fixtures.KSERVE_REQUEST}, request),
        _ce(attrs | {"type": fixtures.KSERVE_RESPONSE}, response),
    ]
    out = decoder(fixtures.CLOUDEVENTS | {"feature_names": ["length", "width"]}).decode(
        ce_chunks(records, binary=False)
    )
    assert out.failures == []
    events = out.batch.events
    assert [(e.request_id, e.model, e.variant, e.version) for e in events] == [
        (f"b1/{k}", "ml/iris", "canary", "7") for k in range(3)
    ]
    assert events[1].features == {"x_0": 3.0, "x_1": 4.0, "country": "fr"}  # two tensors: the names are the tensors'
    assert events[1].probabilities == {"0": 0.8, "1": 0.2}


def _ce(attrs: dict[str, Any], data: Any) -> tuple[bytes, list[Any]]:
    return json.dumps({"specversion": "1.0", **attrs, "data": data}).encode(), []


@pytest.mark.parametrize(
    ("request_data", "response_data", "reason"),
    [
        ({"instances": [[1, 2], [3, 4]]}, {"predictions": [1]}, "bad_shape"),  # 2 rows, 1 prediction
        (
            {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]}]},
            {"predictions": [1, 0]},
            "bad_shape",
        ),
        (
            {
                "inputs": [
                    {"name": "a", "shape": [2], "datatype": "FP32", "data": [1, 2]},
                    {"name": "b", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]},
                ]
            },
            {"predictions": [1, 0]},
            "bad_shape",
        ),
        ({"instances": [[1, 2]]}, {"outputs": [{"name": "p", "shape": "2", "data": [1]}]}, "wrong_type"),
        ({"rows": [[1, 2]]}, {"predictions": [1]}, "missing_field"),
        ({"instances": [[1, 2]]}, ["not", "an", "object"], "not_an_object"),
        ({"instances": [{"x": {"nested": 1}}]}, {"predictions": [1]}, "wrong_type"),
    ],
)
def test_malformed_pairs_are_counted_by_reason(request_data: Any, response_data: Any, reason: str) -> None:
    attrs = {"id": "r1", "inferenceservicename": "m"}
    good = fixtures.kserve(classic_events(1)[0], "structured")
    records = [
        *good[:1],
        _ce(attrs | {"type": fixtures.KSERVE_REQUEST}, request_data),
        _ce(attrs | {"type": fixtures.KSERVE_RESPONSE}, response_data),
        *good[1:],
    ]
    out = decoder(fixtures.CLOUDEVENTS).decode(ce_chunks(records, binary=False))
    assert len(out.batch.events) == 1  # the good pair around it
    assert [f.reason for _, f in out.failures] == [reason]


@pytest.mark.parametrize(
    ("value", "headers", "reason"),
    [
        (
            b"\x08\x96\x01garbage",
            [("ce_type", fixtures.KSERVE_REQUEST.encode()), ("ce_id", b"x"), ("ce_inferenceservicename", b"m")],
            "malformed_json",
        ),
        (
            b'{"instances": [[1]]}',
            [
                ("ce_type", b"org.kubeflow.serving.inference.outlier"),
                ("ce_id", b"x"),
                ("ce_inferenceservicename", b"m"),
            ],
            "wrong_type",
        ),
        (
            b'{"instances": [[1]]}',
            [("ce_type", fixtures.KSERVE_REQUEST.encode()), ("ce_inferenceservicename", b"m")],
            "missing_field",
        ),
        (b'{"specversion": "1.0", "type": "x"}', [], "missing_field"),
        (b"[1]", [], "not_an_object"),
        (
            b'{"instances": [[1]]}',
            [
                ("ce_type", fixtures.KSERVE_REQUEST.encode()),
                ("ce_id", b"x"),
                ("ce_inferenceservicename", b"m"),
                ("ce_time", b"yesterday"),
            ],
            "wrong_type",
        ),
    ],
)
def test_a_bad_half_is_counted_by_reason(value: bytes, headers: list[Any], reason: str) -> None:
    out = decoder(fixtures.CLOUDEVENTS).decode(ce_chunks([(value, headers)]))
    assert out.batch is None or reason == "wrong_type"
    assert [f.reason for _, f in out.failures] == [reason]


def test_halves_without_their_pair_are_counted_and_never_held_without_bound() -> None:
    now = [0.0]
    d = decoder(fixtures.CLOUDEVENTS | {"join_ttl_seconds": 10, "join_max_pending": 100})
    fmt = d.default_format
    assert isinstance(fmt, CloudEventsFormat)
    fmt.clock = lambda: now[0]
    evs = classic_events(300)
    requests = [fixtures.kserve(e)[0] for e in evs]
    out = d.decode(ce_chunks(requests))
    assert fmt.pending() == 100  # the oldest went when more waited
    assert len(out.failures) == len(evs) - 100 and {f.reason for _, f in out.failures} == {"unmatched"}
    assert out.failures[0][0].offset == 0  # the record itself: logged and dead-lettered as it came
    now[0] = 10.0
    later = d.decode(ce_chunks([fixtures.kserve(evs[-1])[1]]))  # the last one's response: still in time? no
    assert fmt.pending() == 1 and len(later.failures) == 100 and later.batch is None


@pytest.mark.parametrize(("protocol", "mode"), [("v1", "structured"), ("v2", "structured"), ("v1", "binary")])
def test_a_replay_of_kserve_events_gives_the_native_figures(tmp_path: Path, protocol: str, mode: str) -> None:
    """With --format: the same /metrics as the events. Structured mode from a plain file; binary
    mode from a records file (--records), whose lines carry each record's headers."""
    evs = classic_events(400)
    config = {"drift": {"enabled": False}}
    native = replay_state(
        _write(tmp_path / "native.jsonl", [msgspec.json.encode(fixtures.kserve_view(e, protocol)) for e in evs]),
        from_mapping(config),
    )
    records = [r for e in evs for r in fixtures.kserve(e, mode, protocol)]
    lines = [v for v, _ in records]
    if mode == "binary":
        lines = [fixtures.records_line("kserve", v, headers=h) for v, h in records]
    other = replay_state(
        _write(tmp_path / "ce.jsonl", lines),
        from_mapping({**config, "source": {"format": fixtures.CLOUDEVENTS}}),
        records=mode == "binary",
    )
    assert other[0]["invalid"] == 0 and other[0]["events"] == native[0]["events"] == len(evs)
    assert _samples(other[1], config) == _samples(native[1], config)


def test_a_bad_record_among_good_binary_pairs_is_the_only_one_counted() -> None:
    """A poll is read in one pass; a bad record in it sends the poll through again one record at a
    time: the bad one is counted with its own reason and offset, every pair around it decodes."""
    evs = classic_events(20)
    records = [r for e in evs for r in fixtures.kserve(e)]
    value, headers = records[11]  # a response, its time not RFC 3339
    records[11] = (value, [(k, b"yesterday" if k == "ce_time" else v) for k, v in headers])
    out = decoder(fixtures.CLOUDEVENTS).decode(ce_chunks(records))
    ((raw, failure),) = out.failures
    assert (raw.offset, failure.reason) == (11, "wrong_type") and "yesterday" in failure.detail
    assert [e.request_id for e in out.batch.events] == [e["request_id"] for k, e in enumerate(evs) if k != 5]


def test_a_half_that_waits_across_polls_keeps_its_own_record() -> None:
    """A half matched in its own poll makes no record; one still waiting when the poll ends keeps
    its own, and is dead-lettered as it came (its headers too) when it never finds its pair."""
    now = [0.0]
    d = decoder(fixtures.CLOUDEVENTS | {"join_ttl_seconds": 10})
    fmt = d.default_format
    assert isinstance(fmt, CloudEventsFormat)
    fmt.clock = lambda: now[0]
    evs = classic_events(3)
    pairs = [fixtures.kserve(e) for e in evs]
    first = [pairs[0][0], pairs[1][0], pairs[1][1]]  # the first request waits; the second pair is whole
    assert len(d.decode(ce_chunks(first)).batch.events) == 1 and fmt.pending() == 1
    now[0] = 10.0
    later = d.decode([Chunk("t", 0, [7, 8], None, None, [v for v, _ in pairs[2]], headers=[h for _, h in pairs[2]])])
    ((raw, failure),) = later.failures
    assert failure.reason == "unmatched" and (raw.offset, raw.value, raw.headers) == (0, *pairs[0][0])


def test_each_event_of_a_batch_takes_the_offset_of_the_record_that_completed_its_pair() -> None:
    """An empty batch makes no event, a batch of two makes two: both at the second pair's response."""
    attrs = {"inferenceservicename": "m"}
    records = [
        _ce(attrs | {"id": "empty", "type": fixtures.KSERVE_REQUEST}, {"instances": []}),
        _ce(attrs | {"id": "empty", "type": fixtures.KSERVE_RESPONSE}, {"predictions": []}),
        _ce(attrs | {"id": "two", "type": fixtures.KSERVE_REQUEST}, {"instances": [[1], [2]]}),
        _ce(attrs | {"id": "two", "type": fixtures.KSERVE_RESPONSE}, {"predictions": [0, 1]}),
    ]
    out = decoder(fixtures.CLOUDEVENTS).decode(ce_chunks(records, binary=False))
    assert out.failures == [] and [e.request_id for e in out.batch.events] == ["two/0", "two/1"]
    assert list(out.batch.index) == [3, 3]
