"""Relative-error quantile sketch (the DDSketch idea) over fixed log-spaced buckets."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt


class QuantileSketch:
    """Quantiles of positive values within `relative_accuracy`, in constant memory.

    Values are bucketed by ⌈log_γ(v)⌉ with γ = (1 + a) / (1 - a), so any reported quantile is
    within a factor (1 ± a) of a value of the right rank. Values outside [min_value,
    max_value] are clamped; zero and negative values land in the lowest bucket.

    >>> s = QuantileSketch()
    >>> s.update_many(np.arange(1, 1001, dtype=float))
    >>> abs(s.quantile(0.5) - 500) / 500 < 0.01
    True
    """

    def __init__(self, relative_accuracy: float = 0.01, min_value: float = 1e-6, max_value: float = 1e6) -> None:
        if not 0 < relative_accuracy < 1:
            raise ValueError(f"relative_accuracy must be in (0, 1), got {relative_accuracy}")
        if not 0 < min_value < max_value:
            raise ValueError(f"need 0 < min_value < max_value, got {min_value}, {max_value}")
        self.relative_accuracy = relative_accuracy
        self.min_value = min_value
        self.max_value = max_value
        self._gamma_log = math.log((1 + relative_accuracy) / (1 - relative_accuracy))
        self._offset = math.ceil(math.log(min_value) / self._gamma_log)
        self._n_buckets = math.ceil(math.log(max_value) / self._gamma_log) - self._offset + 1
        self._reset()

    def _reset(self) -> None:
        self._counts: npt.NDArray[np.int64] = np.zeros(self._n_buckets, dtype=np.int64)
        self._n = 0

    @property
    def n(self) -> int:
        return self._n

    def update_many(self, values: npt.NDArray[np.float64]) -> None:
        if values.size == 0:
            return
        clipped = np.clip(values, self.min_value, self.max_value)
        idx = np.ceil(np.log(clipped) / self._gamma_log).astype(np.int64) - self._offset
        np.add.at(self._counts, np.clip(idx, 0, self._n_buckets - 1), 1)
        self._n += int(values.size)

    def update(self, value: float) -> None:
        self.update_many(np.array([value], dtype=np.float64))

    def quantile(self, q: float) -> float:
        """The q-quantile (0 ≤ q ≤ 1) by nearest rank, ⌈q·n⌉, as MLPerf reports tails; NaN when empty."""
        if self._n == 0:
            return math.nan
        rank = max(1, math.ceil(q * self._n))
        i = int(np.searchsorted(np.cumsum(self._counts), rank, side="left"))
        i = min(i, self._n_buckets - 1)
        # Midpoint (in the relative sense) of bucket i: 2γ^k / (γ + 1).
        gamma = math.exp(self._gamma_log)
        return 2 * gamma ** (i + self._offset) / (gamma + 1)

    def snapshot(self) -> dict[str, Any]:
        nz = np.flatnonzero(self._counts)
        return {"n": self._n, "index": nz.tolist(), "count": self._counts[nz].tolist()}

    def restore(self, state: dict[str, Any]) -> None:
        self._reset()
        self._counts[np.asarray(state["index"], dtype=np.int64)] = np.asarray(state["count"], dtype=np.int64)
        self._n = int(state["n"])
