"""Fuzz through the real broker (issue 7, "Must hold: Fuzz").

100,000 malformed records at random places among valid events, and malformed labels among
valid labels: the daemon stays up, counts the valid records exactly, counts each bad one under
the reason it has by construction (docs/event-schema.md, "Invalid records"), and copies each
bad one to the dead-letter topic once. Nothing here asks the decoder what is invalid.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer

from daemon.config import Config
from daemon.dev.broker import TansuBroker
from daemon.dev.generator import TrafficGenerator, TrafficSpec
from daemon.export.exposition import LoopStats, MetricsExposition
from daemon.ingest.decode import REASONS
from daemon.ingest.sources import RawRecord, chunks_of
from daemon.runtime.app import build_pipeline
from tests.integration.support import Samples, get, parse, produce, running_daemon, total, wait_for

SEED = 7
MALFORMED_EVENTS = 100_000
MALFORMED_LABELS = 2_000
LABEL_EVERY = 5  # every 5th valid event gets a valid label
MAX_EVENT_BYTES = 4096
# Deeper than msgspec can go: it stops at the interpreter's recursion limit (1000 frames).
NESTING = 1500
# No JSON value starts with any of these bytes, so a record that does is malformed whatever follows.
NOT_A_JSON_START = bytes(sorted(set(range(256)) - set(b' \t\n\r{["-0123456789tfn')))
# Per-key figures that must not depend on how records were batched (no _sum: float order).
TRAFFIC = {
    "inferwatch_events_total",
    "inferwatch_errors_total",
    "inferwatch_predictions_total",
    "inferwatch_feature_missing_total",
    "inferwatch_request_latency_seconds_bucket",
    "inferwatch_prediction_score_bucket",
    "inferwatch_last_event_timestamp_seconds",
}

Doc = dict[str, Any]
EVENTS, LABELS = "events", "labels"
# (field, value) pairs that break a schema, by reason: request_id, model and timestamp are in both.
SHARED_WRONG_TYPE = [("request_id", ["r"]), ("model", 5), ("model", None), ("timestamp", "yesterday")]
SHARED_OUT_OF_RANGE = [("request_id", ""), ("request_id", "r" * 257), ("model", ""), ("model", "m" * 129)]
BAD_FIELDS: dict[tuple[str, str], list[tuple[str, Any]]] = {
    (EVENTS, "wrong_type"): [
        *SHARED_WRONG_TYPE,
        ("latency_ms", "fast"),
        ("version", None),
        ("tokens_in", 1.5),
        ("status", 1),
        ("score", "high"),
        ("prediction", [1]),
        ("probabilities", {"a": "x"}),
        ("features", "f0"),
        ("features", [1.0]),
        ("features", {"f0": [1.0]}),
        ("features", {"f0": {"a": 1}}),
    ],
    (LABELS, "wrong_type"): [*SHARED_WRONG_TYPE, ("label", None), ("label", [1]), ("label", {"a": 1})],
    (EVENTS, "out_of_range"): [
        *SHARED_OUT_OF_RANGE,
        ("latency_ms", -1.0),
        ("ttft_ms", -0.5),
        ("status", "maybe"),
        ("tokens_out", 10**10),
        ("variant", ""),
    ],
    (LABELS, "out_of_range"): SHARED_OUT_OF_RANGE,
}
REQUIRED = {EVENTS: ("request_id", "model"), LABELS: ("request_id", "model", "label")}


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _field(reason: str) -> Callable[[random.Random, str, Doc], bytes]:
    return lambda rng, topic, doc: _json(dict([*doc.items(), rng.choice(BAD_FIELDS[topic, reason])]))


def _missing(rng: random.Random, topic: str, doc: Doc) -> bytes:
    gone = rng.choice(REQUIRED[topic])
    return _json({k: v for k, v in doc.items() if k != gone})


# reason → ways to spoil a valid record of either topic into one that is invalid for that reason.
SPOILERS: dict[str, list[Callable[[random.Random, str, Doc], bytes | None]]] = {
    "malformed_json": [
        lambda rng, topic, doc: bytes([rng.choice(NOT_A_JSON_START)]) + rng.randbytes(rng.randrange(100)),
        lambda rng, topic, doc: b"",
        lambda rng, topic, doc: None,  # a tombstone
        lambda rng, topic, doc: _json(doc)[: rng.randrange(len(_json(doc)))],  # no prefix of an object is one
        lambda rng, topic, doc: json.dumps({**doc, "request_id": "caf\xe9"}, ensure_ascii=False).encode("latin-1"),
        lambda rng, topic, doc: _json({**doc, "timestamp": rng.choice([math.nan, math.inf, -math.inf])}),
        lambda rng, topic, doc: _json(doc) * 2,
        lambda rng, topic, doc: _json(doc)[:-1] + b',"x":' + b"[" * NESTING + b"]" * NESTING + b"}",
    ],
    "not_an_object": [lambda rng, topic, doc: _json(rng.choice([[doc], 42, -1.5, "text", None, True]))],
    "missing_field": [_missing],
    "wrong_type": [_field("wrong_type")],
    "out_of_range": [
        _field("out_of_range"),
        # Beyond double range.
        lambda rng, topic, doc: _json({**doc, "timestamp": rng.choice([1, -1]) * 10 ** rng.randrange(309, 1000)}),
    ],
    "oversize": [lambda rng, topic, doc: _json({**doc, "pad": "p" * MAX_EVENT_BYTES})],
}
SPOIL = [(reason, spoil) for reason, spoilers in SPOILERS.items() for spoil in spoilers]

Item = tuple[bytes, bytes | None]


def _malformed(rng: random.Random, topic: str, docs: list[Doc], n: int, bad: Counter[tuple[str, str]]) -> list[Item]:
    """`n` records spoiled from random `docs`, keyed at random; counts them by (topic, reason) in `bad`."""
    items = []
    for i in range(n):
        reason, spoil = rng.choice(SPOIL)
        items.append((f"bad-{i}".encode(), spoil(rng, topic, rng.choice(docs))))
        bad[topic, reason] += 1
    return items


def _interleave(rng: random.Random, good: list[Item], bad: list[Item]) -> list[Item]:
    """`bad` at random places among `good`, whose order is kept."""
    is_bad = [True] * len(bad) + [False] * len(good)
    rng.shuffle(is_bad)
    good_it, bad_it = iter(good), iter(bad)
    return [next(bad_it) if b else next(good_it) for b in is_bad]


def _replay(config: dict[str, Any], topic: str, labels_topic: str, good: list[Item], labels: list[Item]) -> Samples:
    """The scrape of a pipeline fed the valid records alone, in-process."""
    pipeline = build_pipeline(Config.model_validate(config))
    records = [RawRecord(topic, 0, i, None, k, v) for i, (k, v) in enumerate(good)]
    pipeline.process(
        chunks_of(records + [RawRecord(labels_topic, 0, i, None, k, v) for i, (k, v) in enumerate(labels)])
    )
    loop = LoopStats.idle()
    return parse(MetricsExposition(pipeline, pipeline.config.metrics, lambda: loop).render().decode())


def _dead_letters(bootstrap: str, topic: str, expected: int) -> list[Any]:
    """Every record of `topic`, read until `expected` came and one more second brought nothing."""
    c = KafkaConsumer(topic, bootstrap_servers=[bootstrap], group_id=f"{topic}-reader", auto_offset_reset="earliest")
    got: list[Any] = []
    try:
        deadline, quiet_since = time.monotonic() + 60, time.monotonic()
        while time.monotonic() < deadline and (len(got) < expected or time.monotonic() - quiet_since < 1.0):
            batch = [r for recs in c.poll(timeout_ms=200, max_records=10_000).values() for r in recs]
            got += batch
            if batch:
                quiet_since = time.monotonic()
    finally:
        c.close()
    return got


def test_fuzz_keeps_the_daemon_up_and_every_valid_record_counted(
    broker: TansuBroker, tmp_path: Path, unique: str, kafka_client: str
) -> None:
    topic, labels_topic, dlq = f"fuzz-{unique}", f"fuzz-labels-{unique}", f"fuzz-dlq-{unique}"
    broker.create_topics([topic, labels_topic], partitions=3)
    broker.create_topics([dlq])
    rng = random.Random(SEED)
    generator = TrafficGenerator(TrafficSpec(rate=200, duration_s=50, seed=SEED))
    events = list(generator.events())
    label_docs = [generator.label(e) for e in events[::LABEL_EVERY]]
    good: list[Item] = [(e["model"].encode(), _json(e)) for e in events]
    labels: list[Item] = [(d["model"].encode(), _json(d)) for d in label_docs]
    bad: Counter[tuple[str, str]] = Counter()
    produce(broker.bootstrap, topic, _interleave(rng, good, _malformed(rng, EVENTS, events, MALFORMED_EVENTS, bad)))
    bad_labels = _malformed(rng, LABELS, label_docs, MALFORMED_LABELS, bad)
    produce(broker.bootstrap, labels_topic, _interleave(rng, labels, bad_labels))
    n_bad = MALFORMED_EVENTS + MALFORMED_LABELS
    config = {
        "source": {
            "kafka": {
                "bootstrap_servers": [broker.bootstrap],
                "topics": [topic],
                "group_id": f"g-{unique}",
                "client": kafka_client,
            }
        },
        # A label read before its event waits for it: long enough for a slow run.
        "labels": {"topic": labels_topic, "hold_seconds": 3600},
        "dead_letter": {"topic": dlq},
        "limits": {"max_event_bytes": MAX_EVENT_BYTES},
        "drift": {"enabled": False},  # not under test, and its calibration would slow this 2-core run
    }
    with running_daemon(tmp_path, config) as d:
        assert d.proc is not None
        proc = d.proc

        def figures() -> tuple[float, ...]:
            assert proc.poll() is None and get(d.url + "/healthz")[0] == 200, d.logs()[-3000:]
            s = d.scrape()
            return (
                total(s, "inferwatch_events_total"),
                total(s, "inferwatch_events_invalid_total"),
                total(s, "inferwatch_labels_total", outcome="joined"),
                total(s, "inferwatch_dead_letter_records_total", outcome="sent"),
            )

        want = (len(events), n_bad, len(labels), n_bad)
        wait_for(lambda: all(f >= w for f, w in zip(figures(), want, strict=True)), 120, f"figures {want}", 1.0)
        time.sleep(1.0)  # a few more loop turns: nothing further may arrive
        assert figures() == want
        s = d.scrape()
    by_reason: Counter[str] = Counter()
    for (_, reason), n in bad.items():
        by_reason[reason] += n
    assert {r: total(s, "inferwatch_events_invalid_total", reason=r) for r in REASONS} == {
        r: by_reason[r] for r in REASONS
    }
    # The daemon's per-key traffic figures are those of the valid records alone.
    replay = _replay(config, topic, labels_topic, good, labels)
    assert {k: v for k, v in s.items() if k[0] in TRAFFIC} == {k: v for k, v in replay.items() if k[0] in TRAFFIC}

    headers = [dict(r.headers) for r in _dead_letters(broker.bootstrap, dlq, n_bad)]
    # One copy per malformed record: as many as were sent, none of them twice.
    assert (
        len(headers)
        == len({tuple(h[f"__connect.errors.{f}"] for f in ("topic", "partition", "offset")) for h in headers})
        == n_bad
    )
    kinds = {topic.encode(): EVENTS, labels_topic.encode(): LABELS}
    reason_of = "__connect.errors.exception.class.name"
    assert (
        Counter(
            (kinds[h["__connect.errors.topic"]], h[reason_of].decode().removeprefix("inferwatch.")) for h in headers
        )
        == bad
    )
