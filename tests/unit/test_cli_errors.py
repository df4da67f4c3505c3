"""Errors before work (issue 18): a command checks its inputs and outputs before it processes
anything, and says what is wrong in one line with exit 2, not a traceback after the work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.cli import main
from daemon.dev.broker import free_port
from tests.unit.shadow_models import onnx_linear_classifier
from tests.unit.test_shadow_runner import FAST, B, W, model


def test_replay_checks_its_report_path_before_reading(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = tmp_path / "e.jsonl"
    events.write_text('{"request_id": "r", "model": "m"}\n')
    assert main(["replay", str(events), "--report", str(tmp_path / "nope" / "r.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--report" in err and "does not exist" in err
    assert main(["replay", str(events), "--report", str(tmp_path)]) == 2  # a folder, not a file
    assert "cannot write a file there" in capsys.readouterr().err
    assert main(["replay", str(events), "--report", str(tmp_path / "r.json")]) == 0


def test_shadow_once_without_a_broker_says_so_in_one_line(tmp_path: Path) -> None:
    prod = onnx_linear_classifier(tmp_path / "prod.onnx", W, B)
    cfg = tmp_path / "c.yaml"
    kafka = {"bootstrap_servers": [f"127.0.0.1:{free_port()}"]}
    shadow = {**FAST, "models": [model("prod", prod)], "history_file": str(tmp_path / "h.json")}
    cfg.write_text(json.dumps({"source": {"kafka": kafka}, "shadow": shadow}))
    done = subprocess.run(
        [sys.executable, "-m", "daemon", "shadow", "--config", str(cfg), "--once"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip().splitlines() == [
        f"inferwatch shadow: no Kafka broker answers at {kafka['bootstrap_servers'][0]} "
        "(source.kafka.bootstrap_servers)"
    ]
