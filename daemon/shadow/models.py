"""Shadow models: load an ONNX or torch model, check its input mapping, build inputs, run it, read predictions.

Runs in the shadow runner's process only: onnxruntime and torch are imported inside the functions that
need them, never at module level. `feed()` builds the inputs for one inference outside the timed path;
`run()` is exactly one inference.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from daemon.config import ShadowConfig, ShadowModel, TensorInput
from daemon.monitors.reservoir import Sample

Array = npt.NDArray[Any]

# ONNX tensor element types and the mapping dtypes they take; tensor(string) is an output type only.
ONNX_DTYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}
MAPPING_DTYPES = frozenset(ONNX_DTYPES.values())
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


class ModelError(Exception):
    """A model that cannot be loaded or whose input mapping does not fit it; the message names the model, the input
    and the fix."""


@dataclass(frozen=True, slots=True)
class _Port:
    """A model input or output as the runtime declares it: dtype None when it is not a tensor of a mapping dtype
    (inputs) or of numbers, bools or strings (outputs); shape None when undeclared, a dimension None when dynamic."""

    name: str
    type: str
    dtype: str | None
    shape: tuple[int | None, ...] | None


class LoadedModel(ABC):
    """A model ready to run: `run(feed(samples))` is one inference over len(samples) rows."""

    def __init__(self, spec: ShadowModel, device: str, provider: str, session_seconds: float, batchable: bool) -> None:
        self.spec = spec
        self.device = device
        self.provider = provider
        self.session_seconds = session_seconds
        # False when an input has a fixed batch dimension of 1.
        self.batchable = batchable

    @abstractmethod
    def feed(self, samples: Sequence[Sample]) -> Any:
        """The inputs of one inference over these samples, in the runtime's native form."""

    @abstractmethod
    def run(self, feed: Any) -> Any:
        """Exactly one inference; the raw outputs."""

    @abstractmethod
    def _output(self, raw: Any) -> Array:
        """The configured output of run()'s raw outputs, as a numpy array."""

    def predictions(self, raw: Any) -> list[Any]:
        """One prediction per row (Python scalars) from run()'s raw outputs, per the spec's task and classes."""
        return _predictions(self.spec, self._output(raw))


class OnnxModel(LoadedModel):
    """An onnxruntime InferenceSession; the feed is a dict of input name to numpy array."""

    def __init__(self, spec: ShadowModel, session: Any, output: str, device: str, seconds: float, batch: bool) -> None:
        super().__init__(spec, device, session.get_providers()[0], seconds, batch)
        self.session = session
        self._output_names = [output]

    def feed(self, samples: Sequence[Sample]) -> dict[str, Array]:
        return {inp.name: tensor(inp, samples) for inp in self.spec.inputs}

    def run(self, feed: Any) -> Any:
        return self.session.run(self._output_names, feed)

    def _output(self, raw: Any) -> Array:
        return np.asarray(raw[0])


class TorchModel(LoadedModel):
    """A TorchScript module or a torch.export program's module; the feed is a tuple of tensors on the device, in
    forward()'s argument order."""

    def __init__(
        self,
        spec: ShadowModel,
        module: Callable[..., Any],
        order: Sequence[str],
        device: str,
        seconds: float,
        batch: bool,
    ) -> None:
        super().__init__(spec, device, f"torch-{device}", seconds, batch)
        self.module = module
        by_name = {inp.name: inp for inp in spec.inputs}
        self._inputs = [by_name[name] for name in order]
        import torch

        # Bound once: run() is the timed call and does nothing else.
        self._inference_mode = torch.inference_mode
        self._synchronize = torch.cuda.synchronize if device == "cuda" else None

    def feed(self, samples: Sequence[Sample]) -> tuple[Any, ...]:
        import torch

        return tuple(torch.from_numpy(tensor(inp, samples)).to(self.device) for inp in self._inputs)

    def run(self, feed: Any) -> Any:
        with self._inference_mode():
            out = self.module(*feed)
        if self._synchronize is not None:
            self._synchronize()
        return out

    def _output(self, raw: Any) -> Array:
        import torch

        i = self.spec.output
        if isinstance(raw, torch.Tensor) and i == 0:
            out = raw
        elif isinstance(raw, tuple | list) and isinstance(i, int) and i < len(raw):
            out = raw[i]
        else:
            got = "one tensor" if isinstance(raw, torch.Tensor) else type(raw).__name__
            raise ModelError(f"{_prefix(self.spec)}output {i!r} does not exist: the module returns {got}")
        if not isinstance(out, torch.Tensor):
            raise ModelError(f"{_prefix(self.spec)}output {i!r} is a {type(out).__name__}, not a tensor")
        return out.detach().cpu().numpy()


