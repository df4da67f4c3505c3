"""The seeded streams of the golden test: drift, labels, a canary and invalid records.

Two models over 40,000 lines:

- `fraud`: control (v1, 70%) and canary (v2, 30%); from event 20,000 the canary is 30% slower
  (a canary that must fail on latency); from event 26,000 the feature `amount` moves by 1.5 sd in
  both variants (drift); `country` is categorical, `is_new` a bool, `note` sometimes null; 1%
  errors of three types; binary predictions with a score. 80% of its requests get a label on the
  labels file 3 s later (and a few labels for unknown requests, duplicates and broken lines).
- `ranker`: one variant; multiclass predictions with probabilities; every 10th event carries its
  label inline; its label accuracy falls from event 30,000 (an error-stream alarm).

About 1 line in 300 is invalid (malformed JSON, missing or wrong fields, out of range).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

N = 40_000
START = 1_764_000_000.0
RATE = 100.0  # events per simulated second
INVALID = (
    b'{"request_id": "x", "model": ',
    b'{"model": "fraud"}',
    b'{"request_id": "x", "model": "fraud", "latency_ms": "slow"}',
    b'{"request_id": "x", "model": "fraud", "latency_ms": -4}',
    b"[1, 2, 3]",
    b'{"request_id": "x", "model": "fraud", "status": "maybe"}',
)


def _fraud(rng: np.random.Generator, i: int, t: float) -> tuple[dict[str, Any], int]:
    canary = rng.random() < 0.3
    slow = 1.3 if canary and i >= 20_000 else 1.0
    amount = rng.normal(100.0 + (45.0 if i >= 26_000 else 0.0), 30.0)
    z = (amount - 100.0) / 30.0 + rng.normal(0, 1)
    score = float(1 / (1 + np.exp(-z)))
    features: dict[str, Any] = {
        "amount": round(float(amount), 4),
        "country": str(rng.choice(["DE", "FR", "US", "JP"], p=[0.4, 0.3, 0.2, 0.1])),
        "is_new": bool(rng.random() < 0.2),
        "note": None if rng.random() < 0.05 else round(float(rng.random()), 3),
    }
    ev: dict[str, Any] = {
        "request_id": f"f{i}",
        "model": "fraud",
        "version": "2" if canary else "1",
        "variant": "canary" if canary else "control",
        "timestamp": round(t, 3),
        "latency_ms": round(float(rng.lognormal(np.log(40.0), 0.3)) * slow, 3),
        "status": "ok",
        "score": round(score, 5),
        "prediction": int(score > 0.5),
        "features": features,
    }
    if rng.random() < 0.01:
        ev["status"] = "error"
        ev["error_type"] = str(rng.choice(["timeout", "oom", "bad_input"]))
    truth = int(rng.random() < score)
    return ev, truth


def _ranker(rng: np.random.Generator, i: int, t: float) -> dict[str, Any]:
    p = rng.dirichlet([4.0, 2.0, 1.0])
    classes = ["a", "b", "c"]
    pred = classes[int(np.argmax(p))]
    right = rng.random() < (0.8 if i < 30_000 else 0.45)
    ev: dict[str, Any] = {
        "request_id": f"r{i}",
        "model": "ranker",
        "timestamp": round(t, 3),
        "latency_ms": round(float(rng.lognormal(np.log(12.0), 0.2)), 3),
        "prediction": pred,
        "probabilities": {c: round(float(v), 4) for c, v in zip(classes, p, strict=True)},
        "features": {"depth": int(rng.integers(0, 8)), "lang": str(rng.choice(["en", "de"]))},
        "tokens_in": int(rng.integers(10, 200)),
        "tokens_out": int(rng.integers(1, 50)),
    }
    if i % 10 == 0:
        ev["label"] = pred if right else classes[(classes.index(pred) + 1) % 3]
    return ev


def write(events_path: Path, labels_path: Path, seed: int = 20261201) -> None:
    """Write the event and label files (deterministic for the seed)."""
    rng = np.random.default_rng(seed)
    lines: list[bytes] = []
    labels: list[tuple[float, bytes]] = []
    for i in range(N):
        t = START + i / RATE
        if i % 300 == 17:
            lines.append(INVALID[(i // 300) % len(INVALID)])
            continue
        if rng.random() < 0.7:
            ev, truth = _fraud(rng, i, t)
            if rng.random() < 0.8:
                label = {"request_id": ev["request_id"], "model": "fraud", "label": truth, "timestamp": round(t + 3, 3)}
                labels.append((t + 3, json.dumps(label).encode()))
        else:
            ev = _ranker(rng, i, t)
        lines.append(json.dumps(ev).encode())
        if i % 5000 == 4999:  # a label for a request never seen, a duplicate, a broken line
            labels.append((t + 1, json.dumps({"request_id": f"ghost{i}", "model": "fraud", "label": 1}).encode()))
            labels.append((t + 2, labels[-2][1]))
            labels.append((t + 2, b'{"request_id": "x"'))
    labels.sort(key=lambda kv: kv[0])
    events_path.write_bytes(b"".join(line + b"\n" for line in lines))
    labels_path.write_bytes(b"".join(line + b"\n" for _, line in labels))
