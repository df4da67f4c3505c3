"""The seldon format (issue 17): Seldon Core 2's Open Inference Protocol protobuf messages on a
model's inputs and outputs topics, joined by request id into the native events; bad records
counted by reason; topic patterns; records files for replay; the generated code in step with
the .proto."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from daemon.cli import main
from daemon.config import ConfigError, from_mapping
from daemon.dev import formats as fixtures
from daemon.ingest import topics
from daemon.ingest.decode import ChunkDecoder, Decoded
from daemon.ingest.events import InferenceEvent
from daemon.ingest.formats import oip_pb2
from daemon.ingest.formats.seldon import SeldonFormat
from daemon.ingest.sources import Chunk
from daemon.runtime.replay import replay_state
from tests.unit.test_formats import _samples, _write, classic_events

FORMATS = Path(__file__).parents[2] / "daemon" / "ingest" / "formats"


def decoder(**fmt: Any) -> ChunkDecoder:
    config = from_mapping({"source": {"format": fixtures.SELDON | fmt, "kafka": {"topics": [fixtures.SELDON_TOPICS]}}})
    return ChunkDecoder(config.limits.max_event_bytes, None, config.plausibility, config.source)


def chunks(records: list[fixtures.SeldonRecord]) -> list[Chunk]:
    """A chunk per record, as polls of several topics interleave them."""
    return [Chunk(r.topic, 0, [i], [r.timestamp_ms / 1000], [r.key], [r.value]) for i, r in enumerate(records)]


def test_the_generated_code_is_in_step_with_the_proto(tmp_path: Path) -> None:
    """`make proto` regenerates oip_pb2 from oip.proto; a .proto edited without it fails here."""
    protoc = [sys.executable, "-m", "grpc_tools.protoc", f"-I{FORMATS}", f"--python_out={tmp_path}"]
    subprocess.run([*protoc, f"--pyi_out={tmp_path}", str(FORMATS / "oip.proto")], check=True)
    for name in ("oip_pb2.py", "oip_pb2.pyi"):
        assert (tmp_path / name).read_text() == (FORMATS / name).read_text(), name


@pytest.mark.parametrize("raw", [False, True], ids=["typed contents", "raw contents"])
def test_seldon_pairs_decode_into_the_native_events(raw: bool) -> None:
    evs = classic_events(40)
    records = [r for e in evs for r in fixtures.seldon(e, raw)]
    out = decoder().decode(chunks(records))
    assert out.failures == []
    want = [msgspec.convert(fixtures.seldon_view(e), InferenceEvent) for e in evs]
    assert list(out.batch.events) == want


def test_halves_join_in_either_order_across_polls_and_partitions() -> None:
    ev = classic_events(1)[0]
    request, response = fixtures.seldon(ev)
    d = decoder()
    first = d.decode([Chunk(response.topic, 3, [7], [response.timestamp_ms / 1000], [response.key], [response.value])])
    assert first.batch is None and first.failures == []
    out = d.decode([Chunk(request.topic, 0, [2], [request.timestamp_ms / 1000], [request.key], [request.value])])
    (e,) = out.batch.events
    assert (e.request_id, e.prediction) == (ev["request_id"], ev["prediction"])
    assert e.latency_ms == fixtures.seldon_view(ev)["latency_ms"]


def _request(*inputs: dict[str, Any], raw: list[bytes] | None = None, rid: str = "") -> bytes:
    message = oip_pb2.ModelInferRequest(model_name="iris", id=rid)
    for t in inputs:
        message.inputs.add(**t)
    message.raw_input_contents.extend(raw or [])
    return message.SerializeToString()


def _response(*outputs: dict[str, Any], version: str = "", rid: str = "") -> bytes:
    message = oip_pb2.ModelInferResponse(model_name="iris", model_version=version, id=rid)
    for t in outputs:
        message.outputs.add(**t)
    return message.SerializeToString()


IN, OUT = "seldon.ml.model.iris.inputs", "seldon.ml.model.iris.outputs"


def _pair(request: bytes, response: bytes, key: bytes | None = b"r1", headers: Any = None, **fmt: Any) -> Decoded:
    return decoder(**fmt).decode(
        [
            Chunk(IN, 0, [0], [10.0], [key], [request], headers=[headers]),
            Chunk(OUT, 0, [0], [10.25], [key], [response], headers=[headers]),
        ]
    )


def test_a_batched_request_becomes_one_event_per_row() -> None:
    """Raw FP32 rows of two named values and a BYTES tensor; the output's rows are class scores."""
    x = {"name": "x", "datatype": "FP32", "shape": [3, 2]}
    country = {"name": "country", "datatype": "BYTES", "shape": [3]}
    raw_x = b"".join(v.to_bytes(4, "little") for v in (0x3F800000, 0x40000000, 0x40400000, 0x40800000, 0, 0))
    raw_country = b"".join(len(c).to_bytes(4, "little") + c for c in (b"de", b"fr", b"de"))
    scores = {"name": "p", "datatype": "FP64", "shape": [3, 2], "contents": {"fp64_contents": [0.1, 0.9, 0.8, 0.2]}}
    scores["contents"]["fp64_contents"] += [0.5, 0.5]  # type: ignore[index]
    request = _request(x, country, raw=[raw_x, raw_country])
    out = _pair(request, _response(scores, version="7"), feature_names=["a", "b"])
    assert out.failures == []
    events = out.batch.events
    assert [(e.request_id, e.model, e.version, e.latency_ms) for e in events] == [
        (f"r1/{k}", "ml/iris", "7", 250.0) for k in range(3)
    ]
    assert events[1].features == {"x_0": 3.0, "x_1": 4.0, "country": "fr"}  # two tensors: the names are the tensors'
    assert events[1].probabilities == {"0": 0.8, "1": 0.2}


