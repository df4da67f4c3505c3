"""Bytes in, a typed event or a reason out. Nothing raised here escapes to the loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Generic, TypeVar

import msgspec

from daemon.ingest.events import InferenceEvent, LabelEvent

# Bounded set of reasons: they become the `reason` label of inferwatch_events_invalid_total.
REASONS: Final = (
    "oversize",
    "malformed_json",
    "not_an_object",
    "missing_field",
    "wrong_type",
    "out_of_range",
    "internal",
)


class DecodeFailure(msgspec.Struct, frozen=True):
    """Why a record was rejected; `detail` is for the sampled log line and the dead-letter header."""

    reason: str
    detail: str


def _classify(exc: msgspec.ValidationError) -> str:
    msg = str(exc)
    if msg.startswith("Object missing required field"):
        return "missing_field"
    if msg.startswith("Expected `object`") and " - at " not in msg:
        return "not_an_object"
    if "out of range" in msg or ">=" in msg or "<=" in msg or "length" in msg or "Invalid enum" in msg:
        return "out_of_range"
    return "wrong_type"


T = TypeVar("T", InferenceEvent, LabelEvent)


class EventDecoder(Generic[T]):
    """Decodes one record value at a time into `type_`, reusing a compiled msgspec decoder."""

    def __init__(self, max_bytes: int, type_: type[T]) -> None:
        self.max_bytes = max_bytes
        self._decoder: msgspec.json.Decoder[T] = msgspec.json.Decoder(type_)
        # Raises on bad input and ignores max_bytes: for callers that check size and fall back
        # to decode() on any exception (the pipeline's hot loop).
        self.fast_decode: Callable[[bytes], T] = self._decoder.decode

    def decode(self, value: bytes | None) -> T | DecodeFailure:
        if value is None:
            return DecodeFailure("malformed_json", "record has no value (tombstone)")
        if len(value) > self.max_bytes:
            return DecodeFailure("oversize", f"{len(value)} bytes > limits.max_event_bytes={self.max_bytes}")
        try:
            event: T = self._decoder.decode(value)
        except msgspec.ValidationError as exc:
            return DecodeFailure(_classify(exc), str(exc)[:200])
        except msgspec.DecodeError as exc:
            return DecodeFailure("malformed_json", str(exc)[:200])
        # msgspec raises these, not DecodeError, for invalid UTF-8 inside a string it decodes and
        # for nesting deeper than the recursion limit: bad input, not a bug of ours ("internal").
        except (UnicodeDecodeError, RecursionError) as exc:
            return DecodeFailure("malformed_json", f"{type(exc).__name__}: {exc}"[:200])
        except Exception as exc:
            return DecodeFailure("internal", f"{type(exc).__name__}: {exc}"[:200])
        # Non-finite numbers cannot get here: JSON has no NaN/Infinity literals and msgspec
        # rejects overflowing ones (1e400) as out of range.
        return event
