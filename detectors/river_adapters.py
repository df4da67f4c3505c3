"""Thin adapters that give River's drift detectors the `Detector` shape (see detectors/base.py).

River does the detecting; these classes check parameters, skip non-finite numbers, collect
detection indices in `update_many()`, and pickle the River object into `snapshot()`. A pickle
ties the snapshot to the River version that wrote it, so the version is recorded and a
mismatch is refused. Only restore snapshots this process (or a trusted peer) wrote: unpickling
runs code.
"""

from __future__ import annotations

import base64
import math
import pickle
from collections.abc import Iterable
from importlib.metadata import version
from typing import TYPE_CHECKING, Any, ClassVar

from detectors.base import InputKind, Parametrised, check_float, check_int, check_state

if TYPE_CHECKING:
    from river.base import BinaryDriftDetector, DriftDetector

# River is imported where a detector is built: it pulls in scipy.stats (~60 MB of RSS), which
# the default detectors do without.
# Pickled River objects only load under the River version that wrote them.
RIVER_VERSION = version("river")


class _RiverAdapter(Parametrised):
    input_kind: ClassVar[InputKind]

    def _reset(self) -> None:
        self._det = self._make()

    def _make(self) -> DriftDetector | BinaryDriftDetector:
        raise NotImplementedError

    def _accept(self, x: Any) -> Any:
        """The value to feed River, or None to skip it."""
        raise NotImplementedError

    def update(self, x: Any) -> None:
        v = self._accept(x)
        if v is not None:
            self._det.update(v)

    def update_many(self, xs: Iterable[Any], *, stop_at_first: bool = False) -> list[int]:
        hits: list[int] = []
        det, accept = self._det, self._accept
        for i, x in enumerate(xs):
            v = accept(x)
            if v is not None:
                det.update(v)
                if det.drift_detected:
                    hits.append(i)
                    if stop_at_first:
                        break
        return hits

    @property
    def drift_detected(self) -> bool:
        return bool(self._det.drift_detected)

    def snapshot(self) -> dict[str, Any]:
        return {
            "kind": type(self).__name__,
            "params": self._params(),
            "river_version": RIVER_VERSION,
            "pickle": base64.b64encode(pickle.dumps(self._det, protocol=5)).decode("ascii"),
        }

    def restore(self, state: dict[str, Any]) -> None:
        check_state(state, type(self).__name__, self._params())
        if state.get("river_version") != RIVER_VERSION:
            raise ValueError(
                f"snapshot was written by river {state.get('river_version')!r} but river {RIVER_VERSION} is "
                "installed; pickled River state does not cross versions, so start this detector fresh"
            )
        det = pickle.loads(base64.b64decode(state["pickle"]))
        if type(det) is not type(self._det):
            raise ValueError(f"snapshot holds a {type(det).__name__}, expected {type(self._det).__name__}")
        self._det = det


class _NumericAdapter(_RiverAdapter):
    input_kind: ClassVar[InputKind] = "numeric"

    def _accept(self, x: Any) -> Any:
        v = float(x)
        return v if math.isfinite(v) else None


class _BinaryAdapter(_RiverAdapter):
    input_kind: ClassVar[InputKind] = "binary"

    def _accept(self, x: Any) -> Any:
        return bool(x)


class ADWINDetector(_NumericAdapter):
    """ADaptive WINdowing: drops the older part of its window when the two parts' means differ.

    >>> import random
    >>> rng = random.Random(0)
    >>> d = ADWINDetector()
    >>> hits = d.update_many([rng.gauss(0, 1) for _ in range(2000)] + [rng.gauss(3, 1) for _ in range(500)])
    >>> 2000 <= hits[0] < 2100
    True
    """

    _param_names = ("delta", "clock", "max_buckets", "min_window_length", "grace_period")

    def __init__(
        self,
        delta: float = 0.002,
        clock: int = 32,
        max_buckets: int = 5,
        min_window_length: int = 5,
        grace_period: int = 10,
    ) -> None:
        check_float("delta", delta, 0, 1, low_open=True, high_open=True)
        check_int("clock", clock, 1)
        check_int("max_buckets", max_buckets, 2)
        check_int("min_window_length", min_window_length, 1)
        check_int("grace_period", grace_period, 1)
        self.delta = delta
        self.clock = clock
        self.max_buckets = max_buckets
        self.min_window_length = min_window_length
        self.grace_period = grace_period
        self._reset()

    def _make(self) -> DriftDetector:
        from river.drift import ADWIN

        return ADWIN(**self._params())  # type: ignore[no-untyped-call]


