"""Shadow history: survives restarts, keeps the last N, writes atomically; the p99 regression check."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from daemon.shadow.history import History, regression


def entry(i: int, p99: float = 0.01, stable: bool = True) -> dict[str, Any]:
    return {"timestamp": 1_700_000_000.0 + i, "p50": p99 / 2, "p99": p99, "stable": stable}


def test_runs_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state" / "history.json"  # the directory does not exist yet
    h = History(path)
    h.append("m", "cpu-a", entry(0))
    h.append("m", "cpu-a", entry(1))
    h.append("m", "gpu-b", entry(2))
    h.save()
    again = History(path)
    assert again.runs("m", "cpu-a") == [entry(0), entry(1)]
    assert again.runs("m", "gpu-b") == [entry(2)]
    assert again.runs("m", "other") == [] and again.runs("x", "cpu-a") == []
    assert json.loads(path.read_text())["version"] == 1


def test_keeps_the_last_n(tmp_path: Path) -> None:
    path = tmp_path / "history.json"
    h = History(path, keep=3)
    for i in range(5):
        h.append("m", "hw", entry(i))
    assert [e["timestamp"] for e in h.runs("m", "hw")] == [entry(i)["timestamp"] for i in (2, 3, 4)]
    h.save()
    assert History(path, keep=2).runs("m", "hw") == [entry(3), entry(4)]


def test_runs_returns_copies(tmp_path: Path) -> None:
    h = History(tmp_path / "history.json")
    h.append("m", "hw", entry(0))
    h.runs("m", "hw")[0]["p99"] = 99.0
    assert h.runs("m", "hw") == [entry(0)]


def test_append_needs_the_required_fields(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="stable"):
        History(tmp_path / "history.json").append("m", "hw", {"timestamp": 0, "p50": 1, "p99": 2})


def test_save_leaves_no_temporary_file(tmp_path: Path) -> None:
    h = History(tmp_path / "history.json")
    h.append("m", "hw", entry(0))
    h.save()
    h.save()
    assert os.listdir(tmp_path) == ["history.json"]


def test_a_failed_save_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "history.json"
    h = History(path)
    h.append("m", "hw", entry(0))
    h.save()
    before = path.read_text()
    h.append("m", "hw", entry(1))

    def broken(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        h.save()
    assert path.read_text() == before
    assert os.listdir(tmp_path) == ["history.json"]


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"\xff\xfe", b"[1, 2]", b'{"version": 1, "runs": {"m": []}}', b'{"runs": {}}'],
)
def test_a_corrupt_file_starts_empty(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "history.json"
    path.write_bytes(content)
    with capture_logs() as logs:
        h = History(path)
    assert h.runs("m", "hw") == []
    assert [e["event"] for e in logs] == ["shadow_history_unreadable"]
    assert logs[0]["log_level"] == "warning"


def test_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "history.json"
    path.write_text(json.dumps({"version": 2, "runs": {}}))
    with pytest.raises(ValueError, match="version 2, newer"):
        History(path)


def test_regression_flags_a_clear_jump() -> None:
    previous = [entry(i, p) for i, p in enumerate([0.100, 0.101, 0.099, 0.100, 0.102])]
    # Median 0.100, MAD 0.001: 3 robust sd = 0.0044 < 10% of 0.100, so the threshold is 0.110.
    r = regression(previous, 0.15, runs=10, min_runs=3, tolerance=0.10)
    assert r["flagged"] and r["runs"] == 5
    assert r["baseline_p99"] == pytest.approx(0.100)
    assert r["threshold"] == pytest.approx(0.110)
    assert r["reason"] == "p99 150 ms > threshold 110 ms (median of 5 stable runs 100 ms)"
    assert not regression(previous, 0.105, runs=10, min_runs=3, tolerance=0.10)["flagged"]


def test_regression_within_noise_is_not_flagged() -> None:
    previous = [entry(i, p) for i, p in enumerate([0.10, 0.20, 0.10, 0.20, 0.15])]
    # Median 0.15, MAD 0.05: 3 x 1.4826 x 0.05 = 0.22239 exceeds 10% of the median.
    r = regression(previous, 0.30, runs=10, min_runs=3, tolerance=0.10)
    assert not r["flagged"] and r["reason"] is None
    assert r["threshold"] == pytest.approx(0.15 + 3 * 1.4826 * 0.05)
    assert regression(previous, 0.40, runs=10, min_runs=3, tolerance=0.10)["flagged"]


def test_regression_needs_enough_stable_runs() -> None:
    previous = [entry(0), entry(1), entry(2, stable=False)]
    r = regression(previous, 1.0, runs=10, min_runs=3, tolerance=0.10)
    assert r == {
        "flagged": False,
        "reason": "2 earlier stable runs < 3",
        "baseline_p99": None,
        "threshold": None,
        "runs": 2,
    }


def test_regression_baseline_skips_unstable_runs_and_keeps_the_last() -> None:
    previous = [entry(0, 0.5), entry(1, 0.1), entry(2, 1.0, stable=False), entry(3, 0.1), entry(4, 0.1)]
    previous.append(entry(5, 1.0, stable=False))
    r = regression(previous, 0.105, runs=3, min_runs=3, tolerance=0.10)
    # The last 3 stable runs are all 0.1 (the 0.5 one is older, the 1.0 ones unstable).
    assert r["runs"] == 3 and r["baseline_p99"] == pytest.approx(0.1)
    assert r["threshold"] == pytest.approx(0.11) and not r["flagged"]
