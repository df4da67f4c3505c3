"""Fuzz of decode + Pipeline.process: any batch, on either topic, is counted record by record.

Every record ends up once as a valid event or label, or once as invalid under the reason the
decoder gives it alone; no input is an `internal` failure (that reason means a bug of ours).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.config import Config
from daemon.dev.generator import TrafficGenerator, TrafficSpec
from daemon.ingest.decode import DecodeFailure, EventDecoder
from daemon.ingest.events import InferenceEvent
from daemon.ingest.sources import RawRecord, chunks_of
from daemon.runtime.app import build_pipeline

EVENTS, LABELS = "events", "labels"
MAX_EVENT_BYTES = 4096
CONFIG = Config.model_validate({"labels": {"topic": LABELS}, "limits": {"max_event_bytes": MAX_EVENT_BYTES}})
_generator = TrafficGenerator(TrafficSpec(rate=20, duration_s=1, seed=3))
VALID_EVENTS = list(_generator.events())
VALID_LABELS = [_generator.label(e) for e in VALID_EVENTS]
FIELDS = sorted({k for d in VALID_EVENTS + VALID_LABELS for k in d} | set(InferenceEvent.__struct_fields__))

# Floats include NaN and ±Infinity (json.dumps writes them as bare literals), integers are unbounded.
json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
# Text that latin-1 and UTF-8 write differently.
accented = st.text(st.characters(min_codepoint=0x80, max_codepoint=0xFF), min_size=1, max_size=5)
# A valid event or label with some fields replaced by arbitrary JSON and some removed.
documents = st.builds(
    lambda doc, changes, drop: {k: v for k, v in {**doc, **changes}.items() if k not in drop},
    st.sampled_from(VALID_EVENTS + VALID_LABELS),
    st.dictionaries(st.sampled_from(FIELDS), json_values | accented, max_size=3),
    st.sets(st.sampled_from(FIELDS), max_size=2),
)
# Written in the wrong codec too: latin-1 or utf-16 bytes are not UTF-8.
serialized = st.builds(
    lambda doc, codec: json.dumps(doc, ensure_ascii=False).encode(codec, "replace"),
    documents | json_values,
    st.sampled_from(["utf-8", "latin-1", "utf-16"]),
)
# Damage at a random place: a cut, or junk bytes spliced in.
damaged = st.builds(
    lambda value, at, junk: value[: at % (len(value) + 1)] + junk,
    serialized,
    st.integers(min_value=0),
    st.binary(max_size=4),
) | st.builds(
    lambda value, at, junk: value[:at] + junk + value[at:], serialized, st.integers(0, 300), st.binary(max_size=4)
)
# An ignored field nested past msgspec's recursion limit (about 1000 levels) or not.
nested = st.integers(0, 2000).map(
    lambda depth: b'{"request_id":"r","model":"m","x":' + b"[" * depth + b"]" * depth + b"}"
)
fuzz_values = st.none() | st.binary(max_size=300) | serialized | damaged | nested
pristine = st.sampled_from([(EVENTS, e) for e in VALID_EVENTS] + [(LABELS, e) for e in VALID_LABELS]).map(
    lambda topic_doc: (topic_doc[0], json.dumps(topic_doc[1]).encode(), True)
)
records = st.lists(
    pristine | st.builds(lambda topic, value: (topic, value, False), st.sampled_from([EVENTS, LABELS]), fuzz_values),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(records)
def test_every_record_is_counted_once_and_none_is_internal(batch: list[tuple[str, bytes | None, bool]]) -> None:
    pipeline = build_pipeline(CONFIG)
    decoders: dict[str, EventDecoder[Any]] = {EVENTS: pipeline.decoder.events, LABELS: pipeline.decoder.labels}
    alone = [decoders[topic].decode(value) for topic, value, _ in batch]
    failures = Counter(o.reason for o in alone if isinstance(o, DecodeFailure))
    valid_events = sum(isinstance(o, InferenceEvent) for o in alone)

    pipeline.process(chunks_of([RawRecord(topic, 0, i, 1.0, None, value) for i, (topic, value, _) in enumerate(batch)]))

    assert failures["internal"] == 0, [o for o in alone if isinstance(o, DecodeFailure) and o.reason == "internal"]
    assert {r: n for r, n in pipeline.totals().invalid.items() if n} == dict(failures)
    assert pipeline.events == valid_events
    # Untouched generator records are valid.
    assert not [
        o for o, (_, _, pristine) in zip(alone, batch, strict=True) if pristine and isinstance(o, DecodeFailure)
    ]
