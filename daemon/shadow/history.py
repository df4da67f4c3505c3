"""Shadow results per (model, hardware) across runs and restarts, and the p99 regression check.

The file is JSON, {"version": 1, "runs": {model: {hardware: [entry, ...]}}}, oldest entry first,
replaced atomically on save.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from daemon.runtime.files import write_atomically

log = structlog.get_logger(__name__)

VERSION = 1
REQUIRED = ("timestamp", "p99", "p50", "stable")
# Scales a median absolute deviation to a standard deviation for normal data.
MAD_TO_SD = 1.4826


class History:
    """The last `keep` entries per (model, hardware), loaded from and saved to `path`."""

    def __init__(self, path: str | Path, keep: int = 50) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.path = Path(path)
        self.keep = keep
        self._runs: dict[str, dict[str, list[dict[str, Any]]]] = self._load()

    def runs(self, model: str, hardware: str) -> list[dict[str, Any]]:
        """Copies of the kept entries, oldest first."""
        return [dict(e) for e in self._runs.get(model, {}).get(hardware, [])]

    def append(self, model: str, hardware: str, entry: dict[str, Any]) -> None:
        missing = [k for k in REQUIRED if k not in entry]
        if missing:
            raise ValueError(f"history entry lacks {missing}")
        entries = self._runs.setdefault(model, {}).setdefault(hardware, [])
        entries.append(dict(entry))
        del entries[: -self.keep]

    def save(self) -> None:
        """Replace the file whole (daemon.runtime.files.write_atomically)."""
        write_atomically(self.path, json.dumps({"version": VERSION, "runs": self._runs}, indent=1))

    def _load(self) -> dict[str, dict[str, list[dict[str, Any]]]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:  # ValueError: bad JSON or bad UTF-8
            log.warning("shadow_history_unreadable", path=str(self.path), error=str(exc))
            return {}
        version = data.get("version") if isinstance(data, dict) else None
        if isinstance(version, int) and version > VERSION:
            raise ValueError(
                f"{self.path} is shadow history version {version}, newer than this inferwatch reads ({VERSION})"
            )
        if version != VERSION or not _valid_runs(data.get("runs")):
            log.warning("shadow_history_unreadable", path=str(self.path), error="not a version 1 history file")
            return {}
        return {m: {h: entries[-self.keep :] for h, entries in by_hw.items()} for m, by_hw in data["runs"].items()}


def regression(
    previous: Sequence[Mapping[str, Any]], p99: float, *, runs: int, min_runs: int, tolerance: float
) -> dict[str, Any]:
    """Is `p99` a regression against the last `runs` stable entries of `previous`?

    Threshold: their median p99 plus max(tolerance x median, 3 robust sd), the sd from the MAD.
    """
    stable = [float(e["p99"]) for e in previous if e.get("stable")][-runs:]
    if len(stable) < min_runs:
        few = f"{len(stable)} earlier stable runs < {min_runs}"
        return {"flagged": False, "baseline_p99": None, "threshold": None, "runs": len(stable), "reason": few}
    values = np.asarray(stable)
    baseline = float(np.median(values))
    noise = MAD_TO_SD * float(np.median(np.abs(values - baseline)))
    threshold = baseline + max(tolerance * baseline, 3 * noise)
    flagged = p99 > threshold
    reason = (
        f"p99 {p99 * 1e3:.3g} ms > threshold {threshold * 1e3:.3g} ms "
        f"(median of {len(stable)} stable runs {baseline * 1e3:.3g} ms)"
        if flagged
        else None
    )
    return {"flagged": flagged, "baseline_p99": baseline, "threshold": threshold, "runs": len(stable), "reason": reason}


def _valid_runs(runs: Any) -> bool:
    return isinstance(runs, dict) and all(
        isinstance(by_hw, dict)
        and all(isinstance(entries, list) and all(isinstance(e, dict) for e in entries) for entries in by_hw.values())
        for by_hw in runs.values()
    )
