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


def test_replay_checks_its_html_path_and_matplotlib_before_reading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    events, report = tmp_path / "e.jsonl", tmp_path / "r.json"
    events.write_text('{"request_id": "r", "model": "m"}\n')
    assert main(["replay", str(events), "--report", str(report), "--html", str(tmp_path / "nope" / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--html" in err and "does not exist" in err
    assert not report.exists()  # refused before the replay
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the report extra were not installed
    assert main(["replay", str(events), "--report", str(report), "--html", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "inferwatch[report]" in err
    assert not report.exists()


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


def _once(tmp_path: Path, events: list[dict[str, object]], features: list[str]) -> subprocess.CompletedProcess[str]:
    prod = onnx_linear_classifier(tmp_path / "prod.onnx", W, B)
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    spec = model("prod", prod) | {"inputs": [{"name": "x", "features": features}]}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"shadow": {**FAST, "models": [spec], "history_file": str(tmp_path / "h.json")}}))
    command = ["shadow", "--config", str(cfg), "--once", "--input", str(tmp_path / "events.jsonl")]
    return subprocess.run([sys.executable, "-m", "daemon", *command], capture_output=True, text=True, timeout=120)


def _events(n: int, **extra: object) -> list[dict[str, object]]:
    return [
        {"request_id": f"r{i}", "model": "src", "features": {"f0": i / n, "f1": 1.0, "f2": -1.0, **extra}}
        for i in range(n)
    ]


def test_shadow_once_refuses_a_mapping_that_names_features_the_logs_lack(tmp_path: Path) -> None:
    done = _once(tmp_path, _events(40), ["f0", "f1", "f2", "f3_typo"])
    assert done.returncode == 2, done.stdout + done.stderr
    assert "shadow model 'prod': features never seen in 40 sampled logs of 'src': f3_typo" in done.stderr
    assert done.stdout == ""  # nothing ran


def test_shadow_once_shows_string_features_without_an_encoding(tmp_path: Path) -> None:
    done = _once(tmp_path, _events(40, f3="gold"), ["f0", "f1", "f2", "f3"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "prod: string features without an encoding (fed as unknown_code): f3" in done.stdout
