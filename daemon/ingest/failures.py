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


class Bad(ValueError):
    """Bad input that a format finds itself, not msgspec (a missing path, tensors that disagree,
    a half without its pair): its reason, and the detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def unreadable(value: bytes | None, max_bytes: int) -> DecodeFailure | None:
    """Why a record's value is not even decoded (a tombstone, oversize), or None."""
    if value is None:
        return DecodeFailure("malformed_json", "record has no value (tombstone)")
    if len(value) > max_bytes:
        return DecodeFailure("oversize", f"{len(value)} bytes > limits.max_event_bytes={max_bytes}")
    return None


def failure_of(exc: Exception) -> DecodeFailure:
    """Why a record was rejected, from what decoding it raised: bad input by its reason; anything
    else is a bug of ours (`internal`), counted like bad input, never the loop's end."""
    if isinstance(exc, Bad):
        return DecodeFailure(exc.reason, str(exc)[:200])
    if isinstance(exc, msgspec.ValidationError):
        return DecodeFailure(classify(exc), str(exc)[:200])
    if isinstance(exc, msgspec.DecodeError):
        return DecodeFailure("malformed_json", str(exc)[:200])
    # msgspec raises these, not DecodeError, for invalid UTF-8 inside a string it decodes and
    # for nesting deeper than the recursion limit: bad input, not a bug of ours.
    if isinstance(exc, (UnicodeDecodeError, RecursionError)):
        return DecodeFailure("malformed_json", f"{type(exc).__name__}: {exc}"[:200])
    return DecodeFailure("internal", f"{type(exc).__name__}: {exc}"[:200])
