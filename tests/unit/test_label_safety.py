"""No request id and no raw feature value ever becomes a metric label (issue 7, Security),
except the values of configured slice features, within their cap."""

from __future__ import annotations

import json
import random

from daemon.config import from_mapping
from daemon.export.exposition import LoopStats, MetricsExposition
from daemon.ingest.sources import RawRecord, chunks_of
from daemon.runtime.app import build_pipeline


def test_request_ids_and_feature_values_stay_out_of_the_labels() -> None:
    config = from_mapping(
        {"accuracy": {"slice_features": ["country"], "max_slice_levels": 3}, "drift": {"reference_events": 50}}
    )
    pipeline = build_pipeline(config)
    rng = random.Random(2)
    secrets = []
    records = []
    for i in range(600):
        rid = f"req-secret-{i:06d}"
        email = f"user{i}@example.com"  # a raw categorical value: must never be a label
        country = ["DE", "FR", "US", "IT", "ES"][i % 5]
        secrets += [rid, email, f"{1000 + i * 0.37:.2f}"]
        event = {
            "request_id": rid,
            "model": "m",
            "latency_ms": rng.uniform(1, 50),
            "prediction": i % 2,
            "label": rng.randrange(2),
            "features": {"email": email, "amount": round(1000 + i * 0.37, 2), "country": country},
        }
        records.append(RawRecord("t", 0, i, None, None, json.dumps(event).encode()))
    pipeline.process(chunks_of(records))
    text = MetricsExposition(pipeline, config.metrics, lambda: LoopStats.idle()).render().decode()
    leaked = [s for s in secrets if s in text]
    assert leaked == []
    # The configured slice feature is the exception, capped: 3 levels, then __other__.
    slices = {
        line.split('slice_value="')[1].split('"')[0] for line in text.splitlines() if 'slice_feature="country"' in line
    }
    assert slices == {"DE", "FR", "US", "__other__"}
    assert 'feature="email"' in text  # a feature's name is a label (bounded by limits.max_features), its values are not
