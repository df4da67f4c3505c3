"""Tiny models for shadow tests, built locally (nothing is downloaded), and samples and specs to go with them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto, helper

from daemon.config import ShadowModel
from daemon.dev.shadow_models import initializer, linear, onnx_linear_classifier, save_onnx, torchscript_classifier
from daemon.monitors.reservoir import Sample

__all__ = ["onnx_linear_classifier", "torchscript_classifier"]  # with the builders below


def onnx_label_classifier(path: Path | str, weights: np.ndarray, bias: np.ndarray) -> Path:
    """Outputs "logits" [N, c] and "label" = argmax(x @ weights + bias) as int64 [N]."""
    k, c = weights.shape
    return save_onnx(
        path,
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["logits"]),
            helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
        ],
        [initializer("W", weights), initializer("b", bias)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", k])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", c]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
        ],
    )


def onnx_two_inputs(path: Path | str, k_a: int, k_b: int) -> Path:
    """Inputs "a" float [N, k_a] and "b" float [N, k_b]; output "ab", their columns side by side."""
    return save_onnx(
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
    return save_onnx(
        path,
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
        [initializer("W", np.reshape(weights, (k, 1))), initializer("b", np.array([bias]))],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
    )


def torch_export_classifier(path: Path | str, weights: np.ndarray, bias: np.ndarray) -> Path:
    """A torch.export program (.pt2) of nn.Linear with a dynamic batch dimension."""
    import torch

    example = torch.zeros(2, weights.shape[0])
    batch = torch.export.Dim("batch")
    program = torch.export.export(linear(weights, bias), (example,), dynamic_shapes={"x": {0: batch}})
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
