"""Relative-error quantile sketch (the DDSketch idea) over fixed log-spaced buckets."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

# Below this many values a Python loop beats numpy's per-call overhead (~20 us a call), which
# matters when a batch spreads over many keys: at 1,000 keys most get one or two events.
SMALL_BATCH = 32


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
        # Sparse: bucket index → count. Real latency streams touch a few hundred buckets.
        self._counts: dict[int, int] = {}
        self._n = 0

    @property
    def n(self) -> int:
        return self._n

    def update_many(self, values: Sequence[float] | npt.NDArray[np.float64]) -> None:
        n = len(values)
        if n == 0:
            return
        counts = self._counts
        if n < SMALL_BATCH:
            lo, hi, g, off, top = self.min_value, self.max_value, self._gamma_log, self._offset, self._n_buckets - 1
            for v in values:
                i = math.ceil(math.log(min(max(v, lo), hi)) / g) - off
                i = 0 if i < 0 else top if i > top else i
                counts[i] = counts.get(i, 0) + 1
        else:
            clipped = np.clip(np.asarray(values, dtype=np.float64), self.min_value, self.max_value)
            idx = np.ceil(np.log(clipped) / self._gamma_log).astype(np.int64) - self._offset
            uniq, cnt = np.unique(np.clip(idx, 0, self._n_buckets - 1), return_counts=True)
            for i, c in zip(uniq.tolist(), cnt.tolist(), strict=True):
                counts[i] = counts.get(i, 0) + c
        self._n += n

    def update(self, value: float) -> None:
        self.update_many([value])

    def quantile(self, q: float) -> float:
        """The q-quantile (0 ≤ q ≤ 1) by nearest rank, ⌈q·n⌉, as MLPerf reports tails; NaN when empty."""
        if self._n == 0:
            return math.nan
        rank = max(1, math.ceil(q * self._n))
        seen = 0
        for i in sorted(self._counts):
            seen += self._counts[i]
            if seen >= rank:
                break
        # Midpoint (in the relative sense) of bucket i: 2γ^k / (γ + 1).
        gamma = math.exp(self._gamma_log)
        return 2 * gamma ** (i + self._offset) / (gamma + 1)

    def snapshot(self) -> dict[str, Any]:
        index = sorted(self._counts)
        return {"n": self._n, "index": index, "count": [self._counts[i] for i in index]}

    def restore(self, state: dict[str, Any]) -> None:
        self._reset()
        self._counts = {int(i): int(c) for i, c in zip(state["index"], state["count"], strict=True)}
        self._n = int(state["n"])
