"""Relative-error quantiles (the DDSketch idea) over fixed log-spaced buckets.

The buckets are fixed, so a sketch is a vector of counts: many sketches (one per key) are one
2-D array that a batch updates at once, and two sketches merge by adding.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

Ints = npt.NDArray[np.int64]


class LogBuckets:
    """Bucket i holds values v with ⌈log_γ v⌉ = i + offset, γ = (1 + a) / (1 - a).

    Any quantile read back is within a factor (1 ± a) of a value of the right rank. Values outside
    [min_value, max_value] are clamped; zero and negative values land in the lowest bucket.

    >>> b = LogBuckets()
    >>> counts = np.bincount(b.index(np.arange(1, 1001, dtype=float)), minlength=b.n_buckets)
    >>> abs(b.quantile(counts, 0.5) - 500) / 500 < 0.01
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
        self.n_buckets = math.ceil(math.log(max_value) / self._gamma_log) - self._offset + 1

    def index(self, values: npt.NDArray[np.float64]) -> Ints:
        """The bucket of each value."""
        clipped = np.clip(values, self.min_value, self.max_value)
        idx = np.ceil(np.log(clipped) / self._gamma_log).astype(np.int64) - self._offset
        return np.clip(idx, 0, self.n_buckets - 1)

    def value(self, bucket: int) -> float:
        """The midpoint (in the relative sense) of a bucket: 2γ^k / (γ + 1)."""
        gamma = math.exp(self._gamma_log)
        return 2 * gamma ** (bucket + self._offset) / (gamma + 1)

    def values(self, buckets: Ints) -> npt.NDArray[np.float64]:
        """`value` of each bucket."""
        gamma = math.exp(self._gamma_log)
        out: npt.NDArray[np.float64] = 2 * np.exp(self._gamma_log * (buckets + self._offset)) / (gamma + 1)
        return out

    def quantile(self, counts: Ints, q: float) -> float:
        """The q-quantile (0 ≤ q ≤ 1) of a count vector by nearest rank, ⌈q·n⌉, as MLPerf reports
        tails; NaN when empty."""
        n = int(counts.sum())
        if n == 0:
            return math.nan
        rank = max(1, math.ceil(q * n))
        return self.value(int(np.searchsorted(np.cumsum(counts), rank)))

    def edges(self, bucket: int) -> tuple[float, float]:
        """The bucket's bounds: (γ^(k-1), γ^k] in value, before clamping."""
        return math.exp(self._gamma_log * (bucket + self._offset - 1)), math.exp(
            self._gamma_log * (bucket + self._offset)
        )

    def band(self, counts: Ints, q: float, alpha: float) -> tuple[float, float, float]:
        """(estimate, lower, upper) of the q-quantile: a (1 − α) confidence sequence, valid at
        every n at once (Howard & Ramdas, "Sequential estimation of quantiles", Bernoulli 2022,
        the fixed-quantile bound with the stitched boundary of Howard et al. 2021): the order
        statistics of ranks (q ∓ u_n)·n, with

            u_n = 1.5 √(q(1 − q) ℓ_n / n) + 0.8 ℓ_n / n,  ℓ_n = 1.4 ln ln(2.1 n) + ln(10 / α),

        widened to the edges of their buckets. Bounds past the data are 0 and inf."""
        n = int(counts.sum())
        if n == 0:
            return math.nan, math.nan, math.nan
        ell = 1.4 * math.log(math.log(2.1 * n)) + math.log(10.0 / alpha)
        u = 1.5 * math.sqrt(q * (1.0 - q) * ell / n) + 0.8 * ell / n
        cum = np.cumsum(counts)

        def bucket(p: float) -> int:
            return int(np.searchsorted(cum, max(1, math.ceil(p * n))))

        lower = self.edges(bucket(q - u))[0] if q - u > 0 else 0.0
        upper = self.edges(bucket(q + u))[1] if q + u < 1 else math.inf
        return self.value(bucket(q)), lower, upper
