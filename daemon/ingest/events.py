"""The inference event schema: its single definition, and the JSON Schema generated from it.

`docs/event-schema.md` documents these fields; `docs/event-schema.json` is generated from
`InferenceEvent` by `inferwatch schema` and a test keeps the two in step.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

import msgspec

from detectors.metrics import Label as Label  # the events' one definition (re-exported)

# Identifiers become Prometheus label values, so they are bounded: a 1 MB model name is bad
# input, not a new series.
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128, description="Identifier, 1-128 chars.")]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
# Bounded so that sums stay exact floats in the exposition (an unbounded JSON integer would
# overflow float() at scrape time); no real request has a billion tokens.
TokenCount = Annotated[int, msgspec.Meta(ge=0, le=1_000_000_000)]
FeatureValue = float | str | bool | None

# Values used when an event leaves out `version` or `variant`.
DEFAULT_VERSION = "unknown"
DEFAULT_VARIANT = "default"


class InferenceEvent(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """One inference logged by a model server. Unknown fields are ignored."""

    request_id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    model: Name
    version: Name = DEFAULT_VERSION
    variant: Name = DEFAULT_VARIANT
    # Unix seconds or RFC 3339. When absent, the Kafka record timestamp is used.
    timestamp: float | dt.datetime | None = None
    latency_ms: NonNegative | None = None
    status: Literal["ok", "error"] = "ok"
    error_type: Annotated[str, msgspec.Meta(max_length=128)] | None = None
    prediction: float | str | bool | None = None
    probabilities: dict[str, float] | None = None
    score: float | None = None
    features: dict[str, FeatureValue] | None = None
    label: Label | None = None
    ttft_ms: NonNegative | None = None
    tokens_in: TokenCount | None = None
    tokens_out: TokenCount | None = None
    # LLM serving, as vLLM logs per request (docs/event-schema.md): time per output token (its
    # mean inter-token latency; derived from latency, TTFT and tokens_out when absent), time queued
    # before scheduling, decode time, output tokens per second (derived likewise), why it stopped.
    tpot_ms: NonNegative | None = None
    queue_ms: NonNegative | None = None
    decode_ms: NonNegative | None = None
    tokens_per_second: NonNegative | None = None
    finish_reason: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None


class LabelEvent(msgspec.Struct, frozen=True):
    """Ground truth that arrives later, on its own topic."""

    request_id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    model: Name
    label: Label
    timestamp: float | dt.datetime | None = None


def event_time(ts: float | dt.datetime | None, fallback: float | None) -> float | None:
    """Unix seconds of an event: its own timestamp, else the record's. Naive datetimes are UTC."""
    if ts is None:
        return fallback
    if isinstance(ts, dt.datetime):
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=dt.UTC)
        return ts.timestamp()
    return float(ts)


def json_schema() -> dict[str, Any]:
    """JSON Schema (2020-12) of the inference and label events."""
    (inference, label), defs = msgspec.json.schema_components([InferenceEvent, LabelEvent])
    # msgspec drops the string format inside a union; the decoder only takes RFC 3339 there.
    for definition in defs.values():
        for branch in definition["properties"]["timestamp"]["anyOf"]:
            if branch.get("type") == "string":
                branch["format"] = "date-time"
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "inferwatch events",
        "anyOf": [inference, label],
        "$defs": defs,
    }
