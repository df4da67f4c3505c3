"""Windowed quality metrics against hand-computed figures, slices, isotonic calibration and CBPE."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.config import Config
from daemon.ingest.sources import RawRecord, chunks_of
from daemon.monitors.labels import JoinedLabel, PendingPrediction
from daemon.monitors.names import OTHER, Overflow
from daemon.monitors.quality import ALL, MISSING, ConfidenceEstimator, KeyPerformance, QualityWindow, graded
from daemon.runtime.app import build_pipeline
from daemon.shadow import compare
from daemon.state.codec import decode, encode
from detectors.metrics import (
    Graded,
    Label,
    class_name,
    confidence,
    counted_class,
    is_wrong,
    isotonic_fit,
    isotonic_predict,
    same_class,
)


def g(
    prediction: Label | None,
    label: Label,
    score: float | None = None,
    probabilities: dict[str, float] | None = None,
    ts: float | None = None,
) -> Graded:
    return Graded(prediction, label, score, probabilities, ts)


def window(items: list[Graded], **kw: Any) -> QualityWindow:
    w = QualityWindow(**kw)
    w.add(items)
    return w


def joined(
    rid: str, prediction: Label | None, label: Label, slices: tuple[str, ...] = (), score: float | None = None
) -> JoinedLabel:
    return JoinedLabel(PendingPrediction(rid, ("m", "v1", "a"), prediction, score=score, slices=slices), label, None)


def key_performance(overflow: Overflow, **kw: Any) -> KeyPerformance:
    args: dict[str, Any] = {
        "window_events": 100,
        "window_seconds": None,
        "positive_class": None,
        "slice_features": ("country",),
        "max_slice_levels": 2,
        "reference_size": 10,
        "overflow": overflow,
        **kw,
    }
    return KeyPerformance(**args)


# 10 binary items: TP=3 (0-2), FN=1 (3), FP=2 (4-5), TN=4 (6-9).
BINARY_Y = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
BINARY_YHAT = [1, 1, 1, 0, 1, 1, 0, 0, 0, 0]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"window_events": None, "window_seconds": None}, "window_events"),
        ({"window_events": 10, "window_seconds": 5.0}, "window_seconds"),
        ({"window_events": 0}, "window_events"),
        ({"window_events": 2.5}, "window_events"),
        ({"window_events": True}, "window_events"),
        ({"window_events": None, "window_seconds": 0}, "window_seconds"),
        ({"window_events": None, "window_seconds": math.inf}, "window_seconds"),
        ({"window_events": None, "window_seconds": math.nan}, "window_seconds"),
        ({"positive_class": 1}, "positive_class"),
    ],
)
def test_bad_window_parameters_raise_naming_the_parameter(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        QualityWindow(**kwargs)


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (True, "1"),
        (False, "0"),
        (1, "1"),
        (1.0, "1"),
        ("1", "1"),
        ("1.0", "1"),
        ("01", "1"),
        (0.0, "0"),
        ("cat", "cat"),
        ("true", "true"),  # a string is no bool: its own class
        ("True", "True"),
        (3, "3"),
        (-2.0, "-2"),
        ("-2.00", "-2"),
        (0.5, "0.5"),
        ("0.50", "0.5"),
        ("nan", "nan"),
    ],
)
def test_class_name_is_one_name_whatever_the_json_type(value: Label, name: str) -> None:
    assert class_name(value) == name


def test_counted_class_leaves_regression_outputs_out() -> None:
    assert [counted_class(v) for v in (True, False, 2.0, 2, "2.0", "x", 0.37, -1.5)] == [
        "1",
        "0",
        "2",
        "2",
        "2",
        "x",
        None,
        None,
    ]


# (prediction, label, whether they name the same class) under the one definition.
CLASS_PAIRS: list[tuple[Label, Label, bool]] = [
    (True, "1", True),
    (1, "1.0", True),
    (True, 1.0, True),
    (False, "0", True),
    (False, 0, True),
    (1.0, True, True),
    ("cat", "cat", True),
    (True, "0", False),
    (False, "1", False),
    (2, "2.5", False),
    ("cat", "dog", False),
    (True, "True", False),  # the string "True" is its own class, the bool True is "1"
    (True, "true", False),
]


@pytest.mark.parametrize(("prediction", "label", "same"), CLASS_PAIRS)
def test_live_and_shadow_grading_share_one_definition_of_a_class(prediction: Label, label: Label, same: bool) -> None:
    """A prediction True against a label "1" is right for live accuracy (is_wrong) and for the shadow
    runner's accuracy, agreement and skew (compare.same_class) alike."""
    assert same_class(prediction, label) is same
    assert compare.same_class(prediction, label) is same
    assert is_wrong(g(prediction, label)) is (not same)
    # Also when a shadow model's output comes as a numpy scalar.
    if isinstance(prediction, bool | int | float):
        assert compare.same_class(np.array([prediction])[0], label) is same
    shadow = compare.accuracy([prediction], [label], "classification")
    assert shadow == {"labelled": 1, "accuracy": 1.0 if same else 0.0}


