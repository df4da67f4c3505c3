"""`cloudevents-inference`: KServe's inference logger events, request and response joined by id.

KServe's logger sends each inference as two CloudEvents with the same `id`: one of type
`org.kubeflow.serving.inference.request` carrying the request body, one of type
`...inference.response` carrying the response body, with the extensions `inferenceservicename`,
`namespace`, `component` and `endpoint` (`default`, or `canary` during a KServe canary rollout).
On Kafka they come in binary mode (attributes in `ce_*` headers, the body as the value) or in
structured mode (one JSON envelope with `data`). Both are read.

The halves are joined by id per partition, in bounded memory: a half waits at most `ttl_s` (and
at most `max_pending` wait per partition, the oldest out first); one that outlives that is
counted as `unmatched`, logged and dead-lettered like any bad record. Bodies in either protocol:

- V1: request `{"instances": [...]}`, response `{"predictions": [...]}`;
- Open Inference Protocol V2: request `{"inputs": [tensor, ...]}`, response `{"outputs": [...]}`,
  a tensor being `{"name", "shape", "datatype", "data"}` (data flat in row-major order, or nested).

A batch of N rows becomes N events (request ids `id/0` ... when N > 1). Features: a row that is
an object keeps its names; a list row is named `feature_names` (config) or f0, f1, ...; a V2
tensor of one value per row is named after the tensor, a wider one `name_0`, `name_1`, ...
Prediction: a number, string or bool per row is the prediction; a list of numbers per row is
class probabilities ("0", "1", ...). The model is `namespace/inferenceservicename`, the variant
the endpoint, the version the V2 response's `model_version`. The event's time is the request's
`time`, its latency the response's `time` minus it (the payloads carry none).
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import msgspec

from daemon.ingest.events import InferenceEvent
from daemon.ingest.failures import DecodeFailure, classify
from daemon.ingest.sources import Chunk, Headers, RawRecord

REQUEST, RESPONSE = "org.kubeflow.serving.inference.request", "org.kubeflow.serving.inference.response"
ATTRIBUTES = ("id", "type", "time", "inferenceservicename", "namespace", "endpoint")
HEADERS = {f"ce_{name}": name for name in ATTRIBUTES}  # binary mode: header -> attribute


class Bad(ValueError):
    """A half that cannot be read, or a pair whose halves disagree: (reason, detail)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class Half(NamedTuple):
    """One event of a pair, read: its attributes, its rows, and the record it came in."""

    attrs: dict[str, str]
    rows: list[Any]  # request: feature dicts; response: (prediction, probabilities) per row
    version: str | None  # a V2 response's model_version
    at: float | None  # its `time`
    record: RawRecord
    arrived: float


class Joined(NamedTuple):
    """What a chunk came to: events with the offset and record time of the record that completed
    each pair, and the failures (records of their own, and halves that never found their pair)."""

    events: list[InferenceEvent]
    offsets: list[int]
    times: list[float | None]
    failures: list[tuple[RawRecord, DecodeFailure]]


