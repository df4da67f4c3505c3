"""Helpers shared by the state tests: Traffic fed as a partition feeds it, and snapshots made
comparable."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from daemon.config import LimitsConfig, MetricsConfig
from daemon.ingest.batch import Key, build
from daemon.ingest.events import InferenceEvent
from daemon.monitors.names import Overflow
from daemon.monitors.traffic import Traffic


class FedTraffic:
    """A Traffic fed as a partition feeds it: a row per key in first-seen order, and each event's rank
    among its row's events of the batch, counted here independently of PartitionState. Its snapshot
    carries the keys, as a partition's shard does."""

    def __init__(self, limits: LimitsConfig | None = None, metrics: MetricsConfig | None = None) -> None:
        self.overflow = Overflow()
        self.keys: list[Key] = []
        self.traffic = Traffic(metrics or MetricsConfig(), limits or LimitsConfig(), self.overflow, self.keys)
        self.rows: dict[Key, int] = {}

    def update(self, events: list[InferenceEvent], times: list[float | None] | None = None) -> None:
        n = len(events)
        batch = build(events, [0] * n, list(range(n)), times if times is not None else [None] * n)
        for key in batch.keys:
            if key not in self.rows:
                self.rows[key] = self.traffic.rows
                self.keys.append(key)
                self.traffic.add_rows(1)
        rows = [self.rows[batch.keys[k]] for k in batch.key.tolist()]
        seen: dict[int, int] = {}
        rank = []
        for r in rows:
            rank.append(seen.get(r, 0))
            seen[r] = rank[-1] + 1
        self.traffic.update(np.array(rows, dtype=np.int64), np.array(rank, dtype=np.int64), batch)

    def row(self, key: Key) -> int:
        return self.rows[key]

    def snapshot(self) -> dict[str, Any]:
        return {"keys": [list(k) for k in self.rows], "traffic": self.traffic.snapshot()}

    def restore(self, state: dict[str, Any]) -> None:
        """A new process: the pipeline restores its Overflow counts itself (set them before)."""
        self.rows = {(k[0], k[1], k[2]): row for row, k in enumerate(state["keys"])}
        self.traffic.restore(state["traffic"])


def plain(x: Any) -> Any:
    """A snapshot as comparable values: arrays with their dtype, NaN as a string, tuples as lists."""
    if isinstance(x, np.ndarray):
        return {"dtype": x.dtype.str, "shape": list(x.shape), "values": plain(x.tolist())}
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [plain(v) for v in x]
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    return x