def test_shadow_same_class_keeps_comparing_numbers_as_classes() -> None:
    assert compare.same_class(np.int64(2), 2.0) and compare.same_class("1e3", 1000)
    assert not compare.same_class(1, 2) and not compare.same_class("1", "one")
    assert not compare.same_class(0.1, np.float32(0.1))  # a float32 0.1 is another number
    # Regression skew still compares numbers with tolerances, not class names.
    r = compare.skew([100.005, 2.0], [100.0, 2.5], "regression", atol=0.01, rtol=0.0, tolerance=0.9)
    assert (r["compared"], r["mismatches"]) == (2, 1)


def test_true_against_label_1_is_graded_right_through_the_pipeline() -> None:
    events = [
        {"prediction": True, "label": "1"},
        {"prediction": 1, "label": "1.0"},
        {"prediction": False, "label": "1"},
        {"prediction": "0", "label": False},
    ]
    records = [
        RawRecord("t", 0, i, 100.0 + i, None, json.dumps({"request_id": f"r{i}", "model": "m", **e}).encode())
        for i, e in enumerate(events)
    ]
    pipeline = build_pipeline(Config())
    pipeline.process(chunks_of(records))
    state = pipeline.partitions[0]
    # Predictions counted as True are exported as class "1", and 1 is the same class.
    assert state.traffic.counts(0, "classes") == {"1": 2, "0": 2}
    (summary,) = pipeline.summary()
    m = summary["quality"]["metrics"]
    # Positive "1": y = 1, 1, 1, 0; predicted 1, 1, 0, 0.
    assert m["accuracy"] == pytest.approx(3 / 4)
    assert m["precision"] == 1.0 and m["recall"] == pytest.approx(2 / 3)


def test_graded_takes_the_label_time_else_the_prediction_time() -> None:
    p = PendingPrediction("r", ("m", "v", "a"), "cat", 0.7, {"cat": 0.7}, 5.0)
    assert graded(JoinedLabel(p, "dog", 9.0)) == Graded("cat", "dog", 0.7, {"cat": 0.7}, 9.0)
    assert graded(JoinedLabel(p, "dog", None)).timestamp == 5.0


def test_binary_precision_recall_f1_for_the_positive_class() -> None:
    m = window([g(float(p), float(y)) for p, y in zip(BINARY_YHAT, BINARY_Y, strict=True)]).metrics()
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(2 * (3 / 5) * (3 / 4) / (3 / 5 + 3 / 4))
    assert "log_loss" not in m  # no scores, no probabilistic figures


