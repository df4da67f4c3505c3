"""Tiny shadow models built locally (nothing is downloaded): the demo's production and candidate,
and the tests'. Needs onnx (ONNX files) and torch (TorchScript files), both in the demo extra."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

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
    inits = [initializer("W", weights), initializer("b", bias)]
    x = input_name
    if slow_repeats > 0:
        lift = np.eye(k, hidden, dtype=np.float32)
        inits += [
            initializer("lift", lift),
            initializer("eye", np.eye(hidden, dtype=np.float32)),
            initializer("drop", lift.T),
        ]
        nodes.append(helper.make_node("MatMul", [x, "lift"], ["h0"]))
        for i in range(slow_repeats):
            nodes.append(helper.make_node("MatMul", [f"h{i}", "eye"], [f"h{i + 1}"]))
        nodes.append(helper.make_node("MatMul", [f"h{slow_repeats}", "drop"], ["x_again"]))
        x = "x_again"
    nodes += [helper.make_node("MatMul", [x, "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["logits"])]
    return save_onnx(
        path,
        nodes,
        inits,
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, k])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, c])],
    )


def torchscript_classifier(path: Path | str, weights: np.ndarray, bias: np.ndarray) -> Path:
    """A traced nn.Linear: forward(self, x) -> x @ weights + bias."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates TorchScript
        trace: Any = torch.jit.trace  # untyped in torch
        trace(linear(weights, bias), torch.zeros(2, weights.shape[0])).save(str(path))
    return Path(path)


def linear(weights: np.ndarray, bias: np.ndarray) -> Any:
    """An eval-mode torch module: forward(x) = x @ weights + bias."""
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
            out: torch.Tensor = self.layer(x)
            return out

    return Linear().eval()


def initializer(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def save_onnx(path: Path | str, nodes: list[Any], inits: list[Any], inputs: list[Any], outputs: list[Any]) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return Path(path)
