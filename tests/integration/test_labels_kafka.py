"""Ground truth on its own topic, on the real broker: labels join predictions and move the accuracy gauge."""

from __future__ import annotations

import json
import time
from pathlib import Path

from daemon.dev.broker import TansuBroker
from tests.integration.support import Samples, produce, running_daemon, total, wait_for

N = 600
LABELLED = 500
WRONG = 100  # of the labelled predictions: accuracy is exactly 0.8
EARLY = 100  # labels sent before their predictions: the join must hold them
STRAY = 20  # labels for request ids that never come: unmatched once the hold expires


def _prediction(i: int) -> bytes:
    score = 0.9 if i % 2 else 0.1
    return json.dumps(
        {
            "request_id": f"req-{i}",
            "model": "clf",
            "version": "3",
            "timestamp": 1_764_300_000.0 + i,
            "latency_ms": 12.0,
            "score": score,
            "prediction": i % 2,
            "features": {"region": "eu" if i % 3 else "us"},
        }
    ).encode()


def _label(i: int) -> bytes:
    truth = i % 2 if i >= WRONG else 1 - i % 2
    return json.dumps({"request_id": f"req-{i}", "model": "clf", "label": truth}).encode()


def _value(s: Samples, metric: str, **labels: str) -> float:
    return total(s, "inferwatch_model_performance", metric=metric, model="clf", version="3", **labels)


def test_a_labels_topic_moves_the_accuracy_gauge(broker: TansuBroker, tmp_path: Path, unique: str) -> None:
    topic, labels_topic = f"preds-{unique}", f"labels-{unique}"
    broker.create_topics([topic, labels_topic], partitions=2)
    # Co-partitioned as docs/operations.md asks: both topics keyed by model.
    produce(broker.bootstrap, labels_topic, [(b"clf", _label(i)) for i in range(EARLY)])
    produce(broker.bootstrap, topic, [(b"clf", _prediction(i)) for i in range(N)])
    produce(broker.bootstrap, labels_topic, [(b"clf", _label(i)) for i in range(EARLY, LABELLED)])
    ghosts = [json.dumps({"request_id": f"ghost-{j}", "model": "clf", "label": 1}).encode() for j in range(STRAY)]
    produce(broker.bootstrap, labels_topic, [(b"clf", v) for v in ghosts])
    config = {
        "source": {"kafka": {"bootstrap_servers": [broker.bootstrap], "topics": [topic], "group_id": f"g-{unique}"}},
        "labels": {"topic": labels_topic, "hold_seconds": 5},
        "accuracy": {"slice_features": ["region"]},
    }
    with running_daemon(tmp_path, config) as d:

        def settled() -> bool:
            s = d.scrape()
            joined = total(s, "inferwatch_labels_total", outcome="joined")
            return joined >= LABELLED and total(s, "inferwatch_labels_total", outcome="unmatched") >= STRAY

        wait_for(settled, 90, "every label joined and the strays expired")
        time.sleep(0.5)
        s = d.scrape()
    assert total(s, "inferwatch_events_total") == N
    assert total(s, "inferwatch_labels_total", outcome="joined") == LABELLED
    assert total(s, "inferwatch_labels_total", outcome="unmatched") == STRAY
    assert _value(s, "accuracy", slice_feature="__all__") == (LABELLED - WRONG) / LABELLED
    # The 100 wrong ones are ids 0..99; per slice the figures follow from the ids.
    eu = [i for i in range(LABELLED) if i % 3]
    eu_right = sum(1 for i in eu if i >= WRONG)
    assert _value(s, "accuracy", slice_feature="region", slice_value="eu") == eu_right / len(eu)
    assert total(s, "inferwatch_label_join_entries", store="predictions") == N - LABELLED
