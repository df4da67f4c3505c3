"""A poll's inference events as one columnar batch: what every monitor reads.

Decoding stays per record (msgspec, strict: `daemon.ingest.decode`); after it the Python work per
event is filling these columns, a comprehension per field. Every monitor then works on arrays.
A missing value is NaN in a float column and -1 in a code column.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain, repeat

import numpy as np
import numpy.typing as npt

from daemon.ingest.events import InferenceEvent, event_time
from detectors.metrics import counted_class

Key = tuple[str, str, str]
Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

_NUMBER = frozenset({float, int, type(None)})
_CATEGORY = frozenset({str, bool, type(None)})
_NO_FEATURES: dict[str, object] = {}
_ERROR = "error"


@dataclass(slots=True, eq=False)
class Feature:
    """One feature's values over a batch."""

    name: str
    # The value where it is a number (not a bool); NaN elsewhere.
    num: Floats | None
    # Index into `levels` where the value is a string or a bool (as "True"/"False"); -1 elsewhere.
    codes: Ints | None
    levels: list[str]
    # The event has the feature, not null.
    present: Bools
    # The event names the feature, null or not; None where that is `present` (no nulls).
    named: Bools | None

    def take(self, idx: Ints) -> Feature:
        return Feature(
            self.name,
            None if self.num is None else self.num[idx],
            None if self.codes is None else self.codes[idx],
            self.levels,
            self.present[idx],
            None if self.named is None else self.named[idx],
        )


@dataclass(slots=True, eq=False)
class Batch:
    """Inference events in input order; per-event objects only in `events` (labels, slices, samples)."""

    events: list[InferenceEvent]
    keys: list[Key]  # distinct (model, version, variant)
    key: Ints  # index into keys
    partition: Ints
    index: Ints  # input position: the record's offset (a file's line number)
    time: Floats  # event time (its own, else the record's), unix seconds
    latency_ms: Floats
    ttft_ms: Floats
    tokens_in: Floats
    tokens_out: Floats
    tpot_ms: Floats  # logged, else derived (`derive_llm`)
    queue_ms: Floats
    decode_ms: Floats
    tokens_per_second: Floats  # logged, else derived (`derive_llm`)
    finish_reasons: list[str]
    finish_reason: Ints  # index into finish_reasons; -1 for none
    error: Bools
    error_types: list[str]
    error_type: Ints  # index into error_types; -1 unless an error
    score: Floats  # the score, else the top class probability
    score_given: Bools  # the event has a score (not only probabilities)
    classes: list[str]
    cls: Ints  # index into classes: the class a prediction is counted under; -1 for none
    features: list[Feature]
    labelled: Ints  # positions of the events that carry their label

    def __len__(self) -> int:
        return len(self.events)

    def take(self, idx: Ints) -> Batch:
        """The events at positions `idx` (in that order)."""
        labelled = np.flatnonzero(np.isin(idx, self.labelled)) if len(self.labelled) else self.labelled
        return Batch(
            [self.events[i] for i in idx.tolist()],
            self.keys,
            self.key[idx],
            self.partition[idx],
            self.index[idx],
            self.time[idx],
            self.latency_ms[idx],
            self.ttft_ms[idx],
            self.tokens_in[idx],
            self.tokens_out[idx],
            self.tpot_ms[idx],
            self.queue_ms[idx],
            self.decode_ms[idx],
            self.tokens_per_second[idx],
            self.finish_reasons,
            self.finish_reason[idx],
            self.error[idx],
            self.error_types,
            self.error_type[idx],
            self.score[idx],
            self.score_given[idx],
            self.classes,
            self.cls[idx],
            [f.take(idx) for f in self.features],
            labelled,
        )


def _floats(values: Sequence[float | int | None]) -> Floats:
    return np.array(values, dtype=np.float64)  # None becomes NaN


def _codes(values: Sequence[object], names: list[str]) -> Ints:
    """Batch-local codes of hashable values (-1 for None), registering names in first-seen order."""
    uniq = [v for v in dict.fromkeys(values) if v is not None]
    table: dict[object, int] = dict(zip(uniq, range(len(names), len(names) + len(uniq)), strict=True))
    table[None] = -1
    names.extend(map(str, uniq))
    return np.fromiter(map(table.__getitem__, values), dtype=np.int64, count=len(values))


