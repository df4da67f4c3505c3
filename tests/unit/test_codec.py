"""The checkpoint codec: arrays exactly, damage refused, and chunks of shared arrays encoded once."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from daemon.state import codec


def test_a_tree_of_arrays_comes_back_exactly() -> None:
    rng = np.random.default_rng(1)
    tree = {
        "decimals": np.round(rng.normal(30, 5, 1000), 3),
        "raw": rng.random((3, 7)),
        "ints": rng.integers(-5, 5, 100, dtype=np.int32),
        "empty": np.zeros((0, 4)),
        "nested": [{"n": np.int64(3), "s": "x"}, None],
    }
    back = codec.decode(codec.encode(tree))
    for name in ("decimals", "raw", "ints", "empty"):
        assert back[name].dtype == tree[name].dtype and np.array_equal(back[name], tree[name])
    assert back["nested"] == [{"n": 3, "s": "x"}, None]


@pytest.mark.parametrize("cut", [1, 20, 200])
def test_a_cut_blob_is_refused_as_damaged(cut: int) -> None:
    data = codec.encode({"a": np.arange(1000.0) / 7})
    with pytest.raises(codec.CodecError, match="damaged"):
        codec.decode(data[:-cut])


def test_a_chunked_array_encodes_only_the_chunks_marked_changed() -> None:
    rows = 2 * codec.CHUNK_ROWS + 10  # three chunks, the last one partial
    a = np.arange(rows * 4, dtype=np.float64).reshape(rows, 4) / 8
    encoded: list[Any] = []
    first = codec.encode({"refs": codec.chunked(a, encoded)})
    assert np.array_equal(codec.decode(first)["refs"], a) and len(encoded) == 3
    kept = list(encoded)

    a[0, 0] = a[-1, -1] = -1.0  # both changed; only the last chunk is marked
    encoded[2] = None
    back = codec.decode(codec.encode({"refs": codec.chunked(a, encoded)}))["refs"]
    assert back[-1, -1] == -1.0 and back[0, 0] == 0.0  # the first chunk's bytes were kept
    assert encoded[0] is kept[0] and encoded[1] is kept[1] and encoded[2] is not kept[2]

    grown = np.vstack([a, np.ones((5, 4))])  # more rows: the partial chunk is encoded again
    back = codec.decode(codec.encode({"refs": codec.chunked(grown, encoded)}))["refs"]
    assert back.shape == grown.shape and np.array_equal(back[rows:], np.ones((5, 4)))
    assert codec.decode(codec.encode({"refs": codec.chunked(np.zeros((0, 4)), [])}))["refs"].shape == (0, 4)