def test_the_request_id_is_the_key_else_the_message_id_else_the_header() -> None:
    x = {"name": "x", "datatype": "INT64", "shape": [1], "contents": {"int64_contents": [4]}}
    p = {"name": "p", "datatype": "INT64", "shape": [1], "contents": {"int64_contents": [1]}}
    assert _pair(_request(x, rid="m1"), _response(p, rid="m1"), key=None).batch.events[0].request_id == "m1"
    by_header = _pair(_request(x), _response(p), key=None, headers=[("x-request-id", b"h1")])
    assert by_header.batch.events[0].request_id == "h1"
    failures = [f for _, f in _pair(_request(x), _response(p), key=None).failures]
    assert [f.reason for f in failures] == ["missing_field"] * 2 and "no request id" in failures[0].detail


GOOD_IN = {"name": "x", "datatype": "FP64", "shape": [2], "contents": {"fp64_contents": [1.0, 2.0]}}
GOOD_OUT = {"name": "p", "datatype": "INT64", "shape": [2], "contents": {"int64_contents": [0, 1]}}
ONE_ROW = {**GOOD_IN, "name": "y", "shape": [1], "contents": {"fp64_contents": [1]}}
THREE_ROWS = {**GOOD_OUT, "shape": [3], "contents": {"int64_contents": [0, 1, 1]}}
SEVEN_BYTES = {"name": "x", "datatype": "FP32", "shape": [2]}  # with 7 raw bytes: not whole FP32s


