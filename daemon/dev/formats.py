"""Native events as other stacks log them, for the format tests and bench/formats.py.

Each converter writes what the format's public definition says a record holds, so that a
decoder that reads it back into the same events is right about the format, not about itself:

- `openai`: a chat completion object (OpenAI API reference, "The chat completion object":
  id, object, created, model, choices[].message / finish_reason, usage), with vLLM's per-request
  `metrics` block for LLM requests; the variant and version ride in Kafka headers, as a gateway
  would set them; an error becomes an OpenAI error object.
- `mapped`: a made-up JSON shape with nesting, list indices, seconds for times and RFC 3339
  timestamps, read back by `MAPPED` (the config a user would write for it).
- `kserve`: KServe's inference logger CloudEvents (binary and structured mode, V1 and V2).
- `seldon`: Seldon Core 2's Open Inference Protocol protobuf messages on a model's topics.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import struct
from typing import Any, NamedTuple

from daemon.dev.generator import TrafficGenerator, TrafficSpec, parse_change

# The mapping config that reads `mapped()` records back (config source.format).
MAPPED: dict[str, Any] = {
    "type": "mapped",
    "fields": {
        "request_id": "meta.trace.id",
        "model": "meta.model.name",
        "version": ["meta.model.version", {"const": "unknown"}],
        "variant": {"header": "x-variant"},
        "timestamp": "meta.at",
        "latency_ms": {"path": "timing.total_s", "unit": "s"},
        "ttft_ms": {"path": "timing.first_us", "unit": "us"},
        "decode_ms": {"path": "timing.decode_ns", "unit": "ns"},
        "status": "outcome.status",
        "error_type": "outcome.error",
        "prediction": "result.outputs[0].label",
        "score": "result.outputs[0].score",
        "tokens_in": "llm.usage[0]",
        "tokens_out": "llm.usage[1]",
        "finish_reason": "llm.stop",
    },
    "features": "request.inputs",
}
# The openai config for `openai()` records: the variant and version from headers.
OPENAI: dict[str, Any] = {
    "type": "openai",
    "fields": {"variant": {"header": "x-variant"}, "version": {"header": "x-model-version"}},
}


def llm_events(n: int, seed: int = 4, rate: float = 50.0) -> list[dict[str, Any]]:
    """`n` LLM requests of a control and a canary (5% errors), with their decode time: what every
    format here can carry."""
    spec = TrafficSpec(
        models=(("chat-llm", ("control", "canary")),),
        llm_models=("chat-llm",),
        rate=rate,
        duration_s=n / rate,
        seed=seed,
        start_time=1_764_583_200.0,
        changes=(parse_change("after=0 model=chat-llm error_rate=0.05"),),
    )
    return [e | {"decode_ms": round(e["latency_ms"] - e["ttft_ms"], 3)} for e in TrafficGenerator(spec).events()]


def _timestamp(ev: dict[str, Any]) -> float:
    return float(ev["timestamp"])


def mapped(ev: dict[str, Any]) -> tuple[bytes, list[tuple[str, bytes]]]:
    """A native event as the `MAPPED` shape: (value, headers)."""
    at = dt.datetime.fromtimestamp(_timestamp(ev), dt.UTC).isoformat(timespec="microseconds")
    out: dict[str, Any] = {
        "meta": {"trace": {"id": ev["request_id"]}, "model": {"name": ev["model"]}, "at": at},
        "timing": {},
        "outcome": {"status": ev.get("status", "ok")},
        "request": {"inputs": ev.get("features")},
        "noise": [{"deep": list(range(5))}, "x"],  # what the mapping does not read
    }
    if "version" in ev:
        out["meta"]["model"]["version"] = ev["version"]
    if "latency_ms" in ev:
        out["timing"]["total_s"] = ev["latency_ms"] / 1e3
    if "ttft_ms" in ev:
        out["timing"]["first_us"] = ev["ttft_ms"] * 1e3
    if "decode_ms" in ev:
        out["timing"]["decode_ns"] = ev["decode_ms"] * 1e6
    if ev.get("error_type"):
        out["outcome"]["error"] = ev["error_type"]
    if "prediction" in ev:
        out["result"] = {"outputs": [{"label": ev["prediction"], "score": ev.get("score")}]}
    if "tokens_out" in ev:
        out["llm"] = {"usage": [ev["tokens_in"], ev["tokens_out"]], "stop": ev.get("finish_reason")}
    return json.dumps(out).encode(), [("x-variant", ev.get("variant", "default").encode())]


def openai_view(ev: dict[str, Any]) -> dict[str, Any]:
    """The native event that `openai(ev)` stands for: whole-second time, no features; its generation
    time is its latency after the first token; an error has no timing."""
    if ev.get("status") == "error":
        keep = ("request_id", "model", "version", "variant", "status", "error_type")
        return {k: ev[k] for k in keep if k in ev} | {"timestamp": int(_timestamp(ev))}
    out = {k: v for k, v in ev.items() if k != "features"} | {"timestamp": int(_timestamp(ev))}
    return out | {"decode_ms": ev["latency_ms"] - ev["ttft_ms"]}


def openai(ev: dict[str, Any]) -> tuple[bytes, list[tuple[str, bytes]]]:
    """A native LLM event as an OpenAI chat completion (or error) with vLLM's metrics: (value,
    headers). Its latency is TTFT + generation time, which the format derives back."""
    headers = [("x-variant", ev.get("variant", "default").encode()), ("x-model-version", ev["version"].encode())]
    if ev.get("status") == "error":
        body: dict[str, Any] = {
            "id": ev["request_id"],
            "model": ev["model"],
            "created": int(_timestamp(ev)),
            "error": {"message": "the model failed", "type": ev.get("error_type") or "server_error", "code": 500},
        }
        return json.dumps(body).encode(), headers
    tokens = ev["tokens_out"]
    ttft, latency = ev["ttft_ms"], ev["latency_ms"]
    generation = latency - ttft
    body = {
        "id": ev["request_id"],
        "object": "chat.completion",
        "created": int(_timestamp(ev)),  # whole seconds, as the API has it
        "model": ev["model"],
        "system_fingerprint": "fp_inferwatch",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "ok " * min(tokens, 20)},
                "logprobs": None,
                "finish_reason": ev["finish_reason"],
            }
        ],
        "usage": {
            "prompt_tokens": ev["tokens_in"],
            "completion_tokens": tokens,
            "total_tokens": ev["tokens_in"] + tokens,
        },
        "metrics": {
            "time_to_first_token_ms": ttft,
            "mean_itl_ms": generation / (tokens - 1) if tokens > 1 else None,
            "queue_time_ms": ev.get("queue_ms"),
            "generation_time_ms": generation,
            "tokens_per_second": tokens / (latency / 1e3) if latency > 0 else None,
        },
    }
    return json.dumps(body).encode(), headers


# -- cloudevents-inference: KServe's inference logger ------------------------------------------

KSERVE_REQUEST = "org.kubeflow.serving.inference.request"
KSERVE_RESPONSE = "org.kubeflow.serving.inference.response"
CLOUDEVENTS: dict[str, Any] = {"type": "cloudevents-inference"}


def _rfc3339(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _pair_times(ev: dict[str, Any]) -> tuple[float, float]:
    """The request's and the response's times as the events carry them (to the microsecond)."""
    at = _timestamp(ev)
    parse = dt.datetime.fromisoformat
    t0 = parse(_rfc3339(at)).timestamp()
    return t0, parse(_rfc3339(at + ev.get("latency_ms", 0.0) / 1e3)).timestamp()


def kserve(
    ev: dict[str, Any], mode: str = "binary", protocol: str = "v1"
) -> list[tuple[bytes, list[tuple[str, bytes]]]]:
    """A native event (one row) as KServe's logger writes it to Kafka: its request and its response
    CloudEvents (KServe docs, "Inference Logger": type, id, time, source, and the extensions
    inferenceservicename, namespace, component, endpoint), binary mode (attributes in ce_*
    headers) or structured (an application/cloudevents+json envelope), V1 or V2 bodies."""
    t0, t1 = _pair_times(ev)
    feats = {k: v for k, v in (ev.get("features") or {}).items() if v is not None}
    if protocol == "v1":
        request: dict[str, Any] = {"instances": [feats]}
        response: dict[str, Any] = {"predictions": [ev["prediction"]]}
    else:
        kinds = {bool: "BOOL", str: "BYTES", int: "INT64", float: "FP64"}
        request = {
            "inputs": [{"name": k, "shape": [1], "datatype": kinds[type(v)], "data": [v]} for k, v in feats.items()]
        }
        response = {
            "model_name": ev["model"],
            "model_version": ev["version"],
            "outputs": [{"name": "predict", "shape": [1], "datatype": "INT64", "data": [ev["prediction"]]}],
        }
    out = []
    for kind, body, t in ((KSERVE_REQUEST, request, t0), (KSERVE_RESPONSE, response, t1)):
        attrs = {
            "specversion": "1.0",
            "id": ev["request_id"],
            "type": kind,
            "source": "http://localhost:9081/",
            "time": _rfc3339(t),
            "inferenceservicename": ev["model"],
            "namespace": "default",
            "component": "predictor",
            "endpoint": ev.get("variant", "default"),
        }
        if mode == "binary":
            headers = [(f"ce_{k}", v.encode()) for k, v in attrs.items()] + [("content-type", b"application/json")]
            out.append((json.dumps(body).encode(), headers))
        else:
            envelope = {**attrs, "datacontenttype": "application/json", "data": body}
            out.append((json.dumps(envelope).encode(), [("content-type", b"application/cloudevents+json")]))
    return out


def kserve_view(ev: dict[str, Any], protocol: str = "v1") -> dict[str, Any]:
    """The native event that `kserve(ev)` stands for: model namespace/name, the endpoint as the
    variant, times to the microsecond, the prediction without its score (V1 has no version)."""
    t0, t1 = _pair_times(ev)
    out = {k: v for k, v in ev.items() if k not in ("score", "status", "error_type", "version")}
    out |= {"model": f"default/{ev['model']}", "timestamp": t0, "latency_ms": round((t1 - t0) * 1000.0, 3)}
    out["features"] = {k: v for k, v in (ev.get("features") or {}).items() if v is not None}
    if protocol == "v2":
        out["version"] = ev["version"]
    return out


# -- seldon: Seldon Core 2's model topics -------------------------------------------------------

SELDON: dict[str, Any] = {"type": "seldon"}
# The subscription that takes every model's topics in namespace `default` (source.kafka.topics).
SELDON_TOPICS = r"^seldon\.default\.model\..+\.(inputs|outputs)$"


class SeldonRecord(NamedTuple):
    topic: str
    key: bytes
    value: bytes
    timestamp_ms: int


def _seldon_times(ev: dict[str, Any]) -> tuple[int, int]:
    """The request's and the response's Kafka timestamps: milliseconds, as Kafka keeps them."""
    at = round(_timestamp(ev) * 1000)
    return at, at + round(ev.get("latency_ms", 0.0))


def seldon(ev: dict[str, Any], raw: bool = False, namespace: str = "default") -> list[SeldonRecord]:
    """A native event (one row) as Seldon Core 2 writes it: a ModelInferRequest on the model's
    inputs topic and a ModelInferResponse on its outputs topic (oip.proto, the Open Inference
    Protocol's messages), both keyed by the request id, at the record times of `_seldon_times`.
    A tensor per feature, shape [1], values in its typed contents, or with `raw` little-endian in
    raw_input_contents (BYTES as a 4-byte length and the bytes)."""
    from daemon.ingest.formats import oip_pb2

    t0, t1 = _seldon_times(ev)
    feats = {k: v for k, v in (ev.get("features") or {}).items() if v is not None}
    kinds = {
        bool: ("BOOL", "bool_contents", "<?"),
        int: ("INT64", "int64_contents", "<q"),
        float: ("FP64", "fp64_contents", "<d"),
        str: ("BYTES", "bytes_contents", None),
    }
    request = oip_pb2.ModelInferRequest(model_name=ev["model"], id=ev["request_id"])
    for name, v in feats.items():
        datatype, field, code = kinds[type(v)]
        t = request.inputs.add(name=name, datatype=datatype, shape=[1])
        value = v.encode() if isinstance(v, str) else v
        if not raw:
            getattr(t.contents, field).append(value)
        else:
            request.raw_input_contents.append(
                struct.pack("<I", len(value)) + value if code is None else struct.pack(code, value)
            )
    response = oip_pb2.ModelInferResponse(model_name=ev["model"], model_version=ev["version"], id=ev["request_id"])
    out = response.outputs.add(name="predict", datatype="INT64", shape=[1])
    out.contents.int64_contents.append(int(ev["prediction"]))
    prefix = f"seldon.{namespace}.model.{ev['model']}"
    key = ev["request_id"].encode()
    return [
        SeldonRecord(f"{prefix}.inputs", key, request.SerializeToString(), t0),
        SeldonRecord(f"{prefix}.outputs", key, response.SerializeToString(), t1),
    ]


def seldon_view(ev: dict[str, Any], namespace: str = "default") -> dict[str, Any]:
    """The native event that `seldon(ev)` stands for: model namespace/name, times to the
    millisecond (Kafka's), the prediction without its score, no variant (Seldon's topics have none)."""
    t0, t1 = _seldon_times(ev)
    out = {k: v for k, v in ev.items() if k not in ("score", "status", "error_type", "variant")}
    out |= {"model": f"{namespace}/{ev['model']}", "timestamp": t0 / 1000, "latency_ms": float(t1 - t0)}
    out["features"] = {k: v for k, v in (ev.get("features") or {}).items() if v is not None}
    return out


def records_line(
    topic: str,
    value: bytes,
    key: bytes | None = None,
    timestamp_ms: float | None = None,
    headers: list[tuple[str, bytes]] | None = None,
) -> bytes:
    """A record as a line of a records file (`replay --records`, daemon.ingest.sources.RecordLine)."""
    line: dict[str, Any] = {"topic": topic, "value": base64.b64encode(value).decode(), "timestamp_ms": timestamp_ms}
    if key is not None:
        line["key"] = key.decode()
    if headers:
        line["headers"] = [[k, v.decode()] for k, v in headers]
    return json.dumps(line).encode()