def test_configured_positive_class_decides_which_class_is_scored() -> None:
    names = {1: "spam", 0: "ham"}
    items = [g(names[p], names[y]) for p, y in zip(BINARY_YHAT, BINARY_Y, strict=True)]
    ham = window(items, positive_class="ham").metrics()
    # For "ham": TP=4 (6-9), FP=1 (3), FN=2 (4-5).
    assert ham["precision"] == pytest.approx(4 / 5) and ham["recall"] == pytest.approx(4 / 6)
    spam = window(items, positive_class="spam").metrics()
    assert spam["precision"] == pytest.approx(3 / 5) and spam["recall"] == pytest.approx(3 / 4)
    # Neither "1" nor "true" and none configured: macro over both classes.
    macro = window(items).metrics()
    assert macro["precision"] == pytest.approx((4 / 5 + 3 / 5) / 2)
    assert macro["recall"] == pytest.approx((4 / 6 + 3 / 4) / 2)


def test_bool_labels_are_binary_with_true_positive() -> None:
    m = window([g(bool(p), bool(y)) for p, y in zip(BINARY_YHAT, BINARY_Y, strict=True)]).metrics()
    assert m["precision"] == pytest.approx(3 / 5) and m["recall"] == pytest.approx(3 / 4)


def test_multiclass_macro_averages_with_zero_division_as_zero() -> None:
    truth = ["a", "a", "a", "b", "b", "c"]
    pred = ["a", "a", "b", "b", "c", "d"]
    m = window([g(p, y) for p, y in zip(pred, truth, strict=True)]).metrics()
    # Per class (precision, recall, f1): a (1, 2/3, 0.8), b (1/2, 1/2, 1/2), c (0, 0, 0), d predicted only (0, 0, 0).
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["precision"] == pytest.approx((1 + 0.5) / 4)
    assert m["recall"] == pytest.approx((2 / 3 + 0.5) / 4)
    assert m["f1"] == pytest.approx((0.8 + 0.5) / 4)


def test_regression_mae_rmse_and_mape_skipping_zero_labels() -> None:
    items = [g(2.5, 2.0), g(0.5, 0.0), g(3.0, 4.0), g(-1.5, -1.0)]
    m = window(items).metrics()
    assert m == {
        "mae": pytest.approx((0.5 + 0.5 + 1.0 + 0.5) / 4),
        "rmse": pytest.approx(math.sqrt((0.25 + 0.25 + 1.0 + 0.25) / 4)),
        "mape": pytest.approx((0.5 / 2 + 1.0 / 4 + 0.5 / 1) / 3),
    }
    assert "mape" not in window([g(0.5, 0.0), g(1.5, 0.0)]).metrics()


def test_binary_log_loss_brier_and_ece_from_scores() -> None:
    items = [
        g(None, 1.0, score=0.9),
        g(None, 1.0, score=0.95),
        g(None, 0.0, score=0.2),
        g(None, 1.0, score=0.4),
        g(None, 0.0, score=0.7),
        g(1.0, 1.0),  # no score: counts for accuracy, not for the probabilistic figures
    ]
    m = window(items).metrics()
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["log_loss"] == pytest.approx(
        -(math.log(0.9) + math.log(0.95) + math.log(0.8) + math.log(0.4) + math.log(0.3)) / 5
    )
    assert m["brier"] == pytest.approx((0.01 + 0.0025 + 0.04 + 0.36 + 0.49) / 5)
    # Confidence of the predicted class: 0.9, 0.95 (bin 9, both right), 0.8 (right), 0.6 and 0.7 (wrong).
    assert m["ece"] == pytest.approx((2 * abs(1 - 0.925) + abs(1 - 0.8) + abs(0 - 0.6) + abs(0 - 0.7)) / 5)


def test_binary_probabilities_give_p_positive_from_either_class() -> None:
    m = window([g(None, 1.0, probabilities={"1": 0.8, "0": 0.2}), g(None, 0.0, probabilities={"0": 0.3})]).metrics()
    # P(positive) = 0.8, and 1 - P("0") = 0.7 where "1" is left out.
    assert m["brier"] == pytest.approx((0.2**2 + 0.7**2) / 2)
    assert m["log_loss"] == pytest.approx(-(math.log(0.8) + math.log(0.3)) / 2)