def tensor(inp: TensorInput, samples: Sequence[Sample]) -> Array:
    """The (len(samples), len(features)) array of one input: missing -> missing_value, bool -> 1/0, str -> its code
    (unknown_code when the value or the feature has no entry in encodings). Never fails on live data."""
    columns = [(name, inp.encodings.get(name)) for name in inp.features]
    missing, unknown = inp.missing_value, inp.unknown_code
    rows = []
    for sample in samples:
        features = sample.features
        row = []
        for name, table in columns:
            v = features.get(name)
            if v is None:
                v = missing
            elif isinstance(v, str):
                v = unknown if table is None else table.get(v, unknown)
            row.append(v)
        rows.append(row)
    values = np.asarray(rows, dtype=np.float64).reshape(len(samples), len(columns))
    dtype = np.dtype(inp.dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = np.clip(np.nan_to_num(values, nan=missing), info.min, info.max)
    return values.astype(dtype)


def unencoded_features(spec: ShadowModel, samples: Sequence[Sample]) -> list[str]:
    """Features that had string values but no encoding table (fed as unknown_code), sorted."""
    found: set[str] = set()
    for inp in spec.inputs:
        plain = [name for name in inp.features if name not in inp.encodings]
        for sample in samples:
            found.update(name for name in plain if isinstance(sample.features.get(name), str))
    return sorted(found)


def unseen_features(spec: ShadowModel, samples: Sequence[Sample]) -> list[str]:
    """Features the mapping names that no sample carries a value for (fed as missing_value
    throughout: a misspelt name, or a feature the logs do not have), sorted."""
    wanted = {name for inp in spec.inputs for name in inp.features}
    for sample in samples:
        if not wanted:
            break
        wanted.difference_update([name for name in wanted if sample.features.get(name) is not None])
    return sorted(wanted)


def load_model(spec: ShadowModel, *, threads: int, allow_cuda: bool) -> LoadedModel:
    """Loads a model on its device with its thread settings and checks its input mapping; ModelError if it does not
    load or fit."""
    if not os.path.exists(spec.path):
        raise ModelError(f"{_prefix(spec)}no model file at {spec.path!r}; check shadow.models[].path")
    if spec.device == "cuda" and not allow_cuda:
        raise ModelError(f"{_prefix(spec)}device: cuda but shadow.allow_cuda is false; set device: auto or cpu")
    intra = spec.intra_op_threads or threads
    if spec.runtime == "onnxruntime":
        return _load_onnx(spec, intra, allow_cuda)
    return _load_torch(spec, intra, allow_cuda)


def validate(shadow: ShadowConfig) -> list[str]:
    """Loads every configured model and returns one message per model that does not load or fit ([] when all do)."""
    problems = []
    for spec in shadow.models:
        try:
            load_model(spec, threads=shadow.threads, allow_cuda=shadow.allow_cuda)
        except ModelError as e:
            problems.append(str(e))
    return problems


def _load_onnx(spec: ShadowModel, intra: int, allow_cuda: bool) -> OnnxModel:
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ModelError(f"{_prefix(spec)}onnxruntime is not installed; install inferwatch[shadow]") from e
    available = ort.get_available_providers()
    if spec.device == "cuda" and CUDA_PROVIDER not in available:
        raise ModelError(
            f"{_prefix(spec)}device: cuda but onnxruntime offers no {CUDA_PROVIDER} (it has: {', '.join(available)}); "
            "install onnxruntime-gpu or set device: auto or cpu"
        )
    cuda = spec.device == "cuda" or (spec.device == "auto" and allow_cuda and CUDA_PROVIDER in available)
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra
    options.inter_op_num_threads = spec.inter_op_threads
    # Spinning worker threads would steal CPU from the daemon's ingestion.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    providers = [CUDA_PROVIDER, CPU_PROVIDER] if cuda else [CPU_PROVIDER]
    start = time.perf_counter()
    try:
        session = ort.InferenceSession(spec.path, options, providers=providers)
    except Exception as e:
        raise ModelError(f"{_prefix(spec)}onnxruntime cannot load {spec.path!r}: {_message(e)}") from e
    seconds = time.perf_counter() - start
    on_cuda = session.get_providers()[0] == CUDA_PROVIDER
    if spec.device == "cuda" and not on_cuda:
        raise ModelError(
            f"{_prefix(spec)}device: cuda but onnxruntime's {CUDA_PROVIDER} did not start (see its log); "
            "set device: auto or cpu"
        )
    inputs = [_Port(i.name, i.type, ONNX_DTYPES.get(i.type), _dims(i.shape)) for i in session.get_inputs()]
    batchable = _check_tensors(spec, inputs)
    outputs = [_Port(o.name, o.type, _onnx_output_dtype(o.type), _dims(o.shape)) for o in session.get_outputs()]
    output = _pick_output(spec, outputs)
    return OnnxModel(spec, session, output.name, "cuda" if on_cuda else "cpu", seconds, batchable)


def _load_torch(spec: ShadowModel, intra: int, allow_cuda: bool) -> TorchModel:
    try:
        import torch
    except ImportError as e:
        raise ModelError(f"{_prefix(spec)}torch is not installed; install inferwatch[shadow]") from e
    if spec.device == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"{_prefix(spec)}device: cuda but torch sees no CUDA device; set device: auto or cpu")
    if isinstance(spec.output, str):
        raise ModelError(f"{_prefix(spec)}output {spec.output!r}: torch outputs have no names; give its position")
    cuda = spec.device == "cuda" or (spec.device == "auto" and allow_cuda and torch.cuda.is_available())
    device = "cuda" if cuda else "cpu"
    torch.set_num_threads(intra)
    if torch.get_num_interop_threads() != spec.inter_op_threads:
        with contextlib.suppress(RuntimeError):  # fixed once the process has run parallel work
            torch.set_num_interop_threads(spec.inter_op_threads)
    start = time.perf_counter()
    if spec.path.endswith(".pt2"):
        program = _load_program(spec, device)
        module: Callable[..., Any] = program.module()
        seconds = time.perf_counter() - start
        inputs, outputs = _program_ports(program)
        batchable = _check_tensors(spec, inputs)
        _pick_output(spec, outputs)
        return TorchModel(spec, module, [p.name for p in inputs], device, seconds, batchable)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates TorchScript; still supported
            script = torch.jit.load(spec.path, map_location=device)  # type: ignore[no-untyped-call]
    except Exception as e:
        raise ModelError(f"{_prefix(spec)}torch.jit.load cannot load {spec.path!r}: {_message(e)}") from e
    script.eval()
    seconds = time.perf_counter() - start
    names = [a.name for a in script.forward.schema.arguments[1:]]  # [0] is self
    _check_names(spec, names)
    model = TorchModel(spec, script, names, device, seconds, batch=True)
    _trial(model)
    return model


