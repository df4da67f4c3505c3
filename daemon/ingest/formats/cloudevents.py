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
from collections.abc import Sequence
from typing import Any

import msgspec

from daemon.ingest.events import InferenceEvent
from daemon.ingest.formats import tensors
from daemon.ingest.formats.pairs import Bad, Half, PairedFormat, pair_events
from daemon.ingest.formats.tensors import Tensor
from daemon.ingest.sources import Chunk

REQUEST, RESPONSE = "org.kubeflow.serving.inference.request", "org.kubeflow.serving.inference.response"
_HEADERS = ("ce_id", "ce_type", "ce_time", "ce_inferenceservicename", "ce_namespace", "ce_endpoint")
_MISSING = (b"",) * len(_HEADERS)


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

    def read(self, chunk: Chunk, i: int) -> Half:
        value, headers = chunk.values[i], None if chunk.headers is None else chunk.headers[i]
        assert value is not None
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
            return tensors.rows([tensors.tensor(t) for t in body.inputs], self.feature_names)
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
        namespace = attrs.namespace
        model = f"{namespace}/{attrs.inferenceservicename}" if namespace else attrs.inferenceservicename
        version = answer.data.model_version if answer.data is not None else None
        return pair_events(request.id, model, attrs.endpoint, version, at, until, features, predictions)


def _predictions(body: Body | None) -> list[Any]:
    if body is None:
        raise Bad("not_an_object", "the response has no data")
    if body.predictions is not None:
        return body.predictions
    if body.outputs is not None:
        return tensors.predictions(body.outputs)
    raise Bad("missing_field", "the response has neither predictions (V1) nor outputs (V2)")


def _time(text: str | None) -> float | None:
    """A CloudEvent's `time` (RFC 3339) in Unix seconds; one without an offset is UTC."""
    if not text:
        return None
    try:
        at = dt.datetime.fromisoformat(text)
    except ValueError:
        raise Bad("wrong_type", f"CloudEvent time {text!r} is not RFC 3339") from None
    return (at if at.tzinfo is not None else at.replace(tzinfo=dt.UTC)).timestamp()