class PageHinkleyDetector(_NumericAdapter):
    """Page-Hinkley CUSUM on the deviation from the running mean.

    River's default threshold (50) raises false alarms on stationary N(0, 1) data; calibrate it.

    >>> d = PageHinkleyDetector(threshold=20)
    >>> d.update_many([0.0] * 1000 + [2.0] * 100)[0] in range(1000, 1020)
    True
    """

    _param_names = ("min_instances", "delta", "threshold", "alpha", "mode")

    def __init__(
        self,
        min_instances: int = 30,
        delta: float = 0.005,
        threshold: float = 50.0,
        alpha: float = 0.9999,
        mode: str = "both",
    ) -> None:
        check_int("min_instances", min_instances, 1)
        check_float("delta", delta, 0, math.inf, high_open=True)
        check_float("threshold", threshold, 0, math.inf, low_open=True, high_open=True)
        check_float("alpha", alpha, 0, 1, low_open=True)
        if mode not in ("both", "up", "down"):
            raise ValueError(f"mode must be one of 'both', 'up', 'down', got {mode!r}")
        self.min_instances = min_instances
        self.delta = delta
        self.threshold = threshold
        self.alpha = alpha
        self.mode = mode
        self._reset()

    def _make(self) -> DriftDetector:
        from river.drift import PageHinkley

        return PageHinkley(**self._params())