def _load_program(spec: ShadowModel, device: str) -> Any:
    """A torch.export program, moved to the device."""
    import torch
    from torch.export.passes import move_to_device_pass

    try:
        program = torch.export.load(spec.path)
    except Exception as e:
        raise ModelError(f"{_prefix(spec)}torch.export.load cannot load {spec.path!r}: {_message(e)}") from e
    return move_to_device_pass(program, device) if device != "cpu" else program


def _program_ports(program: Any) -> tuple[list[_Port], list[_Port]]:
    """A torch.export program's user inputs and flat outputs, from its graph's fake tensors."""
    nodes = {node.name: node for node in program.graph.nodes}
    inputs = [_torch_port(name, nodes[name].meta.get("val")) for name in program.graph_signature.user_inputs]
    flat = program.graph.output_node().args[0]
    outputs = [_torch_port(str(i), getattr(node, "meta", {}).get("val")) for i, node in enumerate(flat)]
    return inputs, outputs


def _torch_port(name: str, value: Any) -> _Port:
    import torch

    if not isinstance(value, torch.Tensor):
        return _Port(name, type(value).__name__, None, None)
    dtype = str(value.dtype).removeprefix("torch.")
    dims = tuple(d if isinstance(d, int) else None for d in value.shape)
    return _Port(name, str(value.dtype), dtype if dtype in MAPPING_DTYPES else None, dims)