@pytest.mark.parametrize(
    ("request_value", "response_value", "reason"),
    [
        (b"\x08\x96\x01\xff\xff garbage", _response(GOOD_OUT), "malformed_protobuf"),
        (_request(GOOD_IN), b"\x0a\xff\xff\xff\xff\x0f", "malformed_protobuf"),
        (_request({**GOOD_IN, "shape": [3]}), _response(GOOD_OUT), "bad_shape"),  # 2 values for 3
        (_request(GOOD_IN, ONE_ROW), _response(GOOD_OUT), "bad_shape"),  # batch sizes disagree
        (_request(GOOD_IN), _response(THREE_ROWS), "bad_shape"),  # 2 rows, 3 predictions
        (_request(SEVEN_BYTES, raw=[b"\x00" * 7]), _response(GOOD_OUT), "bad_shape"),
        (_request(GOOD_IN, raw=[b"", b""]), _response(GOOD_OUT), "bad_shape"),  # 2 raw for 1 tensor
        (_request({**GOOD_IN, "datatype": "COMPLEX"}), _response(GOOD_OUT), "wrong_type"),
        (_request(), _response(GOOD_OUT), "missing_field"),
        (_request(GOOD_IN), _response(), "missing_field"),
    ],
)
def test_malformed_records_are_counted_by_reason(request_value: bytes, response_value: bytes, reason: str) -> None:
    out = _pair(request_value, response_value)
    assert [f.reason for _, f in out.failures] == [reason]
    assert out.batch is None


def test_good_pairs_around_a_bad_record_are_kept_and_a_topic_not_seldons_is_counted() -> None:
    evs = classic_events(3)
    records = [r for e in evs for r in fixtures.seldon(e)]
    bad = fixtures.SeldonRecord(records[0].topic, b"x", b"\xff\xff\xff", records[0].timestamp_ms)
    stray = Chunk("seldon.oops", 0, [0], [1.0], [b"y"], [records[0].value])
    out = decoder().decode([*chunks(records[:2]), *chunks([bad]), stray, *chunks(records[2:])])
    assert [e.request_id for e in out.batch.events] == [e["request_id"] for e in evs]
    assert sorted(f.reason for _, f in out.failures) == ["malformed_protobuf", "wrong_type"]


def test_halves_without_their_pair_are_counted_and_never_held_without_bound() -> None:
    now = [0.0]
    d = decoder(join_ttl_seconds=10, join_max_pending=50)
    fmt = d.default_format
    assert isinstance(fmt, SeldonFormat)
    fmt.clock = lambda: now[0]
    evs = classic_events(120)
    out = d.decode(chunks([fixtures.seldon(e)[0] for e in evs]))
    assert fmt.pending() == 50
    assert len(out.failures) == len(evs) - 50 and {f.reason for _, f in out.failures} == {"unmatched"}
    now[0] = 10.0
    later = d.decode(chunks([fixtures.seldon(evs[0])[1]]))  # its request went long ago: this one waits
    assert fmt.pending() == 1 and len(later.failures) == 50 and later.batch is None


def test_topic_patterns() -> None:
    entries = ["labels", fixtures.SELDON_TOPICS]
    assert topics.entry_of(entries, "seldon.default.model.iris.inputs") == fixtures.SELDON_TOPICS
    assert topics.entry_of(entries, "labels") == "labels"
    assert topics.entry_of(entries, "seldon.prod.model.iris.inputs") is None
    pattern = topics.one_pattern(entries)
    import re

    assert re.match(pattern, "labels") and re.match(pattern, "seldon.default.model.a.outputs")
    assert not re.match(pattern, "labelsx") and not re.match(pattern, "seldon.default.model.a.errors")
    with pytest.raises(ConfigError, match=r"topics.*regular expression"):
        from_mapping({"source": {"kafka": {"topics": ["^seldon.(unclosed"]}}})
    with pytest.raises(ConfigError, match="not a pattern"):
        from_mapping({"source": {"kafka": {"topics": ["^seldon.*"], "repartition": True}}})


def test_a_pattern_in_formats_gives_its_topics_their_format() -> None:
    config = from_mapping(
        {
            "source": {
                "kafka": {"topics": ["logs", fixtures.SELDON_TOPICS]},
                "formats": {fixtures.SELDON_TOPICS: fixtures.SELDON},
            }
        }
    )
    assert config.source.format_of("seldon.default.model.iris.outputs").type == "seldon"
    assert config.source.format_of("logs").type == "native"
    d = ChunkDecoder(1 << 20, None, config.plausibility, config.source)
    a, b = d.format_of("seldon.default.model.iris.inputs"), d.format_of("seldon.default.model.iris.outputs")
    assert isinstance(a, SeldonFormat) and a is b  # one join for the pair of topics
    assert d.format_of("logs") is None


