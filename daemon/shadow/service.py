"""The daemon's side of shadow runs: when to run, the runner process, and the latest results.

The main loop calls `poll()` at each commit interval; when a run is due (interval plus jitter)
and a model's reservoir holds shadow.min_samples, it copies the samples and hands them to the
runner process (daemon.shadow.worker) from a thread of its own, which waits for the answer.
The daemon never imports a model runtime; start-up validation runs in the same process kind.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog

from daemon.config import ShadowConfig
from daemon.monitors.reservoir import Sample

log = structlog.get_logger(__name__)

# Thread pools that numpy, onnxruntime and torch size from the environment.
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


class ShadowError(Exception):
    """A run that failed, timed out or was stopped."""


class RunnerProcess:
    """One request to the runner process at a time; `kill()` ends a run in flight."""

    def __init__(self, shadow: ShadowConfig, log_level: str = "info", log_format: str = "json") -> None:
        self.shadow = shadow
        self._log = {"log_level": log_level, "log_format": log_format}
        self._proc: subprocess.Popen[bytes] | None = None
        self._killed = False

    def call(self, mode: str, samples: Mapping[str, Sequence[Sample]] | None = None) -> dict[str, Any]:
        request = {"mode": mode, "shadow": self.shadow.model_dump(mode="json"), "parent": os.getpid(), **self._log}
        if samples is not None:
            request["samples"] = {model: [s.row() for s in rows] for model, rows in samples.items()}
        env = os.environ | dict.fromkeys(THREAD_ENV, str(self.shadow.threads))
        proc = subprocess.Popen(
            [sys.executable, "-m", "daemon.shadow.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        self._proc = proc
        try:
            out, _ = proc.communicate(json.dumps(request).encode(), timeout=self.shadow.timeout_seconds)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise ShadowError(
                f"the run took longer than shadow.timeout_seconds={self.shadow.timeout_seconds}"
            ) from None
        finally:
            self._proc = None
        if self._killed:
            raise ShadowError("stopped")
        if proc.returncode != 0:
            raise ShadowError(f"the runner process exited with status {proc.returncode} (its log says why)")
        answer: dict[str, Any] = json.loads(out)
        return answer

    @property
    def running(self) -> bool:
        proc = self._proc
        return proc is not None and proc.poll() is None

    def kill(self) -> None:
        self._killed = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()


class ShadowService:
    def __init__(
        self,
        shadow: ShadowConfig,
        *,
        log_level: str = "info",
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.shadow = shadow
        self.runner = RunnerProcess(shadow, log_level)
        self._clock = clock
        self._rng = rng or random.Random()
        # The first run as soon as there are samples, spread by the jitter across replicas.
        self._due = clock() + self._rng.uniform(0, shadow.jitter_seconds)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.runs = {"ok": 0, "failed": 0}
        self.latest: dict[str, Any] | None = None
        self.last_error: str | None = None

    def validate(self) -> list[str]:
        """Every model loaded and its mapping checked, in a runner process: [] when all fit."""
        errors: list[str] = self.runner.call("validate")["errors"]
        return errors

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def poll(self, sizes: Mapping[str, int], samples: Callable[[], Mapping[str, Sequence[Sample]]]) -> bool:
        """Start a run if one is due and some model has enough samples (the main loop calls this)."""
        if self.running or self._clock() < self._due:
            return False
        if not any(sizes.get(m.source_model, 0) >= self.shadow.min_samples for m in self.shadow.models):
            return False
        self._thread = threading.Thread(target=self._run, args=(samples(),), name="shadow", daemon=True)
        self._thread.start()
        return True

    def _run(self, samples: Mapping[str, Sequence[Sample]]) -> None:
        try:
            report = self.runner.call("run", samples)
        except Exception as exc:  # the daemon outlives any run
            with self._lock:
                self.runs["failed"] += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("shadow_run_failed", error=self.last_error)
        else:
            with self._lock:
                self.runs["ok"] += 1
                self.latest = report
                self.last_error = None
            log.info("shadow_run", **summary(report))
        self._due = self._clock() + self.shadow.interval_seconds + self._rng.uniform(0, self.shadow.jitter_seconds)

    def report(self) -> dict[str, Any]:
        """/v1/shadow: the schedule, run counts and the latest run's report."""
        with self._lock:
            return {
                "running": self.running,
                "next_run_in_seconds": None if self.running else max(0.0, self._due - self._clock()),
                "runs": dict(self.runs),
                "last_error": self.last_error,
                "last_run": self.latest,
            }

    def close(self) -> None:
        self.runner.kill()
        if self._thread is not None:
            self._thread.join(timeout=5)


def summary(report: Mapping[str, Any]) -> dict[str, Any]:
    """The figures of a run that fit one log line."""
    models = {}
    for m in report["models"]:
        if m["status"] != "ok":
            models[m["name"]] = {"status": m["status"], "error": m.get("error")}
            continue
        single = m["single_stream"]
        models[m["name"]] = {
            "p50_ms": round(single["p50"] * 1e3, 4),
            "p99_ms": round(single["p99"] * 1e3, 4),
            "stable": single["stable"],
            "regression": m["regression"]["flagged"],
            "skew": None if m["skew"] is None else m["skew"]["mismatch_rate"],
        }
    comparisons = {
        f"{c['candidate']}/{c['production']}": {
            "latency_ratio": round(c["latency_ratio"]["ratio"], 4),
            "agreement": c["agreement"].get("agreement", c["agreement"].get("mean_abs_difference")),
        }
        for c in report["comparisons"]
    }
    return {"duration_seconds": round(report["duration_seconds"], 3), "models": models, "comparisons": comparisons}