def test_multiclass_log_loss_brier_and_ece_from_probabilities() -> None:
    items = [
        g(None, "a", probabilities={"a": 0.7, "b": 0.2, "c": 0.1}),  # right, confidence 0.7
        g(None, "b", probabilities={"a": 0.1, "b": 0.3, "c": 0.6}),  # predicts c, confidence 0.6
        g(None, "a", probabilities={"b": 0.8, "c": 0.2}),  # the true class is missing: p = 0, clipped
    ]
    m = window(items).metrics()
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["log_loss"] == pytest.approx(-(math.log(0.7) + math.log(0.3) + math.log(1e-15)) / 3)
    assert m["brier"] == pytest.approx(((0.09 + 0.04 + 0.01) + (0.01 + 0.49 + 0.36) + (0.64 + 0.04 + 1.0)) / 3)
    assert m["ece"] == pytest.approx((0.3 + 0.6 + 0.8) / 3)


def test_values_that_are_no_probabilities_are_not_scored() -> None:
    """1e200 is valid JSON and a valid float, but no probability: it used to overflow the Brier
    score and fail every /metrics render while it sat in the window (found by the fuzz test)."""
    items = [g(None, "a", probabilities={"a": 1e200}), g(None, "a", probabilities={"a": 0.8, "b": 0.2})]
    m = window(items).metrics()
    assert m["brier"] == pytest.approx(0.04 + 0.04)
    assert m["log_loss"] == pytest.approx(-math.log(0.8))


def test_count_window_keeps_the_newest_items() -> None:
    w = window([g("a", "b"), g("a", "b"), g("a", "a"), g("b", "b"), g("c", "c")], window_events=3)
    assert len(w) == 3
    assert w.metrics()["accuracy"] == 1.0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from("abc")), min_size=1, max_size=30), st.integers(1, 10))
def test_count_window_equals_a_batch_over_its_last_items(pairs: list[tuple[str, str]], n: int) -> None:
    w = QualityWindow(window_events=n)
    for p, y in pairs:
        w.add([g(p, y)])
    assert w.metrics() == window([g(p, y) for p, y in pairs[-n:]], window_events=1000).metrics()


def test_time_window_evicts_items_older_than_the_newest_minus_the_window() -> None:
    w = QualityWindow(window_events=None, window_seconds=10)
    w.add([g("a", "b", ts=0.0), g("a", "a", ts=5.0), g("b", "b", ts=12.0)])
    assert len(w) == 2  # cutoff 2: t=0 left
    assert w.metrics()["accuracy"] == 1.0
    w.add([g("a", "b", ts=15.0), g("a", "b")])  # cutoff 5: t=5 stays (not < 5); no timestamp: takes 15
    assert len(w) == 4
    w.add([g("c", "c", ts=25.5)])  # cutoff 15.5: only the newest stays
    assert len(w) == 1
    assert w.metrics()["accuracy"] == 1.0


def test_time_window_items_before_any_timestamp_take_the_first_one() -> None:
    w = QualityWindow(window_events=None, window_seconds=10)
    w.add([g("a", "b"), g("a", "a", ts=100.0)])
    assert len(w) == 2
    w.add([g("a", "a", ts=111.0)])
    assert len(w) == 1


def test_task_is_fixed_by_the_first_item_and_the_other_task_is_counted() -> None:
    w = window([g(2.5, 2.0), g("cat", "dog"), g(3.0, 3.0), g(None, 1.5)])
    assert w.task == "regression"
    # Whole numbers are still regression items once the task is regression; a missing prediction is unusable.
    assert (len(w), w.mismatched, w.unusable) == (2, 1, 1)
    c = window([g("cat", "cat"), g(2.5, 2.0), g(None, "dog"), g(None, "dog", score=0.1)])
    assert c.task == "classification"
    assert (len(c), c.mismatched, c.unusable) == (2, 1, 1)


def test_empty_window_has_no_metrics_and_version_moves_with_adds() -> None:
    w = QualityWindow()
    assert w.metrics() == {} and w.task is None
    w.add([])
    assert w.version == 0
    w.add([g("a", "a")])
    w.add([g("a", "b")])
    assert w.version == 2
    assert w.metrics()["accuracy"] == 0.5  # not a stale cache of the first add


