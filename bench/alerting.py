"""Issue 6, measured: from an injected drift to the signed retraining webhook, hop by hop.

Runs the end-to-end scenario of tests/integration/test_alerting_e2e.py (the real daemon, Tansu,
Prometheus and Alertmanager from Debian's packages) `--rounds` times and splits each chain:

- detection: the first drifted event produced -> inferwatch_drift_detected{stream="feature:f0"}
  on /metrics (polled every 0.2 s);
- Prometheus: -> the alert firing in Prometheus (scrape 1 s, rule evaluation 1 s, `for:` shrunk
  to 2 s in the test; the shipped rule says 5m);
- Alertmanager + receiver: -> the trigger fired in the daemon (the webhook body's timestamp;
  group_wait 1 s in the test; the shipped example says 10s);
- delivery: -> the webhook's arrival at the test receiver.

Also reports what Prometheus itself says of the daemon's scrape at this demo-like load
(scrape_duration_seconds, scrape_samples_scraped).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import REPO_ROOT, parse_args, write_result

sys.path.insert(0, str(REPO_ROOT))  # the scenario lives with the tests

from daemon.dev.broker import TansuBroker
from tests.integration.test_alerting_e2e import run_scenario

NAME = "alerting"
HOPS = ("detection", "prometheus", "alertmanager_and_receiver", "delivery")


def _split(result: dict[str, Any]) -> dict[str, float]:
    m, t0 = result["marks"], result["t0"]
    return {
        "detection": m["detected"] - t0,
        "prometheus": m["firing"] - m["detected"],
        "alertmanager_and_receiver": m["triggered"] - m["firing"],
        "delivery": m["delivered"] - m["triggered"],
        "total": m["delivered"] - t0,
    }


def main() -> None:
    args = parse_args(__doc__, lambda p: p.add_argument("--rounds", type=int, default=3))
    rounds = 1 if args.quick else args.rounds
    runs = []
    with TansuBroker() as broker:
        for _ in range(rounds):
            with tempfile.TemporaryDirectory() as d:
                result = run_scenario(Path(d), broker)
            runs.append({"split": _split(result), "scrape": result["scrape"], "deliveries": len(result["deliveries"])})
    median = {k: statistics.median(r["split"][k] for r in runs) for k in (*HOPS, "total")}
    scrape = {k: statistics.median(r["scrape"][k] for r in runs) for k in ("duration_seconds", "samples")}
    summary = (
        f"alerting: drift -> webhook {median['total']:.2f} s median of {rounds} "
        f"(detection {median['detection']:.2f}, Prometheus {median['prometheus']:.2f}, "
        f"Alertmanager+receiver {median['alertmanager_and_receiver']:.2f}, delivery {median['delivery']:.3f}); "
        f"deliveries per run {[r['deliveries'] for r in runs]}; scrape {scrape['duration_seconds'] * 1e3:.1f} ms, "
        f"{scrape['samples']:.0f} samples"
    )
    write_result(NAME, args.quick, {"runs": runs, "median": median, "scrape": scrape}, summary)


if __name__ == "__main__":
    main()
