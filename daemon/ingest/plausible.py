"""Plausibility bounds on a batch's values: one bad value must not poison a key's figures for good.

A value outside its bound (`plausibility.*` in config) is dropped from its event, as if the event
had not logged it: it stays out of sums, histograms, sketches, drift streams and canary moments,
while the rest of the event counts as usual. An event time too far from its Kafka record's time
(or, with no record time, negative or past the year 2100) is replaced by the record's time.
"""

from __future__ import annotations

import math
from typing import Final, NamedTuple

import numpy as np

from daemon.config import PlausibilityConfig
from daemon.ingest.batch import Batch, Floats

# The fields checked: the `field` label of inferwatch_values_out_of_range_total.
FIELDS: Final = ("latency_ms", "ttft_ms", "tokens_in", "tokens_out", "tpot_ms", "queue_ms", "decode_ms", "timestamp")
# Event times without a record time to compare with: from the epoch to 2100-01-01.
EPOCH_MAX: Final = 4_102_444_800.0


class OutOfRange(NamedTuple):
    """How many values of one field a batch dropped, and the first of them for the log line."""

    field: str
    dropped: int
    value: float
    bound: str
    model: str
    position: int  # the first one's input position (record offset, file line)
    partitions: dict[int, int]  # how many per partition


def enforce(batch: Batch, record_time: Floats, bounds: PlausibilityConfig) -> list[OutOfRange]:
    """Drop `batch`'s implausible values in place (NaN; an event time falls back to the record
    time); return what was dropped, per field."""
    out: list[OutOfRange] = []
    limits = (
        ("latency_ms", batch.latency_ms, bounds.max_latency_ms),
        ("ttft_ms", batch.ttft_ms, bounds.max_ttft_ms),
        ("tokens_in", batch.tokens_in, float(bounds.max_tokens)),
        ("tokens_out", batch.tokens_out, float(bounds.max_tokens)),
        # The LLM timings are parts of a request's latency: bounded as it is.
        ("tpot_ms", batch.tpot_ms, bounds.max_latency_ms),
        ("queue_ms", batch.queue_ms, bounds.max_latency_ms),
        ("decode_ms", batch.decode_ms, bounds.max_latency_ms),
    )
    for field, column, limit in limits:
        bad = column > limit  # NaN compares False: missing stays missing
        if bad.any():
            out.append(_dropped(batch, field, column, bad, f"<= {limit:g}"))
            column[bad] = np.nan
    t = batch.time
    behind = math.inf if bounds.max_timestamp_behind_s is None else bounds.max_timestamp_behind_s
    with np.errstate(invalid="ignore"):
        known = ~np.isnan(record_time)
        skew = t - record_time
        bad = np.where(known, (skew > bounds.max_timestamp_ahead_s) | (skew < -behind), (t < 0) | (t >= EPOCH_MAX))
    if bad.any():
        bound = (
            f"within -{behind:g}s/+{bounds.max_timestamp_ahead_s:g}s of the record time"
            if known[np.argmax(bad)]
            else "in 1970-2100 (no record time)"
        )
        out.append(_dropped(batch, "timestamp", t, bad, bound))
        t[bad] = record_time[bad]
    return out


def _dropped(batch: Batch, field: str, column: Floats, bad: np.ndarray, bound: str) -> OutOfRange:
    first = int(np.argmax(bad))
    parts, counts = np.unique(batch.partition[bad], return_counts=True)
    return OutOfRange(
        field,
        int(bad.sum()),
        float(column[first]),
        bound,
        batch.keys[int(batch.key[first])][0],
        int(batch.index[first]),
        dict(zip(parts.tolist(), counts.tolist(), strict=True)),
    )
