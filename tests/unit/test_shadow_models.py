"""Shadow models: loading, input mapping checks, feeds, predictions; the run environment."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from daemon.config import ShadowConfig, TensorInput
from daemon.monitors.reservoir import Sample
from daemon.shadow.environment import EnergyMeter, collect_environment, cost_per_1k, hardware_key, model_bytes
from daemon.shadow.models import ModelError, load_model, tensor, unencoded_features, unseen_features, validate
from tests.unit.shadow_models import (
    onnx_label_classifier,
    onnx_linear_classifier,
    onnx_regressor,
    onnx_two_inputs,
    samples,
    spec,
    torch_export_classifier,
    torchscript_classifier,
)

K, C = 4, 3
RNG = np.random.default_rng(0)
W = RNG.standard_normal((K, C)).astype(np.float32)
B = RNG.standard_normal(C).astype(np.float32)


def matrix(rows: list[Sample], k: int = K) -> np.ndarray:
    return np.array([[s.features[f"f{j}"] for j in range(k)] for s in rows], dtype=np.float32)


def run(model: Any, rows: list[Sample]) -> list[Any]:
    return model.predictions(model.run(model.feed(rows)))


def load(path: Path, k: int = K, **fields: Any) -> Any:
    return load_model(spec(path, k, **fields), threads=1, allow_cuda=True)


BUILDERS: dict[str, Callable[[Path, np.ndarray, np.ndarray], Path]] = {
    "onnx": lambda d, w, b: onnx_linear_classifier(d / "m.onnx", w, b),
    "torchscript": lambda d, w, b: torchscript_classifier(d / "m.pt", w, b),
    "torch.export": lambda d, w, b: torch_export_classifier(d / "m.pt2", w, b),
}


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_predictions_equal_numpy_argmax(tmp_path: Path, kind: str) -> None:
    model = load(BUILDERS[kind](tmp_path, W, B))
    rows = samples(200, K, seed=1)
    want = (matrix(rows) @ W + B).argmax(axis=1).tolist()
    assert len(set(want)) == C  # every class occurs: a wrong column order would show
    got = run(model, rows)
    assert got == want and all(type(p) is int for p in got)
    assert [run(model, [r])[0] for r in rows[:20]] == want[:20]  # one row at a time, as single-stream runs
    assert model.device == "cpu" and model.batchable and model.session_seconds > 0
    assert model.provider == ("CPUExecutionProvider" if kind == "onnx" else "torch-cpu")


def test_a_slowed_onnx_model_predicts_the_same(tmp_path: Path) -> None:
    rows = samples(100, K, seed=2)
    fast = run(load(onnx_linear_classifier(tmp_path / "fast.onnx", W, B)), rows)
    assert run(load(onnx_linear_classifier(tmp_path / "slow.onnx", W, B, slow_repeats=3)), rows) == fast


def test_regression_gives_a_float_per_row(tmp_path: Path) -> None:
    w = np.array([0.5, -1.0, 2.0, 0.25], dtype=np.float32)
    model = load(onnx_regressor(tmp_path / "r.onnx", w, 3.0), task="regression")
    rows = samples(50, K, seed=3)
    got = run(model, rows)
    assert all(type(v) is float for v in got)
    np.testing.assert_allclose(got, matrix(rows) @ w + 3.0, rtol=1e-5, atol=1e-5)


def test_classes_label_the_argmax_column(tmp_path: Path) -> None:
    model = load(onnx_linear_classifier(tmp_path / "m.onnx", W, B), classes=["a", "b", "c"])
    rows = samples(60, K, seed=4)
    assert run(model, rows) == [["a", "b", "c"][i] for i in (matrix(rows) @ W + B).argmax(axis=1)]


def test_an_integer_output_is_a_class_index(tmp_path: Path) -> None:
    path = onnx_label_classifier(tmp_path / "m.onnx", W, B)
    rows = samples(60, K, seed=5)
    want = (matrix(rows) @ W + B).argmax(axis=1).tolist()
    assert run(load(path, output="label"), rows) == want
    assert run(load(path, output=1, classes=["a", "b", "c"]), rows) == [["a", "b", "c"][i] for i in want]


def test_a_one_column_score_is_thresholded(tmp_path: Path) -> None:
    w = np.array([1.0, 0.0, 0.0, 0.0], dtype=np.float32)  # score = f0
    path = onnx_regressor(tmp_path / "s.onnx", w, 0.0)
    rows = samples(80, K, seed=6)
    f0 = matrix(rows)[:, 0]
    labelled = load(path, classes=["no", "yes"], threshold=0.3)
    assert run(labelled, rows) == ["yes" if v >= 0.3 else "no" for v in f0]
    assert run(load(path), rows) == [int(v >= 0.5) for v in f0]


def test_features_become_columns_with_codes_and_missing_values() -> None:
    inp = TensorInput(
        name="x",
        features=("color", "flag", "n", "gone"),
        encodings={"color": {"red": 1, "blue": 2}},
        unknown_code=-1,
        missing_value=-9,
    )
    rows = [
        Sample("a", {"color": "red", "flag": True, "n": 3}),
        Sample("b", {"color": "green", "flag": False, "n": None}),
        Sample("c", {"color": None, "flag": 1, "n": "oops", "gone": 0.5}),
    ]
    got = tensor(inp, rows)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, [[1, 1, 3, -9], [-1, 0, -9, -9], [-9, 1, -1, 0.5]])
    as_int = tensor(inp.model_copy(update={"dtype": "int64"}), [Sample("d", {"n": float("nan"), "gone": 2.0})])
    assert as_int.dtype == np.int64 and as_int.tolist() == [[-9, -9, -9, 2]]
    assert tensor(inp, []).shape == (0, 4)


def test_string_values_without_a_table_are_reported(tmp_path: Path) -> None:
    m = spec(tmp_path / "m.onnx", 2, inputs=[{"name": "x", "features": ["f0", "f1"], "encodings": {"f0": {"a": 1}}}])
    rows = [Sample("a", {"f0": "a", "f1": 1.0}), Sample("b", {"f0": "zzz", "f1": "oops"})]
    assert unencoded_features(m, rows) == ["f1"]
    assert unencoded_features(m, rows[:1]) == []


def test_features_no_sample_carries_are_reported(tmp_path: Path) -> None:
    m = spec(tmp_path / "m.onnx", 3, inputs=[{"name": "x", "features": ["f0", "f1", "typo"]}])
    rows = [Sample("a", {"f0": 1.0, "f1": None}), Sample("b", {"f0": 2.0, "f1": "x"})]
    assert unseen_features(m, rows) == ["typo"]
    assert unseen_features(m, rows[:1]) == ["f1", "typo"]  # a None is not a value


def test_feed_builds_each_input_by_name(tmp_path: Path) -> None:
    path = onnx_two_inputs(tmp_path / "two.onnx", 2, 1)
    inputs = [{"name": "b", "features": ["f2"]}, {"name": "a", "features": ["f1", "f0"]}]
    model = load_model(spec(path, 3, inputs=inputs), threads=1, allow_cuda=False)
    feed = model.feed([Sample("r", {"f0": 1.0, "f1": 2.0, "f2": 3.0})])
    assert sorted(feed) == ["a", "b"]
    raw = model.run(feed)
    np.testing.assert_array_equal(raw[0], [[2.0, 1.0, 3.0]])
    assert model.predictions(raw) == [2]


def error(path: Path, k: int = K, **fields: Any) -> str:
    with pytest.raises(ModelError) as e:
        load_model(spec(path, k, name="fraud-v2", **fields), threads=1, allow_cuda=False)
    return str(e.value)


def test_a_column_count_mismatch_names_both_counts(tmp_path: Path) -> None:
    w8 = np.ones((8, 2), dtype=np.float32)
    message = error(onnx_linear_classifier(tmp_path / "m.onnx", w8, np.zeros(2)), 7)
    assert message.startswith("shadow model 'fraud-v2': ")
    assert "input 'x' expects 8 columns, mapping gives 7" in message
    program = torch_export_classifier(tmp_path / "m.pt2", w8, np.zeros(2))
    assert "input 'x' expects 8 columns, mapping gives 7" in error(program, 7)


def test_input_names_must_match_both_ways(tmp_path: Path) -> None:
    path = onnx_linear_classifier(tmp_path / "m.onnx", W, B)
    wrong = [{"name": "y", "features": ["f0", "f1", "f2", "f3"]}]
    assert error(path, inputs=wrong) == "shadow model 'fraud-v2': the model has no input 'y' (its inputs: x)"
    two = onnx_two_inputs(tmp_path / "two.onnx", 2, 2)
    only_a = [{"name": "a", "features": ["f0", "f1"]}]
    assert error(two, inputs=only_a) == "shadow model 'fraud-v2': input 'b' has no mapping in shadow.models[].inputs"
    script = torchscript_classifier(tmp_path / "m.pt", W, B)
    assert "the model has no input 'y' (its inputs: x)" in error(script, inputs=wrong)


def test_a_dtype_mismatch_names_both_types(tmp_path: Path) -> None:
    path = onnx_linear_classifier(tmp_path / "m.onnx", W, B)
    inputs = [{"name": "x", "features": ["f0", "f1", "f2", "f3"], "dtype": "int64"}]
    assert "input 'x' is tensor(float), mapping gives int64; set inputs[].dtype: float32" in error(path, inputs=inputs)
    program = torch_export_classifier(tmp_path / "m.pt2", W, B)
    assert "input 'x' is torch.float32, mapping gives int64" in error(program, inputs=inputs)


def test_torchscript_column_mismatch_fails_its_trial_inference(tmp_path: Path) -> None:
    message = error(torchscript_classifier(tmp_path / "m.pt", W, B), 3)
    assert message.startswith("shadow model 'fraud-v2': a trial inference with the mapped inputs failed: ")
    assert "mat1 and mat2 shapes cannot be multiplied (1x3 and 4x3)" in message
    assert message.endswith("; check the number and order of inputs[].features")


def test_output_choice_must_fit_the_model(tmp_path: Path) -> None:
    path = onnx_linear_classifier(tmp_path / "m.onnx", W, B)
    assert "has no output 'probs' (its outputs: logits)" in error(path, output="probs")
    assert "output 2 does not exist: the model has 1 outputs" in error(path, output=2)
    assert "output 0 has 3 columns but classes lists 2" in error(path, classes=["a", "b"])
    assert "a regression needs one number a row" in error(path, task="regression")
    script = torchscript_classifier(tmp_path / "m.pt", W, B)
    assert "output 1 does not exist: the module returns one tensor" in error(script, output=1)


def test_a_fixed_batch_of_one_is_not_batchable(tmp_path: Path) -> None:
    model = load(onnx_linear_classifier(tmp_path / "m.onnx", W, B, batch=1))
    rows = samples(5, K, seed=7)
    assert model.batchable is False
    assert run(model, rows[:1]) == (matrix(rows[:1]) @ W + B).argmax(axis=1).tolist()
    assert "fixed batch dimension of 4" in error(onnx_linear_classifier(tmp_path / "m4.onnx", W, B, batch=4))


def test_a_missing_file_names_model_and_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.onnx"
    assert error(path) == f"shadow model 'fraud-v2': no model file at '{path}'; check shadow.models[].path"


@pytest.mark.parametrize("kind", ["onnx", "torchscript"])
def test_devices(tmp_path: Path, kind: str) -> None:
    path = BUILDERS[kind](tmp_path, W, B)
    assert "device: cuda but" in error(path, device="cuda")  # this machine has no CUDA
    with pytest.raises(ModelError, match="set device: auto or cpu"):
        load_model(spec(path, K, device="cuda"), threads=1, allow_cuda=True)
    assert load(path, device="auto").device == "cpu"


def test_validate_lists_each_misfit(tmp_path: Path) -> None:
    good = spec(onnx_linear_classifier(tmp_path / "m.onnx", W, B), K, name="good")
    bad = spec(tmp_path / "m.onnx", K - 1, name="bad")
    assert validate(ShadowConfig(models=(good,))) == []
    (message,) = validate(ShadowConfig(models=(good, bad)))
    assert message == (
        "shadow model 'bad': input 'x' expects 4 columns, mapping gives 3; list one feature per column in "
        "inputs[].features"
    )


def test_session_options_honour_threads(tmp_path: Path) -> None:
    path = onnx_linear_classifier(tmp_path / "m.onnx", W, B)
    options = load_model(spec(path, K), threads=3, allow_cuda=False).session.get_session_options()
    assert options.intra_op_num_threads == 3 and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    own = load_model(spec(path, K, intra_op_threads=2, inter_op_threads=2), threads=3, allow_cuda=False)
    options = own.session.get_session_options()
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 2


def test_environment_is_json_and_names_the_runtimes() -> None:
    env = json.loads(json.dumps(collect_environment(["cpu"])))
    assert "CPUExecutionProvider" in env["onnxruntime_providers"]
    assert env["onnxruntime"] and env["torch"] and env["python"] and env["platform"] and env["cpu_model"]
    assert 1 <= env["cpus_allowed"] <= env["cpu_cores"]
    key = hardware_key(env, "cpu", 2)
    assert key.endswith("/cpu/2t") and key.startswith(" ".join(env["cpu_model"].split()))
    assert hardware_key({"gpu": "NVIDIA  H200"}, "cuda", 1) == "NVIDIA H200/cuda/1t"


def test_energy_and_cost() -> None:
    assert EnergyMeter.open("cpu") is None
    assert cost_per_1k(3.6, 1_000.0) == pytest.approx(0.001)
    assert cost_per_1k(7.2, 0.5) == pytest.approx(4.0)
    assert cost_per_1k(None, 10.0) is None and cost_per_1k(1.0, None) is None and cost_per_1k(1.0, 0.0) is None


def test_model_bytes_of_a_file_and_a_directory(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a").write_bytes(b"x" * 10)
    (tmp_path / "d" / "sub" / "b").write_bytes(b"x" * 5)
    assert model_bytes(str(tmp_path / "d" / "a")) == 10
    assert model_bytes(str(tmp_path / "d")) == 15
