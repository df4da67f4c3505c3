"""Bounded memory under pressure (issue 7, Pressure): a cardinality attack and labels that never join.

Memory is read with tracemalloc, which slows this allocation-heavy path ~6x, so the bulk of each
stream runs untraced and only its tail is traced, in two stretches. During the first, every bounded
store (the join, the windows, the /metrics cache) replaces its untraced contents with traced ones;
the second then adds only what grows with the stream. Anything kept per name or per id, even one
string, shows there: 10,000 strings of ~60 bytes are ~600 KB against a 256 KB bound.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable
from itertools import count, islice

from daemon.config import from_mapping
from daemon.dev.demo import LABELS_TOPIC, TOPIC
from daemon.dev.generator import TrafficGenerator, TrafficSpec, encode
from daemon.export.exposition import LoopStats, MetricsExposition
from daemon.ingest.sources import RawRecord, chunks_of
from daemon.runtime.app import build_pipeline
from daemon.state.routing import OTHER_KEY

BATCH = 2000  # KafkaConfig.max_poll_records default: what one poll hands the pipeline
MAX_GROWTH_BYTES = 256 * 1024


def _steady_growth(feed: Callable[[int], None], total: int, stretch: int) -> int:
    """Bytes that the last `stretch` of `total` items leave allocated, once bounded stores have turned over."""
    feed(total - 2 * stretch)
    tracemalloc.start()
    try:
        feed(stretch)
        gc.collect()
        settled, _ = tracemalloc.get_traced_memory()
        feed(stretch)
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - settled
    finally:
        tracemalloc.stop()


def _polls(n: int) -> list[int]:
    """The sizes of the polls that hand over `n` records."""
    return [min(BATCH, n - i) for i in range(0, n, BATCH)]


def test_a_cardinality_attack_of_100k_model_names_stays_in_bounded_memory() -> None:
    names, stretch, max_keys, join_cap = 100_000, 10_000, 1000, 5000
    # The demo's config (drift and canary on by default, labels on their own topic); the join's cap
    # is lowered so that it is full long before the traced stretches (the next test bounds it).
    config = from_mapping(
        {"labels": {"topic": LABELS_TOPIC, "max_entries": join_cap}, "limits": {"max_keys": max_keys}}
    )
    pipeline = build_pipeline(config)
    exposition = MetricsExposition(pipeline, config.metrics, lambda: LoopStats.idle())
    gen = TrafficGenerator(TrafficSpec(rate=200, duration_s=names / 200, seed=7, start_time=1_700_000_000.0))
    events, offsets = gen.events(), count()

    def feed(n: int) -> None:
        """`n` events, each of a model never seen before, and their labels a poll later; then a scrape."""
        for size in _polls(n):
            batch = list(islice(events, size))
            for ev in batch:
                ev["model"] = f"name-{ev['request_id']}"
            pipeline.process(chunks_of([RawRecord(TOPIC, 0, next(offsets), None, *encode(ev)) for ev in batch]))
            pipeline.process(
                chunks_of([RawRecord(LABELS_TOPIC, 0, next(offsets), None, *encode(gen.label(ev))) for ev in batch])
            )
        exposition.render()

    growth = _steady_growth(feed, names, stretch)

    assert growth < MAX_GROWTH_BYTES, f"{growth:,} bytes more after the last {stretch:,} names"
    # Every event is counted: the first max_keys names have keys, the rest fold into the overflow key.
    assert pipeline.events == names
    (state,) = pipeline.partitions.values()
    assert len(state.keys) == max_keys + 1 and len(pipeline.router) == max_keys
    other = state.row_of(OTHER_KEY)
    assert other is not None and state.traffic.events[other] == pipeline.overflow.counts["key"] == names - max_keys
    assert state.canary is not None and set(state.canary.models) <= {key[0] for key in state.keys}
    # Every label and every prediction is accounted for once.
    join = state.join
    assert join is not None and len(join) <= join_cap
    c = join.counts
    assert c["joined"] == names  # labels of overflowed models join too: they name the event's model
    assert c["joined"] + c["evicted"] + join.sizes()["predictions"] == names


def test_a_million_labels_whose_predictions_never_come_stay_within_the_join_cap() -> None:
    labels, stretch, max_entries = 1_000_000, 100_000, 50_000
    pipeline = build_pipeline(from_mapping({"labels": {"topic": LABELS_TOPIC, "max_entries": max_entries}}))
    offsets = count()

    def feed(n: int) -> None:
        for size in _polls(n):
            lost = [
                (i, {"request_id": f"lost-{i}", "model": "fraud-detector", "label": 1}) for i in islice(offsets, size)
            ]
            pipeline.process(chunks_of([RawRecord(LABELS_TOPIC, 0, i, None, *encode(label)) for i, label in lost]))

    growth = _steady_growth(feed, labels, stretch)

    assert growth < MAX_GROWTH_BYTES, f"{growth:,} bytes more after the last {stretch:,} labels"
    join = pipeline.partitions[0].join
    assert join is not None
    sizes, c = join.sizes(), join.counts
    assert sizes["held_labels"] <= max_entries and sizes["predictions"] == 0
    # Held, pushed out by newer ones, or expired after labels.hold_seconds: each label exactly once.
    assert sizes["held_labels"] + c["evicted"] + c["unmatched"] == labels
    assert c["joined"] == c["late"] == c["duplicate"] == 0
