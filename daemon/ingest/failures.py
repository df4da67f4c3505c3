"""Why a record was rejected: the bounded set of reasons, and msgspec's errors sorted into them."""

from __future__ import annotations

from typing import Final

import msgspec

# Bounded set of reasons: they become the `reason` label of inferwatch_events_invalid_total.
REASONS: Final = (
    "oversize",
    "malformed_json",
    "malformed_protobuf",  # a record that is not the protobuf message it should be (seldon)
    "not_an_object",
    "missing_field",
    "wrong_type",
    "out_of_range",
    "bad_shape",  # tensors or rows whose lengths disagree (daemon/ingest/formats)
    "unmatched",  # half of a pair that never found the other (cloudevents-inference)
    "internal",
)


class DecodeFailure(msgspec.Struct, frozen=True):
    """Why a record was rejected; `detail` is for the sampled log line and the dead-letter header."""

    reason: str
    detail: str


def classify(exc: msgspec.ValidationError) -> str:
    msg = str(exc)
    if msg.startswith("Object missing required field"):
        return "missing_field"
    if msg.startswith("Expected `object`") and " - at " not in msg:
        return "not_an_object"
    if "out of range" in msg or ">=" in msg or "<=" in msg or "length" in msg or "Invalid enum" in msg:
        return "out_of_range"
    return "wrong_type"