def build(
    events: list[InferenceEvent],
    partitions: list[int],
    offsets: list[int],
    record_times: list[float | None],
) -> Batch:
    """The columns of decoded events; the lists give each event's record."""
    n = len(events)
    # A comprehension per field: the fastest way CPython has to turn structs into columns.
    models = [e.model for e in events]
    versions = [e.version for e in events]
    variants = [e.variant for e in events]
    stamps = [e.timestamp for e in events]
    statuses = [e.status for e in events]
    scores = [e.score for e in events]
    predictions = [e.prediction for e in events]
    probabilities = [e.probabilities for e in events]
    labels = [e.label for e in events]
    keys = list(zip(models, versions, variants, strict=True))
    distinct = list(dict.fromkeys(keys))
    key = np.fromiter(
        map(dict(zip(distinct, range(len(distinct)), strict=True)).__getitem__, keys), dtype=np.int64, count=n
    )

    if all(type(t) is float for t in stamps):
        time = _floats(stamps)  # type: ignore[arg-type]
    else:
        time = _floats([event_time(t, r) for t, r in zip(stamps, record_times, strict=True)])

    error = np.fromiter(map(_ERROR.__eq__, statuses), dtype=np.bool_, count=n)
    error_types: list[str] = []
    if error.any():
        types = [(e.error_type or "unknown") if e.status == "error" else None for e in events]
        error_type = _codes(types, error_types)
    else:
        error_type = np.full(n, -1, dtype=np.int64)

    score = _floats(scores)
    score_given = ~np.isnan(score)
    if any(probabilities):
        # Without a score the top class probability is the score, and without a prediction its
        # class is the one counted.
        for i, probs in enumerate(probabilities):
            if probs and scores[i] is None:
                name, p = max(probs.items(), key=_second)
                score[i] = p
                if predictions[i] is None:
                    predictions[i] = name
    classes: list[str] = []
    finish_reasons: list[str] = []
    cls = _class_codes(predictions, classes)

    labelled = np.array([i for i, v in enumerate(labels) if v is not None], dtype=np.int64)
    return Batch(
        events,
        distinct,
        key,
        np.array(partitions, dtype=np.int64),
        np.array(offsets, dtype=np.int64),
        time,
        _floats([e.latency_ms for e in events]),
        _floats([e.ttft_ms for e in events]),
        _floats([e.tokens_in for e in events]),
        _floats([e.tokens_out for e in events]),
        _floats([e.tpot_ms for e in events]),
        _floats([e.queue_ms for e in events]),
        _floats([e.decode_ms for e in events]),
        _floats([e.tokens_per_second for e in events]),
        finish_reasons,
        _codes([e.finish_reason for e in events], finish_reasons),
        error,
        error_types,
        error_type,
        score,
        score_given,
        classes,
        cls,
        _features([e.features for e in events]),  # type: ignore[misc]
        labelled,
    )


def derive_llm(batch: Batch) -> None:
    """Fill in what an LLM event left out but logged enough for (in place, after the plausibility
    bounds dropped what they drop): time per output token = (latency - TTFT) / (tokens_out - 1),
    the mean gap between output tokens after the first (vLLM's TPOT); output tokens per second =
    tokens_out / latency."""
    latency, ttft, out = batch.latency_ms, batch.ttft_ms, batch.tokens_out
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = (latency - ttft) / (out - 1.0)
        per_second = out / (latency / 1000.0)
    gap = np.isnan(batch.tpot_ms) & (out >= 2) & (latency >= ttft)  # NaN compares False
    batch.tpot_ms[gap] = tpot[gap]
    gap = np.isnan(batch.tokens_per_second) & (latency > 0) & (out >= 0)
    batch.tokens_per_second[gap] = per_second[gap]


def _second(item: tuple[str, float]) -> float:
    return item[1]


def _class_codes(predictions: Sequence[object], classes: list[str]) -> Ints:
    """Codes of the classes predictions are counted under (counted_class; -1 for none). Values a dict
    takes for one key (True, 1 and 1.0) name one class, so one lookup per distinct value does."""
    names: dict[str, int] = {}
    table: dict[object, int] = {None: -1}
    for v in dict.fromkeys(predictions):
        if v is None:
            continue
        name = counted_class(v)  # type: ignore[arg-type]
        if name is None:
            table[v] = -1
            continue
        code = names.get(name)
        if code is None:
            code = names[name] = len(classes)
            classes.append(name)
        table[v] = code
    return np.fromiter(map(table.__getitem__, predictions), dtype=np.int64, count=len(predictions))


def _features(dicts: Sequence[dict[str, object] | None]) -> list[Feature]:
    if not any(dicts):
        return []
    feats = [d if d is not None else _NO_FEATURES for d in dicts]
    # The names in first-seen order. Usually every event names the same features: a set union
    # (no order kept, a third of the cost) that equals the first event's names says so.
    first = next(f for f in feats if f)
    seen = set().union(*feats)
    names = list(first) if len(seen) == len(first) else list(dict.fromkeys(chain.from_iterable(feats)))
    return [_feature(name, list(map(dict.get, feats, repeat(name))), feats) for name in names]


def _feature(name: str, column: list[object], feats: list[dict[str, object]]) -> Feature:
    types = set(map(type, column))
    levels: list[str] = []
    num: Floats | None = None
    codes: Ints | None = None
    if types <= _NUMBER:
        num = np.array(column, dtype=np.float64)
        present = ~np.isnan(num)
    elif types <= _CATEGORY:
        if bool in types:
            column = [("True" if v else "False") if type(v) is bool else v for v in column]
        codes = _codes(column, levels)
        present = codes >= 0
    else:  # mixed: numbers for numeric streams, strings and bools for categorical ones
        num = np.array([v if type(v) is float or type(v) is int else math.nan for v in column], dtype=np.float64)
        codes = _codes([(str(v) if type(v) is str or type(v) is bool else None) for v in column], levels)
        present = np.array([v is not None for v in column], dtype=np.bool_)
    named = None
    if not present.all() and type(None) in types:
        named = np.fromiter(map(dict.__contains__, feats, repeat(name)), dtype=np.bool_, count=len(feats))
    return Feature(name, num, codes, levels, present, named)