class KSWINDetector(_NumericAdapter):
    """Kolmogorov-Smirnov test of the newest `stat_size` values against a sample of the older window.

    Slow (scipy's ks_2samp on every update, ~7k updates/s): keep it off the per-event hot path.
    `seed` defaults to 0, not River's None, so replays and clones are reproducible.

    >>> d = KSWINDetector(alpha=0.0001)
    >>> d.update_many([float(i % 10) for i in range(300)] + [20.0] * 100)[0] in range(300, 330)
    True
    """

    _param_names = ("alpha", "window_size", "stat_size", "seed")

    def __init__(self, alpha: float = 0.005, window_size: int = 100, stat_size: int = 30, seed: int = 0) -> None:
        check_float("alpha", alpha, 0, 1, low_open=True, high_open=True)
        check_int("window_size", window_size, 2)
        # River samples stat_size values from the window's older window_size - stat_size values.
        check_int("stat_size", stat_size, 1, window_size // 2)
        check_int("seed", seed, 0)
        self.alpha = alpha
        self.window_size = window_size
        self.stat_size = stat_size
        self.seed = seed
        self._reset()

    def _make(self) -> DriftDetector:
        from river.drift import KSWIN

        return KSWIN(**self._params())


class DDMDetector(_BinaryAdapter):
    """Drift Detection Method: error rate p + s above its minimum p_min + drift_threshold · s_min.

    >>> import random
    >>> rng = random.Random(1)
    >>> d = DDMDetector(warm_start=500)
    >>> hits = d.update_many([rng.random() < 0.05 for _ in range(3000)] + [rng.random() < 0.5 for _ in range(500)])
    >>> 3000 <= hits[0] < 3100
    True
    """

    _param_names = ("warm_start", "warning_threshold", "drift_threshold")

    def __init__(self, warm_start: int = 30, warning_threshold: float = 2.0, drift_threshold: float = 3.0) -> None:
        check_int("warm_start", warm_start, 1)
        check_float("warning_threshold", warning_threshold, 0, math.inf, low_open=True, high_open=True)
        check_float("drift_threshold", drift_threshold, warning_threshold, math.inf, high_open=True)
        self.warm_start = warm_start
        self.warning_threshold = warning_threshold
        self.drift_threshold = drift_threshold
        self._reset()

    def _make(self) -> BinaryDriftDetector:
        from river.drift.binary import DDM

        return DDM(**self._params())


class EDDMDetector(_BinaryAdapter):
    """Early DDM: watches the distance between errors; drift when it shrinks below beta of its best.

    >>> import random
    >>> rng = random.Random(1)
    >>> d = EDDMDetector()
    >>> hits = d.update_many([rng.random() < 0.05 for _ in range(3000)] + [rng.random() < 0.5 for _ in range(500)])
    >>> hits[-1] >= 3000
    True
    """

    _param_names = ("warm_start", "alpha", "beta")

    def __init__(self, warm_start: int = 30, alpha: float = 0.95, beta: float = 0.9) -> None:
        check_int("warm_start", warm_start, 1)
        check_float("alpha", alpha, 0, 1, low_open=True, high_open=True)
        check_float("beta", beta, 0, alpha, low_open=True)
        self.warm_start = warm_start
        self.alpha = alpha
        self.beta = beta
        self._reset()

    def _make(self) -> BinaryDriftDetector:
        from river.drift.binary import EDDM

        return EDDM(**self._params())


class HDDMADetector(_BinaryAdapter):
    """Hoeffding's-bound DDM on averages (A-test).

    >>> import random
    >>> rng = random.Random(1)
    >>> d = HDDMADetector()
    >>> hits = d.update_many([rng.random() < 0.05 for _ in range(3000)] + [rng.random() < 0.5 for _ in range(500)])
    >>> 3000 <= hits[0] < 3200
    True
    """

    _param_names = ("drift_confidence", "warning_confidence", "two_sided_test")

    def __init__(
        self, drift_confidence: float = 0.001, warning_confidence: float = 0.005, two_sided_test: bool = False
    ) -> None:
        check_float("drift_confidence", drift_confidence, 0, 1, low_open=True, high_open=True)
        check_float("warning_confidence", warning_confidence, 0, 1, low_open=True, high_open=True)
        if not isinstance(two_sided_test, bool):
            raise ValueError(f"two_sided_test must be a bool, got {two_sided_test!r}")
        self.drift_confidence = drift_confidence
        self.warning_confidence = warning_confidence
        self.two_sided_test = two_sided_test
        self._reset()

    def _make(self) -> BinaryDriftDetector:
        from river.drift.binary import HDDMA

        return HDDMA(**self._params())  # type: ignore[no-untyped-call]


class HDDMWDetector(_BinaryAdapter):
    """Hoeffding's-bound DDM on exponentially weighted averages (W-test).

    >>> import random
    >>> rng = random.Random(1)
    >>> d = HDDMWDetector()
    >>> hits = d.update_many([rng.random() < 0.05 for _ in range(3000)] + [rng.random() < 0.5 for _ in range(500)])
    >>> 3000 <= hits[0] < 3100
    True
    """

    _param_names = ("drift_confidence", "warning_confidence", "lambda_val", "two_sided_test")

    def __init__(
        self,
        drift_confidence: float = 0.001,
        warning_confidence: float = 0.005,
        lambda_val: float = 0.05,
        two_sided_test: bool = False,
    ) -> None:
        check_float("drift_confidence", drift_confidence, 0, 1, low_open=True, high_open=True)
        check_float("warning_confidence", warning_confidence, 0, 1, low_open=True, high_open=True)
        check_float("lambda_val", lambda_val, 0, 1, low_open=True)
        if not isinstance(two_sided_test, bool):
            raise ValueError(f"two_sided_test must be a bool, got {two_sided_test!r}")
        self.drift_confidence = drift_confidence
        self.warning_confidence = warning_confidence
        self.lambda_val = lambda_val
        self.two_sided_test = two_sided_test
        self._reset()

    def _make(self) -> BinaryDriftDetector:
        from river.drift.binary import HDDMW

        return HDDMW(**self._params())  # type: ignore[no-untyped-call]


class FHDDMDetector(_BinaryAdapter):
    """Fast Hoeffding DDM: drift when the windowed accuracy falls epsilon below its best.

    River 0.26's FHDDM documents 1 = error but, as in MOA, fires when the mean of its input
    *falls*, so fed errors it flags a falling error rate. This adapter feeds it `not x`
    (correctness), so here too True = error and a rising error rate is what gets flagged.

    >>> import random
    >>> rng = random.Random(1)
    >>> d = FHDDMDetector()
    >>> hits = d.update_many([rng.random() < 0.05 for _ in range(3000)] + [rng.random() < 0.5 for _ in range(500)])
    >>> 3000 <= hits[0] < 3100
    True
    """

    _param_names = ("sliding_window_size", "confidence_level", "short_window_size")

    def __init__(
        self, sliding_window_size: int = 100, confidence_level: float = 1e-6, short_window_size: int | None = None
    ) -> None:
        check_int("sliding_window_size", sliding_window_size, 1)
        check_float("confidence_level", confidence_level, 0, 1, low_open=True, high_open=True)
        if short_window_size is not None:
            check_int("short_window_size", short_window_size, 1, sliding_window_size)
        self.sliding_window_size = sliding_window_size
        self.confidence_level = confidence_level
        self.short_window_size = short_window_size
        self._reset()

    def _make(self) -> BinaryDriftDetector:
        from river.drift.binary import FHDDM

        return FHDDM(**self._params())

    def _accept(self, x: Any) -> Any:
        return not x
