"""`seldon`: Seldon Core 2's model topics, request and response joined by request id.

Seldon Core 2 writes each inference of model M in namespace N as two records: the request on
`<prefix>.N.model.M.inputs` and the response on `<prefix>.N.model.M.outputs` (prefix `seldon` by
default), both Open Inference Protocol V2 protobuf messages (`oip.proto`: ModelInferRequest,
ModelInferResponse), both keyed by the request id (the gateway copies the request's key onto
the response). Subscribe to them by pattern (a topic starting with `^` in `source.kafka.topics`).

- The request id is the record key; else the message's `id`; else the `x-request-id` header.
- The model is `N/M`, from the topic; the version the response's `model_version`.
- Features come from the request's named input tensors, values in their typed contents or in
  `raw_input_contents` (little-endian; BYTES as 4-byte length and bytes); a batch of N rows is
  N events (`daemon/ingest/formats/tensors.py`, as cloudevents-inference's V2 bodies).
- The prediction is the response's first output tensor per row (several values: class scores).
- The protobuf messages carry no time: the event's time is the request record's Kafka
  timestamp, its latency the response record's timestamp minus it (millisecond resolution, and
  it includes the gateway's queueing: the time the caller saw, not the model's alone).

The halves of one model join in one space (`daemon/ingest/formats/pairs.py`), whatever their
partitions: with several replicas of inferwatch, the model's two topics need the same partition
count (Seldon creates them so) for the range assignor to give a request and its response to one.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Hashable, Sequence
from operator import attrgetter
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from daemon.ingest.failures import Bad
from daemon.ingest.formats import oip_pb2, tensors
from daemon.ingest.formats.pairs import Half, PairedFormat
from daemon.ingest.sources import Chunk

# <prefix>.<namespace>.model.<model>.inputs|outputs; the prefix may hold dots, the namespace not.
TOPIC = re.compile(r"^(?:(?P<prefix>.+)\.)?(?P<namespace>[^.]+)\.model\.(?P<model>.+)\.(?P<kind>inputs|outputs)$")
# Typed contents: the field of each datatype; raw contents: its little-endian numpy type.
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_TENSOR = attrgetter("name", "datatype", "shape", "contents")
RAW = {
    "BOOL": "?",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}


class SeldonFormat(PairedFormat):
    def __init__(self, feature_names: Sequence[str] | None = None, **join: Any) -> None:
        super().__init__(**join)
        self.feature_names = list(feature_names) if feature_names else None
        self._topics: dict[str, tuple[str, bool]] = {}  # topic -> (model, whether it holds requests)

    def space(self, chunk: Chunk) -> Hashable:
        try:
            return self._topic(chunk.topic)[0]
        except Bad:
            return chunk.topic  # its records fail one by one in read()

    def read(self, chunk: Chunk, idx: Sequence[int]) -> list[Half]:
        model, request = self._topic(chunk.topic)
        kind = oip_pb2.ModelInferRequest if request else oip_pb2.ModelInferResponse
        values = chunk.values if isinstance(idx, range) else [chunk.values[i] for i in idx]
        times = [None] * len(idx) if chunk.timestamps is None else [chunk.timestamps[i] for i in idx]
        keys = _keys(chunk, idx)
        names = self.feature_names
        out: list[Half] = []
        # A message at a time, dropped once read: thousands alive at once cost more than reading them.
        for k, (i, value, at) in enumerate(zip(idx, values, times, strict=True)):
            try:
                message = kind.FromString(value)
            except DecodeError as e:
                raise Bad("malformed_protobuf", f"not a {kind.__name__}: {e}") from None
            rid = _request_id(chunk, i, message.id) if keys is None else keys[k]
            if request:
                if not message.inputs:
                    raise Bad("missing_field", "the ModelInferRequest has no inputs")
                given = _tensors(message.inputs, message.raw_input_contents, "raw_input_contents")
                out.append((rid, True, (model, None, at, tensors.rows(given, names))))
                continue
            if not message.outputs:
                raise Bad("missing_field", "the ModelInferResponse has no outputs")
            ((_, n, per_row),) = _tensors(message.outputs, message.raw_output_contents, "raw_output_contents", True)
            out.append((rid, False, (message.model_version, at, per_row if n else [])))
        return out

    def _topic(self, topic: str) -> tuple[str, bool]:
        known = self._topics.get(topic)
        if known is None:
            m = TOPIC.match(topic)
            if m is None:
                raise Bad("wrong_type", f"topic {topic} is not <prefix>.<namespace>.model.<model>.inputs|outputs")
            known = self._topics[topic] = (f"{m['namespace']}/{m['model']}", m["kind"] == "inputs")
        return known


def _keys(chunk: Chunk, idx: Sequence[int]) -> list[str] | None:
    """The records' keys as request ids, when every record has one (else each finds its own)."""
    keys = None if chunk.keys is None else [chunk.keys[i] for i in idx]
    if keys is None or not all(keys):
        return None
    try:
        return [key.decode("utf-8", "replace") for key in keys]  # type: ignore[union-attr]
    except AttributeError:  # not bytes: _request_id says so, record by record
        return None


