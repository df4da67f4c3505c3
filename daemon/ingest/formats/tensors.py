"""Open Inference Protocol (V2) tensors as rows: the features of a request's inputs, the
predictions of a response's first output (cloudevents-inference's JSON tensors, seldon's
protobuf ones). A tensor of shape [N, ...] holds N rows; a batch of N rows becomes N events."""

from __future__ import annotations

import math
from typing import Annotated, Any

import msgspec

from daemon.ingest.formats.pairs import Bad


class Tensor(msgspec.Struct):
    """An Open Inference Protocol V2 tensor (data flat in row-major order, or nested)."""

    shape: list[Annotated[int, msgspec.Meta(ge=0)]]
    data: list[Any]
    name: str = "input"
    datatype: str | None = None


def predictions(outputs: list[Tensor]) -> list[Any]:
    """Per row of the first output tensor its prediction: a value, or a list of class scores."""
    if not outputs:
        raise Bad("wrong_type", "outputs must be a non-empty list of tensors (V2)")
    n, per_row = tensor(outputs[0])
    return per_row if n else []


def tensor(t: Tensor) -> tuple[int, list[Any]]:
    """A V2 tensor's rows: (rows, per row its value or its list of values)."""
    shape = t.shape
    if not shape or min(shape) < 0:
        raise Bad("wrong_type", f"tensor {t.name!r}: shape must be a list of sizes, got {shape!r}")
    flat = flatten(t.data)
    width = math.prod(shape[1:])
    if len(flat) != shape[0] * width:
        raise Bad("bad_shape", f"tensor {t.name!r}: {len(flat)} values for shape {shape}")
    if len(shape) == 1:
        return shape[0], flat
    return shape[0], [flat[k * width : (k + 1) * width] for k in range(shape[0])]


def flatten(data: list[Any]) -> list[Any]:
    if not data or not isinstance(data[0], list):
        return data
    out: list[Any] = []
    for x in data:
        if not isinstance(x, list):
            raise Bad("bad_shape", "tensor data nested unevenly")
        out.extend(flatten(x))
    return out


def rows(inputs: list[Tensor], names: list[str] | None) -> list[dict[str, Any]]:
    if not inputs:
        raise Bad("wrong_type", "inputs must be a non-empty list of tensors (V2)")
    tensors = []
    for t in inputs:
        n, per_row = tensor(t)
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
