"""Open Inference Protocol (V2) tensors as rows: the features of a request's inputs, the
predictions of a response's first output (cloudevents-inference's JSON tensors, seldon's
protobuf ones). A tensor of shape [N, ...] holds N rows; a batch of N rows becomes N events."""

from __future__ import annotations

import functools
import math
from typing import Annotated, Any

import msgspec

from daemon.ingest.failures import Bad


class Tensor(msgspec.Struct):
    """An Open Inference Protocol V2 tensor (data flat in row-major order, or nested)."""

    shape: list[Annotated[int, msgspec.Meta(ge=0)]]
    data: list[Any]
    name: str = "input"
    datatype: str | None = None


# A tensor split into rows: (its name, its rows, per row its value or its list of values).
Split = tuple[str, int, list[Any]]


def predictions(outputs: list[Tensor]) -> list[Any]:
    """Per row of the first output tensor its prediction: a value, or a list of class scores."""
    if not outputs:
        raise Bad("wrong_type", "outputs must be a non-empty list of tensors (V2)")
    _, n, per_row = tensor(outputs[0])
    return per_row if n else []


def tensor(t: Tensor) -> Split:
    """A JSON V2 tensor's rows (its data flat in row-major order, or nested)."""
    return split(t.name, t.shape, flatten(t.data))


def split(name: str, shape: list[int], flat: list[Any]) -> Split:
    """A tensor's flat values (row-major) in rows of its shape."""
    if not shape or min(shape) < 0:
        raise Bad("wrong_type", f"tensor {name!r}: shape must be a list of sizes, got {shape!r}")
    if len(shape) == 1:
        if len(flat) != shape[0]:
            raise Bad("bad_shape", f"tensor {name!r}: {len(flat)} values for shape {shape}")
        return name, shape[0], flat
    width = math.prod(shape[1:])
    if len(flat) != shape[0] * width:
        raise Bad("bad_shape", f"tensor {name!r}: {len(flat)} values for shape {shape}")
    if shape[0] == 1:
        return name, 1, [flat]
    return name, shape[0], [flat[k * width : (k + 1) * width] for k in range(shape[0])]


def flatten(data: list[Any]) -> list[Any]:
    if not data or not isinstance(data[0], list):
        return data
    out: list[Any] = []
    for x in data:
        if not isinstance(x, list):
            raise Bad("bad_shape", "tensor data nested unevenly")
        out.extend(flatten(x))
    return out


def rows(inputs: list[Split], names: list[str] | None) -> list[dict[str, Any]]:
    """The features of each row of the input tensors: a tensor of one value per row is named
    after it, a wider one takes `names` when it is the only one, else name_0, name_1, ..."""
    if not inputs:
        raise Bad("wrong_type", "inputs must be a non-empty list of tensors (V2)")
    n = inputs[0][1]
    if len(inputs) > 1 and any(m != n for _, m, _ in inputs):
        raise Bad("bad_shape", f"input tensors of different batch sizes: {sorted({m for _, m, _ in inputs})}")
    names = names if names and len(inputs) == 1 else None
    out: list[dict[str, Any]] = [{} for _ in range(n)]
    for name, _, per_row in inputs:
        for row, v in ((out[0], per_row[0]),) if n == 1 else zip(out, per_row, strict=True):  # most have one row
            if type(v) is not list:
                row[name] = v
            else:
                row.update(zip(names if names and len(names) == len(v) else _wide(name, len(v)), v, strict=True))
    return out


@functools.lru_cache(maxsize=1024)
def _wide(name: str, width: int) -> tuple[str, ...]:
    """The names of a wide tensor's values: name_0, name_1, ..."""
    return tuple(f"{name}_{k}" for k in range(width))