def test_confidence_of_the_predicted_class() -> None:
    assert confidence(None, 0.8, None) == 0.8
    assert confidence(None, 0.3, None) == pytest.approx(0.7)
    assert confidence(1.0, 0.3, None) == 0.3  # the prediction says positive, whatever the score
    assert confidence("0", 0.8, None) == pytest.approx(0.2)
    assert confidence("spam", 0.2, None, positive_class="spam") == 0.2
    assert confidence(None, None, {"a": 0.2, "b": 0.5, "c": 0.3}) == 0.5
    assert confidence("c", None, {"a": 0.2, "b": 0.5, "c": 0.3}) == 0.3
    assert confidence("d", None, {"a": 0.2}) == 0.0
    assert confidence("a", None, None) is None


def test_is_wrong() -> None:
    assert is_wrong(g("a", "a")) is False
    assert is_wrong(g("a", "b")) is True
    assert is_wrong(g(None, 1.0, score=0.3)) is True
    assert is_wrong(g(None, "ham", score=0.3), positive_class="spam") is False
    assert is_wrong(g(None, "ham", score=0.3)) is None  # which side is positive is unknown
    assert is_wrong(g(2.5, 2.0)) is None


def test_isotonic_fit_pools_adjacent_violators() -> None:
    centres, values = isotonic_fit([1, 2, 3, 4, 5], [1, 3, 2, 4, 5])
    assert centres.tolist() == [1, 2.5, 4, 5]
    assert values.tolist() == [1, 2.5, 4, 5]
    centres, values = isotonic_fit([1, 2, 3], [3, 2, 1])
    assert (centres.tolist(), values.tolist()) == ([2.0], [2.0])
    # Equal x pool first: x=1 has mean 0.5 > 0 at x=2, so all three pool into one block.
    centres, values = isotonic_fit([1, 1, 2], [1, 0, 0])
    assert centres == pytest.approx([4 / 3]) and values == pytest.approx([1 / 3])
    # Interpolated between centres, flat beyond the ends.
    centres, values = isotonic_fit([0, 1], [0, 1])
    assert isotonic_predict(centres, values, [-1, 0.25, 2]).tolist() == [0, 0.25, 1]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=25))
def test_isotonic_fit_matches_the_min_max_formula(ys: list[int]) -> None:
    centres, values = isotonic_fit(list(range(len(ys))), ys)
    assert np.all(np.diff(values) >= 0) and np.all(np.diff(centres) > 0)
    # The isotonic regression at i is max over j <= i of min over k >= i of mean(y[j..k]).
    y = np.asarray(ys, dtype=float)
    expected = [max(min(y[j : k + 1].mean() for k in range(i, len(y))) for j in range(i + 1)) for i in range(len(y))]
    assert np.unique(np.round(values, 9)).tolist() == np.unique(np.round(expected, 9)).tolist()


def _stream(rng: np.random.Generator, low: float, n: int, truth: Any = None) -> tuple[list[float], list[bool]]:
    conf = rng.uniform(low, 1.0, n)
    p_correct = conf if truth is None else truth(conf)
    return conf.tolist(), (rng.random(n) < p_correct).tolist()


def test_cbpe_estimates_accuracy_on_a_calibrated_stream_and_follows_a_covariate_shift() -> None:
    rng = np.random.default_rng(7)
    est = ConfidenceEstimator(reference_size=2000, window_events=5000)
    ref_conf, ref_ok = _stream(rng, 0.5, 2000)
    est.add_labelled(ref_conf, ref_ok)
    assert est.calibrated
    conf, ok = _stream(rng, 0.5, 5000)
    est.add_predictions(conf)
    assert est.expected_accuracy == pytest.approx(np.mean(ok), abs=0.03)
    conf, ok = _stream(rng, 0.8, 5000)  # more confident, and rightly so: accuracy rises, no labels come
    est.add_predictions(conf)
    reference_accuracy = float(np.mean(ref_ok))
    assert np.mean(ok) - reference_accuracy > 0.1
    assert est.expected_accuracy == pytest.approx(np.mean(ok), abs=0.03)


