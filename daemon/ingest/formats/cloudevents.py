"""`cloudevents-inference`: KServe's inference logger events, request and response joined by id.

KServe's logger sends each inference as two CloudEvents with the same `id`: one of type
`org.kubeflow.serving.inference.request` carrying the request body, one of type
`...inference.response` carrying the response body, with the extensions `inferenceservicename`,
`namespace`, `component` and `endpoint` (`default`, or `canary` during a KServe canary rollout).
On Kafka they come in binary mode (attributes in `ce_*` headers, the body as the value) or in
structured mode (one JSON envelope with `data`). Both are read.

The halves are joined by id per partition (daemon/ingest/formats/pairs.py). Bodies in either
protocol:

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
from collections.abc import Sequence
from typing import Annotated, Any

import msgspec

from daemon.ingest.events import InferenceEvent
from daemon.ingest.formats.pairs import Bad, Half, PairedFormat
from daemon.ingest.sources import Headers

REQUEST, RESPONSE = "org.kubeflow.serving.inference.request", "org.kubeflow.serving.inference.response"
_HEADERS = ("ce_id", "ce_type", "ce_time", "ce_inferenceservicename", "ce_namespace", "ce_endpoint")
_MISSING = (b"",) * len(_HEADERS)


class Tensor(msgspec.Struct):
    """An Open Inference Protocol V2 tensor (data flat in row-major order, or nested)."""

    shape: list[Annotated[int, msgspec.Meta(ge=0)]]
    data: list[Any]
    name: str = "input"
    datatype: str | None = None


class Body(msgspec.Struct):
    """A request's or a response's data, V1 or V2: what is read of it."""

    instances: list[Any] | None = None
    inputs: list[Tensor] | None = None
    predictions: list[Any] | None = None
    outputs: list[Tensor] | None = None
    model_version: str | None = None


class Event(msgspec.Struct):
    """A CloudEvent: the attributes read, and the data (a structured-mode envelope as it comes)."""

    id: str | None = None
    type: str | None = None
    time: str | None = None
    inferenceservicename: str | None = None
    namespace: str | None = None
    endpoint: str | None = None
    data: Body | None = None


class CloudEventsFormat(PairedFormat):
    def __init__(self, feature_names: Sequence[str] | None = None, **join: Any) -> None:
        super().__init__(**join)
        self.feature_names = list(feature_names) if feature_names else None
        self._body = msgspec.json.Decoder(Body)
        self._envelope = msgspec.json.Decoder(Event)

    def read(self, value: bytes, headers: Headers | None, topic: str) -> Half:
        h = dict(headers) if headers else None
        if h is not None and h.get("ce_type") is not None:  # binary mode: attributes in headers
            values = map(h.get, _HEADERS, _MISSING)  # b"" where a header is missing
            try:
                id_, type_, at, service, namespace, endpoint = map(bytes.decode, values)  # type: ignore[arg-type]
            except TypeError:
                raise Bad("wrong_type", "a ce_* header without a value") from None
            ev = Event(id_, type_, at, service, namespace, endpoint, self._body.decode(value))
        else:  # structured mode: one envelope
            try:
                ev = self._envelope.decode(value)
            except msgspec.ValidationError as e:
                if str(e).startswith("Expected `object | null`") and str(e).endswith("at `$.data`"):
                    raise Bad("not_an_object", "the CloudEvent's data is not a JSON object") from None
                raise
        if not ev.id or not ev.type or not ev.inferenceservicename:
            name = "id" if not ev.id else "type" if not ev.type else "inferenceservicename"
            raise Bad("missing_field", f"CloudEvent attribute {name} (ce_{name} in binary mode) not in the record")
        if ev.type == REQUEST:
            return Half(ev.id, True, (ev, self._features(ev.data), _time(ev.time)))
        if ev.type == RESPONSE:
            return Half(ev.id, False, (ev, _predictions(ev.data), _time(ev.time)))
        raise Bad("wrong_type", f"CloudEvent type {ev.type!r} is neither {REQUEST} nor {RESPONSE}")

    def _features(self, body: Body | None) -> list[Any]:
        if body is None:
            raise Bad("not_an_object", "the request has no data")
        rows = body.instances
        if rows is not None:
            if len(rows) == 1 and type(rows[0]) is dict:
                return rows
            return [self._row(r) for r in rows]
        if body.inputs is not None:
            return _tensor_rows(body.inputs, self.feature_names)
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

    def events(self, request: Half, response: Half) -> list[InferenceEvent]:
        (attrs, features, at), (answer, predictions, until) = request.body, response.body
        if len(features) != len(predictions):
            detail = f"{len(features)} request rows but {len(predictions)} predictions for id {request.id}"
            raise Bad("bad_shape", detail)
        namespace = attrs.namespace
        model = f"{namespace}/{attrs.inferenceservicename}" if namespace else attrs.inferenceservicename
        latency = None if at is None or until is None else max(0.0, (until - at) * 1000.0)
        fields: dict[str, Any] = {
            "request_id": request.id,
            "model": model,
            "variant": attrs.endpoint or "default",
            "timestamp": at,
            "latency_ms": latency,
        }
        version = answer.data.model_version
        if version:
            fields["version"] = version
        out = []
        for k, (row, pred) in enumerate(zip(features, predictions, strict=True)):
            one = {**fields, "features": row}
            if len(features) > 1:
                one["request_id"] = f"{request.id}/{k}"
            if isinstance(pred, list):
                one["probabilities"] = {str(c): p for c, p in enumerate(pred)}
            else:
                one["prediction"] = pred
            out.append(msgspec.convert(one, InferenceEvent))
        return out


def _predictions(body: Body | None) -> list[Any]:
    if body is None:
        raise Bad("not_an_object", "the response has no data")
    if body.predictions is not None:
        return body.predictions
    if body.outputs is not None:
        if not body.outputs:
            raise Bad("wrong_type", "outputs must be a non-empty list of tensors (V2)")
        n, per_row = _tensor(body.outputs[0])
        return per_row if n else []
    raise Bad("missing_field", "the response has neither predictions (V1) nor outputs (V2)")


def _tensor(t: Tensor) -> tuple[int, list[Any]]:
    """A V2 tensor's rows: (rows, per row its value or its list of values)."""
    shape = t.shape
    if not shape:
        raise Bad("wrong_type", f"tensor {t.name!r}: shape must be a list of sizes, got {shape!r}")
    flat = _flatten(t.data)
    width = math.prod(shape[1:])
    if len(flat) != shape[0] * width:
        raise Bad("bad_shape", f"tensor {t.name!r}: {len(flat)} values for shape {shape}")
    if len(shape) == 1:
        return shape[0], flat
    return shape[0], [flat[k * width : (k + 1) * width] for k in range(shape[0])]


def _flatten(data: list[Any]) -> list[Any]:
    if not data or not isinstance(data[0], list):
        return data
    out: list[Any] = []
    for x in data:
        if not isinstance(x, list):
            raise Bad("bad_shape", "tensor data nested unevenly")
        out.extend(_flatten(x))
    return out


def _tensor_rows(inputs: list[Tensor], names: list[str] | None) -> list[dict[str, Any]]:
    if not inputs:
        raise Bad("wrong_type", "inputs must be a non-empty list of tensors (V2)")
    tensors = []
    for t in inputs:
        n, per_row = _tensor(t)
        tensors.append((t.name, n, per_row))
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


def _time(text: str | None) -> float | None:
    """A CloudEvent's `time` (RFC 3339) in Unix seconds; one without an offset is UTC."""
    if not text:
        return None
    try:
        at = dt.datetime.fromisoformat(text)
    except ValueError:
        raise Bad("wrong_type", f"CloudEvent time {text!r} is not RFC 3339") from None
    return (at if at.tzinfo is not None else at.replace(tzinfo=dt.UTC)).timestamp()