def _trial(model: TorchModel) -> None:
    """One inference on a single all-missing row, whose output must fit the spec (TorchScript declares no shapes)."""
    try:
        raw = model.run(model.feed([Sample("trial", {})]))
    except RuntimeError as e:
        raise ModelError(
            f"{_prefix(model.spec)}a trial inference with the mapped inputs failed: {_message(e)}; "
            "check the number and order of inputs[].features"
        ) from e
    model.predictions(raw)


def _check_names(spec: ShadowModel, names: Sequence[str]) -> None:
    """ModelError unless every model input has exactly one mapping and every mapping names a model input."""
    for inp in spec.inputs:
        if inp.name not in names:
            raise ModelError(f"{_prefix(spec)}the model has no input '{inp.name}' (its inputs: {', '.join(names)})")
    mapped = {inp.name for inp in spec.inputs}
    for name in names:
        if name not in mapped:
            raise ModelError(f"{_prefix(spec)}input '{name}' has no mapping in shadow.models[].inputs")


def _check_tensors(spec: ShadowModel, ports: Sequence[_Port]) -> bool:
    """ModelError unless each declared input fits its mapping's columns and dtype; whether batches > 1 can run."""
    _check_names(spec, [p.name for p in ports])
    mapped = {inp.name: inp for inp in spec.inputs}
    batchable = True
    for port in ports:
        inp = mapped[port.name]
        if port.dtype is None:
            raise ModelError(f"{_prefix(spec)}input '{port.name}' is {port.type}, which a mapping cannot fill")
        if port.dtype != inp.dtype:
            raise ModelError(
                f"{_prefix(spec)}input '{port.name}' is {port.type}, mapping gives {inp.dtype}; "
                f"set inputs[].dtype: {port.dtype}"
            )
        if port.shape is None:
            continue
        if len(port.shape) != 2:
            raise ModelError(
                f"{_prefix(spec)}input '{port.name}' has shape {_shape(port.shape)}; "
                "a mapping fills a 2-D (batch, columns) tensor"
            )
        batch, columns = port.shape
        if columns is not None and columns != len(inp.features):
            raise ModelError(
                f"{_prefix(spec)}input '{port.name}' expects {columns} columns, mapping gives {len(inp.features)}; "
                "list one feature per column in inputs[].features"
            )
        if batch is not None and batch != 1:
            raise ModelError(
                f"{_prefix(spec)}input '{port.name}' has a fixed batch dimension of {batch}; "
                "export the model with a dynamic batch dimension"
            )
        batchable = batchable and batch is None
    return batchable