def test_cbpe_calibration_corrects_an_overconfident_model() -> None:
    rng = np.random.default_rng(11)
    est = ConfidenceEstimator(reference_size=2000, window_events=5000)
    est.add_labelled(*_stream(rng, 0.5, 2000, truth=np.square))  # right with probability conf², not conf
    conf, ok = _stream(rng, 0.5, 5000, truth=np.square)
    est.add_predictions(conf)
    assert np.mean(conf) - np.mean(ok) > 0.1  # raw confidence would be far off
    assert est.expected_accuracy == pytest.approx(np.mean(ok), abs=0.03)


def test_cbpe_waits_for_the_reference_then_ignores_later_labels() -> None:
    est = ConfidenceEstimator(reference_size=3, window_events=10)
    est.add_predictions([0.9])
    est.add_labelled([0.9, 0.6], [True, False])
    assert not est.calibrated and est.expected_accuracy is None
    est.add_labelled([0.7, 0.99], [True, True])  # the third pair completes the reference; the fourth is not used
    assert est.calibrated
    # Fit on (0.6, 0), (0.7, 1), (0.9, 1): iso(0.9) = 1.
    assert est.expected_accuracy == 1.0
    est.add_labelled([0.9] * 10, [False] * 10)
    assert est.expected_accuracy == 1.0
    with pytest.raises(ValueError):
        est.add_labelled([0.5], [])


def test_key_performance_slices_cap_levels_into_other_and_missing_is_free() -> None:
    overflow = Overflow()
    kp = key_performance(overflow)
    kp.add_joined(
        [
            joined("1", "a", "a", ("de",)),
            joined("2", "a", "b", ("fr",)),
            joined("3", "a", "a", ("it",)),
            joined("4", "b", "a", ("es",)),
            joined("5", "a", "a", ("",)),
            joined("6", "a", "a", ()),
        ]
    )
    levels = kp.slices["country"]
    assert list(levels) == ["de", "fr", OTHER, MISSING]  # the first levels seen keep their own window
    assert overflow.counts == {"slice_level": 2}
    assert len(levels[OTHER]) == 2 and len(levels[MISSING]) == 2
    rows = {(m, f, v): x for m, f, v, x in kp.rows()}
    assert rows[("accuracy", ALL, ALL)] == pytest.approx(4 / 6)
    assert rows[("accuracy", "country", "fr")] == 0.0
    assert rows[("accuracy", "country", OTHER)] == 0.5
    assert rows[("accuracy", "country", MISSING)] == 1.0
    kp.add_joined([joined("7", "a", "a", ("pl",))])
    assert overflow.counts == {"slice_level": 3}
    summary = kp.summary()
    assert summary["task"] == "classification" and summary["window"] == 7
    assert summary["slices"]["country"]["de"]["accuracy"] == 1.0


def test_key_performance_estimate_from_labelled_reference() -> None:
    kp = key_performance(Overflow(), reference_size=4, slice_features=())
    assert not kp.labelled
    kp.add_joined([joined(str(i), None, 1.0 if i < 2 else 0.0, score=s) for i, s in enumerate([0.9, 0.8, 0.3, 0.6])])
    # Confidences 0.9, 0.8 (right), 0.7 (right: predicts 0), 0.6 (wrong: predicts 1).
    assert kp.labelled and kp.estimator.calibrated
    assert not any(m == "accuracy_estimated" for m, *_ in kp.rows())
    before = kp.version
    kp.add_predictions([0.6, 0.65, 0.95])
    assert kp.version > before
    # iso: 0.6 → 0, 0.7 → 1 (block 0.7-0.9 all right); 0.65 interpolates to 0.5.
    assert ("accuracy_estimated", ALL, ALL, pytest.approx((0 + 0.5 + 1) / 3)) in kp.rows()
    assert kp.summary()["accuracy_estimated"] == pytest.approx(0.5)


