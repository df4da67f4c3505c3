"""Row-indexed arrays that grow with the keys of a partition."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


def grown(a: npt.NDArray[Any], rows: int, fill: Any = 0) -> npt.NDArray[Any]:
    """`a` with `rows` rows (more than it has): the old ones copied, the new ones `fill`."""
    shape = (rows, *a.shape[1:])
    # Zeros come from calloc: pages no row has touched cost nothing until they are written.
    out = np.zeros(shape, dtype=a.dtype) if fill == 0 else np.full(shape, fill, dtype=a.dtype)
    out[: len(a)] = a
    return out


def capacity(needed: int, have: int) -> int:
    """The rows to grow to: doubling, so that growing costs O(1) per row over a run."""
    return max(needed, 2 * have, 16)
