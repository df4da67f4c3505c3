"""The shared contract check for `inferwatch replay` (../shared/checks/replay_contract.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT.parent / "shared" / "checks" / "replay_contract.py"


@pytest.mark.skipif(not CHECK.is_file(), reason=f"{CHECK} is not beside this checkout")
def test_replay_keeps_the_report_contract() -> None:
    inferwatch = Path(sys.executable).with_name("inferwatch")
    out = subprocess.run(
        [sys.executable, str(CHECK), "--inferwatch", str(inferwatch)], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "contract kept" in out.stdout