def _request_id(chunk: Chunk, i: int, given: str) -> str:
    key = None if chunk.keys is None else chunk.keys[i]
    if key:
        return key.decode("utf-8", "replace")
    if given:
        return given
    for name, value in (chunk.headers[i] or ()) if chunk.headers is not None else ():
        if name.lower() == "x-request-id" and value:
            return value.decode("utf-8", "replace")
    raise Bad("missing_field", "no request id: the record has no key, the message no id, no x-request-id header")


def _tensors(given: Sequence[Any], raw: Sequence[bytes], field: str, first: bool = False) -> list[tensors.Split]:
    """The protobuf tensors (`first`: the first only) in rows: values from their typed contents,
    or raw bytes (one each)."""
    if raw and len(raw) != len(given):
        raise Bad("bad_shape", f"{len(raw)} {field} for {len(given)} tensors")
    out = []
    for k, (name, given_type, shape, contents) in enumerate(map(_TENSOR, given[:1] if first else given)):
        name, datatype = name or "input", given_type.upper()
        if raw:
            data = _raw(name, datatype, raw[k])
        else:
            where = CONTENTS.get(datatype)
            if where is None:
                raise Bad("wrong_type", f"tensor {name!r}: datatype {given_type!r} has no contents (FP16 travels raw)")
            data = getattr(contents, where)[:]
        if datatype == "BYTES":
            data = [b.decode("utf-8", "replace") for b in data]
        shape = shape[:]
        if len(shape) == 1 and len(data) == shape[0]:  # a value a row, most tensors: no more checks
            out.append((name, shape[0], data))
        else:
            out.append(tensors.split(name, shape, data))
    return out


def _raw(name: str, datatype: str, raw: bytes) -> list[Any]:
    if datatype == "BYTES":  # each value: its length (4 bytes, little-endian), then its bytes
        out, at = [], 0
        while at < len(raw):
            if at + 4 > len(raw):
                raise Bad("bad_shape", f"tensor {name!r}: raw BYTES cut short")
            (n,) = struct.unpack_from("<I", raw, at)
            if at + 4 + n > len(raw):
                raise Bad("bad_shape", f"tensor {name!r}: raw BYTES cut short")
            out.append(raw[at + 4 : at + 4 + n])
            at += 4 + n
        return out
    dtype = RAW.get(datatype)
    if dtype is None:
        raise Bad("wrong_type", f"tensor {name!r}: unknown datatype {datatype!r}")
    if len(raw) % np.dtype(dtype).itemsize:
        raise Bad("bad_shape", f"tensor {name!r}: {len(raw)} raw bytes are not whole {datatype} values")
    values: list[Any] = np.frombuffer(raw, dtype).tolist()
    return values