def _records_file(path: Path, records: list[fixtures.SeldonRecord]) -> Path:
    return _write(path, [fixtures.records_line(r.topic, r.value, r.key, r.timestamp_ms) for r in records])


def test_a_replay_of_seldon_records_gives_the_native_figures(tmp_path: Path) -> None:
    evs = classic_events(400)
    config = {"drift": {"enabled": False}}
    native = replay_state(
        _write(tmp_path / "native.jsonl", [msgspec.json.encode(fixtures.seldon_view(e)) for e in evs]),
        from_mapping(config),
    )
    path = _records_file(tmp_path / "seldon.jsonl", [r for e in evs for r in fixtures.seldon(e)])
    with path.open("ab") as f:
        f.write(b"not a record\n")
    other = replay_state(path, from_mapping({**config, "source": {"format": fixtures.SELDON}}), records=True)
    assert other[0]["events"] == native[0]["events"] == len(evs)
    assert other[0]["invalid_by_reason"] == {"wrong_type": 1}  # the line that is no record

    def valid(samples: dict[str, float]) -> dict[str, float]:
        return {k: v for k, v in samples.items() if "invalid" not in k}

    assert valid(_samples(other[1], config)) == valid(_samples(native[1], config))


def test_replay_of_seldon_needs_a_records_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _records_file(tmp_path / "seldon.jsonl", fixtures.seldon(classic_events(1)[0]))
    report = tmp_path / "r.json"
    assert main(["replay", str(path), "--format", "seldon", "--report", str(report)]) == 2
    assert "--records" in capsys.readouterr().err and not report.exists()
    assert main(["replay", str(path), "--format", "seldon", "--records", "--report", str(report)]) == 0
    assert msgspec.json.decode(report.read_bytes())["events"] == 1


@pytest.mark.parametrize(
    ("topics", "labels", "cooperative"),
    [(["logs"], (), True), (["logs"], ("labels",), False), ([fixtures.SELDON_TOPICS], (), False)],
)
def test_a_pattern_subscription_rebalances_eagerly(
    monkeypatch: pytest.MonkeyPatch, topics: list[str], labels: tuple[str, ...], cooperative: bool
) -> None:
    """State is kept per partition number, so the topics a pattern stands for (a model's inputs
    and outputs) must move together: range, not cooperative-sticky, even as one entry."""
    from daemon.ingest import kafka
    from daemon.runtime.logs import SampledLog

    seen: dict[str, Any] = {}

    def client(config: Any, topics: Any, on_assigned: Any, on_revoked: Any, *, cooperative: bool) -> None:
        seen["cooperative"] = cooperative

    monkeypatch.setattr(kafka, "open_client", client)
    config = from_mapping({"source": {"kafka": {"topics": topics, "client": "confluent"}}}).source.kafka
    kafka.KafkaSource(config, {}, SampledLog(1.0), labels)
    assert seen == {"cooperative": cooperative}


def test_an_unexpected_error_in_a_format_is_counted_not_raised() -> None:
    """A key that is not bytes (no client gives one) fails inside read(): counted as internal,
    and the good pair beside it still decodes."""
    request, response = fixtures.seldon(classic_events(1)[0])
    odd = Chunk(request.topic, 0, [0, 1], [1.0, 1.0], [5, request.key], [request.value, request.value])
    out = decoder().decode([odd, *chunks([response])])
    assert [f.reason for _, f in out.failures] == ["internal"]
    assert len(out.batch.events) == 1


def test_a_tombstone_on_a_topic_not_seldons_is_counted_once() -> None:
    out = decoder().decode([Chunk("seldon.oops", 0, [0], [1.0], [b"y"], [None])])
    assert [f.reason for _, f in out.failures] == ["malformed_json"] and out.batch is None