class CloudEventsFormat:
    def __init__(
        self,
        ttl_s: float = 60.0,
        max_pending: int = 10_000,
        feature_names: Sequence[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_pending = max_pending
        self.feature_names = list(feature_names) if feature_names else None
        self.clock = clock
        self._json = msgspec.json.Decoder()
        # Per (topic, partition): id -> the half waiting for its pair, oldest first.
        self._pending: dict[tuple[str, int], OrderedDict[str, Half]] = {}

    def pending(self) -> int:
        return sum(map(len, self._pending.values()))

    def decode_chunk(self, chunk: Chunk, max_bytes: int) -> Joined:
        out = Joined([], [], [], [])
        now = self.clock()
        store = self._pending.setdefault((chunk.topic, chunk.partition), OrderedDict())
        while store:  # what outlived its wait
            first = next(iter(store.values()))
            if now - first.arrived < self.ttl_s:
                break
            self._unmatched(store, out, "waited ttl")
        headers = chunk.headers
        for i, value in enumerate(chunk.values):
            record = chunk.record(i)
            try:
                if value is None:
                    raise Bad("malformed_json", "record has no value (tombstone)")
                if len(value) > max_bytes:
                    raise Bad("oversize", f"{len(value)} bytes > limits.max_event_bytes={max_bytes}")
                half = self._read(value, None if headers is None else headers[i], record, now)
                other = store.pop(half.attrs["id"], None)
                if other is None or other.attrs["type"] == half.attrs["type"]:
                    if other is not None:  # the same half twice: the newer one waits
                        why = f"a second {_kind(half)} for id {half.attrs['id']}"
                        out.failures.append((other.record, DecodeFailure("unmatched", why)))
                    store[half.attrs["id"]] = half
                    while len(store) > self.max_pending:
                        self._unmatched(store, out, f"over {self.max_pending} waiting")
                    continue
                request, response = (half, other) if half.attrs["type"] == REQUEST else (other, half)
                events = _events(request, response)
            except Bad as e:
                out.failures.append((record, DecodeFailure(e.reason, str(e)[:200])))
                continue
            except msgspec.ValidationError as e:
                out.failures.append((record, DecodeFailure(classify(e), str(e)[:200])))
                continue
            except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as e:
                out.failures.append((record, DecodeFailure("malformed_json", str(e)[:200])))
                continue
            out.events.extend(events)
            out.offsets.extend([record.offset] * len(events))
            out.times.extend([record.timestamp] * len(events))
        return out

    def _unmatched(self, store: OrderedDict[str, Half], out: Joined, why: str) -> None:
        _, half = store.popitem(last=False)
        detail = f"{_kind(half)} {half.attrs['id']} without its pair ({why})"
        out.failures.append((half.record, DecodeFailure("unmatched", detail)))

    def _read(self, value: bytes, headers: Headers | None, record: RawRecord, now: float) -> Half:
        ce = {}
        for key, v in headers or ():
            name = HEADERS.get(key)
            if name is not None and v is not None:
                ce[name] = v.decode("utf-8", "replace")
        if "type" in ce:  # binary mode: the attributes in headers, the body as the value
            body = self._json.decode(value)
        else:  # structured mode: one envelope
            envelope = self._json.decode(value)
            if not isinstance(envelope, dict):
                raise Bad("not_an_object", "a structured CloudEvent must be a JSON object")
            ce = {k: str(v) for k, v in envelope.items() if k in ATTRIBUTES and v is not None}
            body = envelope.get("data")
        for name in ("id", "type", "inferenceservicename"):
            if not ce.get(name):
                raise Bad("missing_field", f"CloudEvent attribute {name} (ce_{name} in binary mode) not in the record")
        if ce["type"] not in (REQUEST, RESPONSE):
            raise Bad("wrong_type", f"CloudEvent type {ce['type']!r} is neither {REQUEST} nor {RESPONSE}")
        if not isinstance(body, dict):
            raise Bad("not_an_object", f"the {ce['type'].rsplit('.', 1)[1]}'s data is not a JSON object")
        at = _time(ce.get("time"))
        if ce["type"] == REQUEST:
            return Half(ce, self._features(body), None, at, record, now)
        version = body.get("model_version")
        return Half(ce, _predictions(body), None if version is None else str(version), at, record, now)

    def _features(self, body: dict[str, Any]) -> list[Any]:
        if "instances" in body:
            rows = body["instances"]
            if not isinstance(rows, list):
                raise Bad("wrong_type", "instances must be a list (V1)")
            return [self._row(r) for r in rows]
        if "inputs" in body:
            return _tensor_rows(body["inputs"], self.feature_names)
        raise Bad("missing_field", "the request has neither instances (V1) nor inputs (V2)")

    def _row(self, row: Any) -> dict[str, Any]:
        if isinstance(row, dict):
            return row
        if isinstance(row, list):
            names = self.feature_names or [f"f{k}" for k in range(len(row))]
            if len(names) != len(row):
                raise Bad("bad_shape", f"a row of {len(row)} values for {len(names)} feature_names")
            return dict(zip(names, row, strict=True))
        return {"input": row}


def _kind(half: Half) -> str:
    return "request" if half.attrs["type"] == REQUEST else "response"


def _predictions(body: dict[str, Any]) -> list[Any]:
    if "predictions" in body:
        rows = body["predictions"]
        if not isinstance(rows, list):
            raise Bad("wrong_type", "predictions must be a list (V1)")
        return rows
    if "outputs" in body:
        outputs = body["outputs"]
        if not isinstance(outputs, list) or not outputs:
            raise Bad("wrong_type", "outputs must be a non-empty list of tensors (V2)")
        n, per_row = _tensor(outputs[0])
        return per_row if n else []
    raise Bad("missing_field", "the response has neither predictions (V1) nor outputs (V2)")


def _tensor(t: Any) -> tuple[int, list[Any]]:
    """A V2 tensor's rows: (rows, per row its value or its list of values)."""
    if not isinstance(t, dict) or "data" not in t or "shape" not in t:
        raise Bad("wrong_type", "a V2 tensor is an object with name, shape, datatype and data")
    shape, data = t["shape"], t["data"]
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise Bad("wrong_type", f"tensor {t.get('name')!r}: shape must be a list of sizes, got {shape!r}")
    flat = _flatten(data)
    width = math.prod(shape[1:])
    if len(flat) != shape[0] * width:
        raise Bad("bad_shape", f"tensor {t.get('name')!r}: {len(flat)} values for shape {shape}")
    if len(shape) == 1:
        return shape[0], flat
    return shape[0], [flat[k * width : (k + 1) * width] for k in range(shape[0])]


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        raise Bad("wrong_type", "tensor data must be a list")
    if not data or not isinstance(data[0], list):
        return data
    out: list[Any] = []
    for x in data:
        out.extend(_flatten(x))
    return out


def _tensor_rows(inputs: Any, names: list[str] | None) -> list[dict[str, Any]]:
    if not isinstance(inputs, list) or not inputs:
        raise Bad("wrong_type", "inputs must be a non-empty list of tensors (V2)")
    tensors = []
    for t in inputs:
        n, per_row = _tensor(t)
        tensors.append((str(t.get("name", "input")), n, per_row))
    sizes = {n for _, n, _ in tensors}
    if len(sizes) != 1:
        raise Bad("bad_shape", f"input tensors of different batch sizes: {sorted(sizes)}")
    (n,) = sizes
    rows: list[dict[str, Any]] = [{} for _ in range(n)]
    for name, _, per_row in tensors:
        for row, v in zip(rows, per_row, strict=True):
            if not isinstance(v, list):
                row[name] = v
                continue
            keys = names if names and len(tensors) == 1 and len(names) == len(v) else None
            keys = keys or [f"{name}_{k}" for k in range(len(v))]
            row.update(zip(keys, v, strict=True))
    return rows


def _events(request: Half, response: Half) -> list[InferenceEvent]:
    features, predictions = request.rows, response.rows
    if len(features) != len(predictions):
        detail = f"{len(features)} request rows but {len(predictions)} predictions for id {request.attrs['id']}"
        raise Bad("bad_shape", detail)
    attrs = request.attrs
    namespace = attrs.get("namespace")
    model = f"{namespace}/{attrs['inferenceservicename']}" if namespace else attrs["inferenceservicename"]
    at, until = request.at, response.at
    latency = None if at is None or until is None else max(0.0, (until - at) * 1000.0)
    rid = attrs["id"]
    out = []
    for k, (row, pred) in enumerate(zip(features, predictions, strict=True)):
        fields: dict[str, Any] = {
            "request_id": rid if len(features) == 1 else f"{rid}/{k}",
            "model": model,
            "variant": attrs.get("endpoint") or "default",
            "timestamp": at,
            "latency_ms": latency,
            "features": row,
        }
        if response.version:
            fields["version"] = response.version
        if isinstance(pred, list):
            fields["probabilities"] = {str(c): p for c, p in enumerate(pred)}
        else:
            fields["prediction"] = pred
        out.append(msgspec.convert(fields, InferenceEvent))
    return out


def _time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return msgspec.convert(text, dt.datetime).timestamp()
    except msgspec.ValidationError:
        raise Bad("wrong_type", f"CloudEvent time {text!r} is not RFC 3339") from None
