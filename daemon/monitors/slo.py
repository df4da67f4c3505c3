"""Goodput against each model's service-level objectives (config `slo`), per key, as arrays.

Per key row and objective, the requests judged against it and the good ones:

| objective | judged requests | good when |
|---|---|---|
| latency | those that are not LLM requests, with a latency | latency_ms ≤ `latency_ms` |
| ttft | LLM requests with a TTFT | ttft_ms ≤ `ttft_ms` |
| tpot | LLM requests with a time per output token | tpot_ms ≤ `tpot_ms` |
| e2e | LLM requests with a latency | latency_ms ≤ `e2e_ms` |
| goodput | every request | not an error, and every objective above it was judged on met |

An LLM request logs TTFT or output tokens. An objective the model does not set judges nothing.
The objectives themselves are gauges (`inferwatch_slo_objective{model, slo}`: latency-like ones
in seconds, goodput, error_rate and accuracy as ratios), so the alert rules read each model's
budget from the daemon instead of constants.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from daemon.config import SloConfig, SloTargets
from daemon.export.families import Sink, escape
from daemon.ingest.batch import Batch, Key
from daemon.monitors.arrays import grown

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]

# Per-request objectives: (name, the target's field, the batch column, for LLM requests?).
PER_REQUEST = (
    ("latency", "latency_ms", "latency_ms", False),
    ("ttft", "ttft_ms", "ttft_ms", True),
    ("tpot", "tpot_ms", "tpot_ms", True),
    ("e2e", "e2e_ms", "latency_ms", True),
)
SLOS = (*(name for name, *_ in PER_REQUEST), "goodput")
GOODPUT = len(PER_REQUEST)


def limits(targets: SloTargets) -> list[float]:
    """The per-request objectives in ms, inf where the model sets none."""
    return [
        np.inf if getattr(targets, field) is None else float(getattr(targets, field)) for _, field, *_ in PER_REQUEST
    ]


def objectives(targets: SloTargets) -> dict[str, float]:
    """The gauges' values: per-request objectives in seconds, the others as ratios."""
    out = {name: getattr(targets, field) / 1000.0 for name, field, *_ in PER_REQUEST if getattr(targets, field)}
    out["goodput"] = targets.goodput
    for name in ("error_rate", "accuracy"):
        if getattr(targets, name) is not None:
            out[name] = getattr(targets, name)
    return out


def judge(batch: Batch, lim: Floats) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Per event (lim[i]: its model's per-request objectives, ms) and objective (columns: SLOS),
    whether it was judged against it and whether it met it."""
    llm = ~np.isnan(batch.ttft_ms) | ~np.isnan(batch.tokens_out)
    judged = np.zeros((len(lim), len(SLOS)), dtype=np.bool_)
    good = np.zeros_like(judged)
    for i, (_, _, column, for_llm) in enumerate(PER_REQUEST):
        values = getattr(batch, column)
        judged[:, i] = ~np.isnan(values) & (llm if for_llm else ~llm) & np.isfinite(lim[:, i])
        good[:, i] = judged[:, i] & (values <= lim[:, i])
    judged[:, GOODPUT] = True
    good[:, GOODPUT] = ~batch.error & ~(judged[:, :GOODPUT] & ~good[:, :GOODPUT]).any(axis=1)
    return judged, good


class Slo:
    """Per key row: requests judged against each objective, and the good ones (columns: SLOS)."""

    def __init__(self, config: SloConfig, keys: list[Key]) -> None:
        self.config = config
        self.keys = keys
        self.rows = 0
        self.limits = np.zeros((0, len(PER_REQUEST)), dtype=np.float64)  # ms, inf: none
        self.requests = np.zeros((0, len(SLOS)), dtype=np.int64)
        self.good = np.zeros((0, len(SLOS)), dtype=np.int64)

    def add_rows(self, n: int) -> None:
        start, self.rows = self.rows, self.rows + n
        if self.rows > len(self.requests):
            capacity = max(self.rows, 2 * len(self.requests), 16)
            self.limits = grown(self.limits, capacity, np.inf)
            self.requests = grown(self.requests, capacity)
            self.good = grown(self.good, capacity)
        for row in range(start, self.rows):
            self.limits[row] = limits(self.config.of(self.keys[row][0]))

    def update(self, rows: Ints, batch: Batch) -> npt.NDArray[np.bool_]:
        """Count the batch; return per event whether it was good (for the canary's goodput)."""
        judged, good = judge(batch, self.limits[rows])
        np.add.at(self.requests, rows, judged.astype(np.int64))
        np.add.at(self.good, rows, good.astype(np.int64))
        return good[:, GOODPUT]

    def snapshot(self) -> dict[str, Any]:
        n = self.rows
        return {"slos": list(SLOS), "requests": self.requests[:n].copy(), "good": self.good[:n].copy()}

    def restore(self, state: dict[str, Any] | None) -> None:
        """A snapshot's counts into this partition's rows (added already); None (a checkpoint from
        before the SLO counts): they start at zero."""
        if state is None:
            return
        if list(state["slos"]) != list(SLOS):
            raise ValueError(f"slo snapshot: objectives {state['slos']!r}, expected {list(SLOS)!r}")
        n = len(state["requests"])
        if n != self.rows or len(state["good"]) != n:
            raise ValueError(f"slo snapshot: {n} rows for {self.rows} keys")
        self.requests[:n] = state["requests"]
        self.good[:n] = state["good"]


# -- the exposition: a copy under the lock, samples outside it ---------------------------------


@dataclass(slots=True)
class SloCopy:
    """Per key its counts, summed over the partitions that hold it; per model its objectives."""

    counts: dict[Key, tuple[Ints, Ints]]
    objectives: dict[str, dict[str, float]]


def copy(s: Slo, keys: list[Key], into: SloCopy | None = None) -> SloCopy:
    """Add a partition's counts to `into` (a fresh copy when None); call under the pipeline's lock."""
    out = into or SloCopy({}, {})
    for row in range(s.rows):
        key = keys[row]
        held = out.counts.get(key)
        req, good = s.requests[row].copy(), s.good[row].copy()
        out.counts[key] = (req, good) if held is None else (held[0] + req, held[1] + good)
        if key[0] not in out.objectives:
            out.objectives[key[0]] = objectives(s.config.of(key[0]))
    return out


def collect(c: SloCopy, key_set: Any, out: Sink) -> None:
    """`key_set(key)`: a key's label set."""
    sets, requests, good = [], [], []
    for key, (req, g) in c.counts.items():
        base = key_set(key)
        for i, name in enumerate(SLOS):
            if name == "goodput" or req[i]:
                sets.append(f'{base},slo="{name}"')
                requests.append(int(req[i]))
                good.append(int(g[i]))
    out.samples("inferwatch_slo_requests", sets, requests)
    out.samples("inferwatch_slo_good_requests", sets, good)
    gauges = [(f'model="{escape(m)}",slo="{name}"', v) for m, objs in c.objectives.items() for name, v in objs.items()]
    out.samples("inferwatch_slo_objective", [g[0] for g in gauges], [g[1] for g in gauges])
