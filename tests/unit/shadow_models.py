"""Tiny models for shadow tests, built locally (nothing is downloaded), and samples and specs to go with them."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from daemon.config import ShadowModel
from daemon.monitors.reservoir import Sample

OPSET = 17
IR_VERSION = 10  # onnx 1.23 writes a newer one by default; onnxruntime 1.32 accepts 10


def onnx_linear_classifier(
    path: Path | str,
    weights: np.ndarray,
    bias: np.ndarray,
    *,
    input_name: str = "x",
    slow_repeats: int = 0,
    hidden: int = 256,
    batch: int | str = "N",
) -> Path:
    """logits = x @ weights + bias, x float [batch, k], logits [batch, c]. `slow_repeats` > 0 first lifts x into
    `hidden` columns, multiplies by a hidden x hidden identity that many times and projects back: exactly the same
    logits, at a cost that grows with slow_repeats (5 repeats: about 4x a 4x3 model's latency)."""
    k, c = weights.shape
    nodes = []
    inits = [_init("W", weights), _init("b", bias)]
    x = input_name
    if slow_repeats > 0:
        lift = np.eye(k, hidden, dtype=np.float32)
        inits += [_init("lift", lift), _init("eye", np.eye(hidden, dtype=np.float32)), _init("drop", lift.T)]
        nodes.append(helper.make_node("MatMul", [x, "lift"], ["h0"]))
        for i in range(slow_repeats):
            nodes.append(helper.make_node("MatMul", [f"h{i}", "eye"], [f"h{i + 1}"]))
        nodes.append(helper.make_node("MatMul", [f"h{slow_repeats}", "drop"], ["x_again"]))
        x = "x_again"
    nodes += [helper.make_node("MatMul", [x, "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["logits"])]
    return _save(
        path,
        nodes,
        inits,
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, k])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, c])],
    )


def onnx_label_classifier(path: Path | str, weights: np.ndarray, bias: np.ndarray) -> Path:
    """Outputs "logits" [N, c] and "label" = argmax(x @ weights + bias) as int64 [N]."""
    k, c = weights.shape
    return _save(
        path,
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["logits"]),
            helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
        ],
        [_init("W", weights), _init("b", bias)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", k])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", c]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
        ],
    )


def onnx_two_inputs(path: Path | str, k_a: int, k_b: int) -> Path:
    """Inputs "a" float [N, k_a] and "b" float [N, k_b]; output "ab", their columns side by side."""
    return _save(
        path,
        [helper.make_node("Concat", ["a", "b"], ["ab"], axis=1)],
        [],
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", k_a]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", k_b]),
        ],
        [helper.make_tensor_value_info("ab", TensorProto.FLOAT, ["N", k_a + k_b])],
    )


def onnx_regressor(path: Path | str, weights: np.ndarray, bias: float) -> Path:
    """y = x @ weights + bias, x float [N, k], y [N, 1]."""
    k = len(weights)
    return _save(
        path,
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
        [_init("W", np.reshape(weights, (k, 1))), _init("b", np.array([bias]))],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
    )


def torchscript_classifier(path: Path | str, weights: np.ndarray, bias: np.ndarray) -> Path:
    """A traced nn.Linear: forward(self, x) -> x @ weights + bias."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates TorchScript
        torch.jit.trace(_linear(weights, bias), torch.zeros(2, weights.shape[0])).save(str(path))
    return Path(path)


def torch_export_classifier(path: Path | str, weights: np.ndarray, bias: np.ndarray) -> Path:
    """A torch.export program (.pt2) of nn.Linear with a dynamic batch dimension."""
    import torch

    example = torch.zeros(2, weights.shape[0])
    batch = torch.export.Dim("batch")
    program = torch.export.export(_linear(weights, bias), (example,), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, str(path))
    return Path(path)


def samples(
    n: int,
    k: int,
    seed: int,
    *,
    prediction_fn: Callable[[np.ndarray], Sequence[Any]] | None = None,
    labels: bool = False,
) -> list[Sample]:
    """n samples with features f0..f{k-1} drawn from N(0, 1). prediction_fn maps the (n, k) float32 matrix to the
    logged predictions; labels=True gives each sample its prediction as label too."""
    x = np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32)
    predicted = list(prediction_fn(x)) if prediction_fn is not None else [None] * n
    predicted = [p.item() if isinstance(p, np.generic) else p for p in predicted]
    return [
        Sample(
            f"r{i}",
            {f"f{j}": float(v) for j, v in enumerate(row)},
            prediction=predicted[i],
            label=predicted[i] if labels else None,
        )
        for i, row in enumerate(x)
    ]


def spec(path: Path | str, k: int, **fields: Any) -> ShadowModel:
    """A ShadowModel whose input "x" takes f0..f{k-1}; runtime from the file's suffix; fields override."""
    runtime = "onnxruntime" if str(path).endswith(".onnx") else "torch"
    base: dict[str, Any] = {
        "name": "m",
        "runtime": runtime,
        "path": str(path),
        "source_model": "src",
        "device": "cpu",
        "inputs": [{"name": "x", "features": [f"f{j}" for j in range(k)]}],
    }
    return ShadowModel.model_validate(base | fields)


def _linear(weights: np.ndarray, bias: np.ndarray) -> Any:
    import torch

    k, c = weights.shape
    layer = torch.nn.Linear(k, c)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(weights.T, dtype=np.float32)))
        layer.bias.copy_(torch.from_numpy(np.asarray(bias, dtype=np.float32)))

    class Linear(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = layer

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(x)

    return Linear().eval()


def _init(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def _save(path: Path | str, nodes: list[Any], inits: list[Any], inputs: list[Any], outputs: list[Any]) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return Path(path)