def through_codec(state: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint stores and reads back."""
    back: dict[str, Any] = decode(encode(state))
    return back


def test_snapshots_restore_equal_state_through_the_codec() -> None:
    rng = np.random.default_rng(3)
    w = QualityWindow(window_events=None, window_seconds=50)
    w.add([g(None, float(rng.random() < 0.5), score=float(rng.random()), ts=float(t)) for t in range(80)])
    w2 = QualityWindow(window_events=None, window_seconds=50)
    w2.restore(through_codec(w.snapshot()))
    assert w2.snapshot() == w.snapshot() and w2.metrics() == w.metrics() and w2.task == w.task
    assert len(w2) == 51  # t = 29..79: cutoff 29 is not < 29
    w.add([g(None, 1.0, score=0.9, ts=100.0)])
    w2.add([g(None, 1.0, score=0.9, ts=100.0)])
    assert w2.metrics() == w.metrics() and len(w2) == len(w) == 31  # t = 50..79 and 100

    est = ConfidenceEstimator(reference_size=20, window_events=30)
    est.add_labelled(*_stream(rng, 0.5, 20))
    est.add_predictions(rng.uniform(0.5, 1, 40).tolist())
    est2 = ConfidenceEstimator(reference_size=20, window_events=30)
    est2.restore(through_codec(est.snapshot()))
    assert est2.calibrated and est2.expected_accuracy == est.expected_accuracy
    est.add_predictions([0.55] * 10)
    est2.add_predictions([0.55] * 10)
    assert est2.expected_accuracy == est.expected_accuracy  # the window carried on, its size kept
    half = ConfidenceEstimator(reference_size=20)
    half.add_labelled([0.7], [True])
    half2 = ConfidenceEstimator(reference_size=20)
    half2.restore(through_codec(half.snapshot()))
    assert half2.snapshot() == half.snapshot() and not half2.calibrated

    kp = key_performance(Overflow())
    kp.add_joined([joined(str(i), "a", "ab"[i % 2], (str(i % 3),), score=0.7) for i in range(12)])
    kp2 = key_performance(Overflow())
    kp2.restore(through_codec(kp.snapshot()))
    assert kp2.rows() == kp.rows() and kp2.snapshot() == kp.snapshot()
    assert set(kp2.slices["country"]) == {"0", "1", OTHER}  # max_slice_levels 2


def test_restore_drops_slices_of_features_no_longer_configured() -> None:
    kp = key_performance(Overflow(), slice_features=("country", "device"))
    kp.add_joined([joined("1", "a", "a", ("de", "ios")), joined("2", "a", "b", ("fr", "web"))])
    kp2 = key_performance(Overflow(), slice_features=("device",))
    kp2.restore(through_codec(kp.snapshot()))
    assert list(kp2.slices) == ["device"] and kp2.slices["device"].keys() == {"ios", "web"}
    assert kp2.summary()["metrics"] == kp.summary()["metrics"]


def test_a_window_shows_its_count_and_its_figures_only_from_min_samples() -> None:
    kp = key_performance(Overflow(), min_samples=5)
    assert kp.rows() == []  # no label yet: nothing at all
    kp.add_joined([joined(str(i), "a", "a" if i else "b", ("de",)) for i in range(4)])
    rows = {(m, f, v): x for m, f, v, x in kp.rows()}
    # Four labels, one wrong: accuracy would read 0.75; it is withheld, the count is shown.
    assert rows == {("samples", ALL, ALL): 4.0, ("samples", "country", "de"): 4.0}
    kp.add_joined([joined("4", "a", "a", ("fr",))])
    rows = {(m, f, v): x for m, f, v, x in kp.rows()}
    assert rows[("samples", ALL, ALL)] == 5.0 and rows[("accuracy", ALL, ALL)] == pytest.approx(4 / 5)
    assert ("accuracy", "country", "fr") not in rows and rows[("samples", "country", "fr")] == 1.0