def _pick_output(spec: ShadowModel, outputs: Sequence[_Port]) -> _Port:
    """The configured output, checked against the task as far as its declared type and shape tell."""
    names = [o.name for o in outputs]
    if isinstance(spec.output, str) and spec.output not in names:
        raise ModelError(f"{_prefix(spec)}the model has no output '{spec.output}' (its outputs: {', '.join(names)})")
    if isinstance(spec.output, int) and not 0 <= spec.output < len(outputs):
        raise ModelError(f"{_prefix(spec)}output {spec.output} does not exist: the model has {len(outputs)} outputs")
    port = outputs[names.index(spec.output) if isinstance(spec.output, str) else spec.output]
    if port.dtype is None:
        raise ModelError(
            f"{_prefix(spec)}output {spec.output!r} is {port.type}; predictions need a tensor of numbers or strings"
        )
    if port.shape is not None:
        _check_output(spec, port.shape, np.dtype(port.dtype).kind)
    return port


def _check_output(spec: ShadowModel, shape: Sequence[int | None], kind: str) -> None:
    """ModelError unless an output of this shape and numpy dtype kind gives the spec's predictions."""
    where = f"{_prefix(spec)}output {spec.output!r}"
    if len(shape) not in (1, 2):
        raise ModelError(f"{where} has shape {_shape(shape)}; expected (batch,) or (batch, columns)")
    columns = shape[1] if len(shape) == 2 else 1
    if spec.task == "regression":
        if kind not in "fiu" or columns not in (1, None):
            raise ModelError(f"{where} has shape {_shape(shape)} of kind {kind!r}; a regression needs one number a row")
    elif kind in "OU":
        if columns not in (1, None):
            raise ModelError(f"{where} gives {columns} string columns; a classification needs one label a row")
    elif columns is not None and columns > 1:
        if spec.classes and len(spec.classes) != columns:
            raise ModelError(f"{where} has {columns} columns but classes lists {len(spec.classes)}")
    elif columns == 1 and kind == "f" and len(spec.classes) not in (0, 2):
        raise ModelError(
            f"{where} is a one-column score but classes lists {len(spec.classes)}; give [negative, positive] or none"
        )


def _predictions(spec: ShadowModel, out: Array) -> list[Any]:
    _check_output(spec, out.shape, out.dtype.kind)
    if spec.task == "regression":
        return [float(v) for v in out.reshape(-1).tolist()]
    if out.ndim == 2 and out.shape[1] > 1:
        return _labels(spec, out.argmax(axis=1).tolist())
    flat = out.reshape(-1)
    if flat.dtype.kind in "OU":
        return [str(v) for v in flat.tolist()]
    if flat.dtype.kind == "f":
        positive: list[bool] = (flat >= spec.threshold).tolist()
        if spec.classes:
            return [spec.classes[1] if p else spec.classes[0] for p in positive]
        return [int(p) for p in positive]
    return _labels(spec, flat.astype(np.int64).tolist())


def _labels(spec: ShadowModel, indices: list[int]) -> list[Any]:
    if not spec.classes:
        return indices
    n = len(spec.classes)
    bad = [i for i in indices if not 0 <= i < n]
    if bad:
        raise ModelError(f"{_prefix(spec)}output {spec.output!r} gives class index {bad[0]} but classes lists {n}")
    return [spec.classes[i] for i in indices]


def _onnx_output_dtype(onnx_type: str) -> str | None:
    return "str" if onnx_type == "tensor(string)" else ONNX_DTYPES.get(onnx_type)


def _dims(shape: Any) -> tuple[int | None, ...] | None:
    """An onnxruntime shape (an int, a name or None per dimension) with every dynamic dimension as None; None when
    undeclared, which onnxruntime reports as [] (like a scalar)."""
    return tuple(d if isinstance(d, int) else None for d in shape) if shape else None


def _shape(shape: Sequence[int | None]) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"


def _prefix(spec: ShadowModel) -> str:
    return f"shadow model '{spec.name}': "


def _message(e: BaseException) -> str:
    """The line of an exception that says what went wrong: TorchScript puts it last, after the traces."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    line = lines[-1] if lines[0].startswith("The following operation failed") else lines[0]
    return line.removeprefix("RuntimeError: ")
