"""Shadow runs in the real daemon: a reservoir filled from real broker traffic, metrics exported."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np

from daemon.dev.broker import TansuBroker
from tests.integration.support import get, produce, running_daemon, total, wait_for
from tests.unit.shadow_models import onnx_linear_classifier, torchscript_classifier

K, C, N = 4, 3, 300
RNG = np.random.default_rng(11)
W = RNG.standard_normal((K, C)).astype(np.float32)
B = RNG.standard_normal(C).astype(np.float32)


def _events() -> list[bytes]:
    x = np.random.default_rng(12).standard_normal((N, K)).astype(np.float32)
    predicted = np.argmax(x @ W + B, axis=1)
    return [
        json.dumps(
            {
                "request_id": f"r{i}",
                "model": "clf",
                "latency_ms": 5.0,
                "prediction": int(predicted[i]),
                "label": int(predicted[i]) if i % 2 else int(predicted[i] + 1) % C,  # accuracy 0.5
                "features": {f"f{j}": float(v) for j, v in enumerate(row)},
            }
        ).encode()
        for i, row in enumerate(x)
    ]


def test_a_shadow_run_over_broker_traffic_exports_its_metrics(broker: TansuBroker, tmp_path: Path, unique: str) -> None:
    topic = f"shadow-{unique}"
    broker.create_topics([topic], partitions=1)
    produce(broker.bootstrap, topic, [(b"clf", v) for v in _events()])
    inputs = [{"name": "x", "features": [f"f{j}" for j in range(K)]}]
    prod = onnx_linear_classifier(tmp_path / "prod.onnx", W, B)
    cand = torchscript_classifier(tmp_path / "cand.pt", W, B)
    common = {"source_model": "clf", "inputs": inputs}
    config = {
        "source": {"kafka": {"bootstrap_servers": [broker.bootstrap], "topics": [topic], "group_id": f"g-{unique}"}},
        "drift": {"enabled": False},
        "shadow": {
            "enabled": True,
            "models": [
                {"name": "clf-prod", "runtime": "onnxruntime", "path": str(prod), **common},
                {"name": "clf-cand", "runtime": "torch", "path": str(cand), "role": "candidate", **common},
            ],
            "min_samples": N,
            "jitter_seconds": 0,
            "warmup_queries": 10,
            "single_stream": {"min_duration_seconds": 0.1, "window_seconds": 0.05},
            "offline": {"batch_sizes": [1, 16], "duration_seconds": 0.05},
            "compare_queries": 200,
            "bootstrap_resamples": 200,
            "history_file": str(tmp_path / "history.json"),
            "timeout_seconds": 120,
        },
    }
    with running_daemon(tmp_path, config) as d:
        wait_for(lambda: total(d.scrape(), "inferwatch_shadow_runs_total", outcome="ok") >= 1, 120, "a shadow run")
        s = d.scrape()
        prod_lbl = {"model": "clf-prod", "role": "production"}
        p50 = total(s, "inferwatch_shadow_latency_seconds", scenario="single_stream", quantile="0.5", **prod_lbl)
        p99 = total(s, "inferwatch_shadow_latency_seconds", scenario="single_stream", quantile="0.99", **prod_lbl)
        assert 0 < p50 <= p99 < 1
        assert total(s, "inferwatch_shadow_samples", **prod_lbl) == N  # every event sampled (N < reservoir_size)
        assert total(s, "inferwatch_shadow_skew", **prod_lbl) == 0
        assert total(s, "inferwatch_shadow_quality", metric="accuracy", **prod_lbl) == 0.5
        assert total(s, "inferwatch_shadow_agreement", model="clf-cand", production="clf-prod") == 1.0
        lower = total(s, "inferwatch_shadow_latency_ratio_lower", model="clf-cand", production="clf-prod")
        upper = total(s, "inferwatch_shadow_latency_ratio_upper", model="clf-cand", production="clf-prod")
        assert 0 < lower <= upper
        assert total(s, "inferwatch_shadow_throughput_inferences_per_second", batch_size="16", **prod_lbl) > 0
        assert total(s, "inferwatch_shadow_cold_start_seconds", phase="session", **prod_lbl) > 0
        assert total(s, "inferwatch_shadow_regression", **prod_lbl) == 0
        assert total(s, "inferwatch_shadow_last_run_timestamp_seconds") > 1.7e9
        text = d.metrics_text()
        assert "inferwatch_shadow_energy_per_inference_joules" not in text  # no GPU here: absent, not guessed
        promtool = shutil.which("promtool")
        assert promtool, "promtool is missing: `make test` installs Debian's prometheus package"
        checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr

        code, body = get(d.url + "/v1/shadow")
        report = json.loads(body)
        assert code == 200 and report["enabled"] and report["runs"]["ok"] >= 1
        run = report["last_run"]
        assert {m["name"]: m["status"] for m in run["models"]} == {"clf-prod": "ok", "clf-cand": "ok"}
        assert run["environment"]["cpu_cores"] >= 1 and run["environment"]["onnxruntime"]
        assert '"event": "shadow_run"' in d.logs()  # one log line per run
        assert d.stop() == 0


def test_a_model_that_does_not_fit_its_mapping_stops_the_daemon_at_start_up(tmp_path: Path) -> None:
    prod = onnx_linear_classifier(tmp_path / "prod.onnx", W, B)
    bad = {"name": "p", "runtime": "onnxruntime", "path": str(prod), "source_model": "clf"}
    bad["inputs"] = [{"name": "x", "features": ["f0", "f1", "f2", "f3", "f4"]}]
    config_path = tmp_path / "c.yaml"
    config_path.write_text(json.dumps({"shadow": {"enabled": True, "models": [bad]}}))
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "daemon", "run", "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "input 'x' expects 4 columns, mapping gives 5" in done.stderr
