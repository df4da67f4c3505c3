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
from itertools import repeat
from operator import attrgetter, itemgetter
from typing import Any

import msgspec

from daemon.ingest.failures import Bad
from daemon.ingest.formats import tensors
from daemon.ingest.formats.pairs import Half, PairedFormat
from daemon.ingest.formats.tensors import Tensor
from daemon.ingest.sources import Chunk, Headers

REQUEST, RESPONSE = "org.kubeflow.serving.inference.request", "org.kubeflow.serving.inference.response"
_HEADERS = ("ce_id", "ce_type", "ce_time", "ce_inferenceservicename", "ce_namespace", "ce_endpoint")
_MISSING = (b"",) * len(_HEADERS)
_TZINFO = attrgetter("tzinfo")
_HEADER_VALUES = itemgetter(*_HEADERS)
_ATTRIBUTES = attrgetter("id", "type", "time", "inferenceservicename", "namespace", "endpoint")


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

    def read(self, chunk: Chunk, idx: Sequence[int]) -> list[Half]:
        values, headers = chunk.values, chunk.headers
        if not isinstance(idx, range):
            values, headers = [values[i] for i in idx], None if headers is None else [headers[i] for i in idx]
        if not values:
            return []
        columns = None if headers is None else _binary(headers)
        if columns is not None:  # all in binary mode, every attribute there: in C passes
            bodies: list[Body | None] = list(map(self._body.decode, values))  # type: ignore[arg-type]
        else:
            evs = list(map(self._event, values, repeat(None) if headers is None else headers))  # type: ignore[arg-type]
            columns = list(map(list, zip(*map(_ATTRIBUTES, evs), strict=True)))
            bodies = [ev.data for ev in evs]
        ids, types, times, services, namespaces, endpoints = columns
        out: list[Half] = []
        rows = zip(ids, types, services, namespaces, endpoints, _times(times), bodies, strict=True)
        for id_, type_, service, namespace, endpoint, at, body in rows:
            if not id_ or not type_ or not service:
                name = "id" if not id_ else "type" if not type_ else "inferenceservicename"
                raise Bad("missing_field", f"CloudEvent attribute {name} (ce_{name} in binary mode) not in the record")
            if type_ == REQUEST:
                features = self._features(body)
                if type(at) is Bad:
                    raise at
                model = f"{namespace}/{service}" if namespace else service
                out.append((id_, True, (model, endpoint, at, features)))
            elif type_ == RESPONSE:
                predictions = _predictions(body)
                if type(at) is Bad:
                    raise at
                out.append((id_, False, (None if body is None else body.model_version, at, predictions)))
            else:
                raise Bad("wrong_type", f"CloudEvent type {type_!r} is neither {REQUEST} nor {RESPONSE}")
        return out

    def _event(self, value: bytes, headers: Headers | None) -> Event:
        """A record's CloudEvent, from its headers and value (binary mode) or its value alone."""
        h = dict(headers) if headers else None
        if h is not None and h.get("ce_type") is not None:  # binary mode: attributes in headers
            values = map(h.get, _HEADERS, _MISSING)  # b"" where a header is missing
            try:
                id_, type_, at, service, namespace, endpoint = map(bytes.decode, values)  # type: ignore[arg-type]
            except TypeError:
                raise Bad("wrong_type", "a ce_* header without a value") from None
            return Event(id_, type_, at, service, namespace, endpoint, self._body.decode(value))
        try:  # structured mode: one envelope
            return self._envelope.decode(value)
        except msgspec.ValidationError as e:
            if str(e).startswith("Expected `object | null`") and str(e).endswith("at `$.data`"):
                raise Bad("not_an_object", "the CloudEvent's data is not a JSON object") from None
            raise

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


def _predictions(body: Body | None) -> list[Any]:
    if body is None:
        raise Bad("not_an_object", "the response has no data")
    if body.predictions is not None:
        return body.predictions
    if body.outputs is not None:
        return tensors.predictions(body.outputs)
    raise Bad("missing_field", "the response has neither predictions (V1) nor outputs (V2)")


def _binary(headers: Sequence[Headers | None]) -> list[list[Any]] | None:
    """The attributes of records all in binary mode with every ce_* header there, as columns (ids,
    types, times, ...); None when one is not so (then each record's is read on its own)."""
    try:
        rows = map(_HEADER_VALUES, map(dict, headers))  # type: ignore[arg-type]
        return [list(map(bytes.decode, column)) for column in zip(*rows, strict=True)]
    except (KeyError, TypeError):  # one without a header, or without a value
        return None


def _times(texts: Sequence[str | None]) -> list[float | Bad | None]:
    """CloudEvents' `time`s in Unix seconds (Bad for one that is not RFC 3339, raised once the rest
    of its record is read): in C passes when all are there and have an offset, else one by one."""
    if all(texts):
        try:
            at = list(map(dt.datetime.fromisoformat, texts))  # type: ignore[arg-type]
        except ValueError:
            pass
        else:
            if None not in map(_TZINFO, at):
                return list(map(dt.datetime.timestamp, at))
    return list(map(_time, texts))


def _time(text: str | None) -> float | Bad | None:
    """A CloudEvent's `time` (RFC 3339) in Unix seconds; one without an offset is UTC."""
    if not text:
        return None
    try:
        at = dt.datetime.fromisoformat(text)
    except ValueError:
        return Bad("wrong_type", f"CloudEvent time {text!r} is not RFC 3339")
    return (at if at.tzinfo is not None else at.replace(tzinfo=dt.UTC)).timestamp()
