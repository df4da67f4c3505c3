"""The hardware and software a shadow benchmark ran on, GPU energy, and cost per inference.

Every probe is optional: a package that is not installed, or a counter that does not work, gives None, never an
error, and never a guess.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from collections.abc import Iterable, Mapping
from typing import Any


def collect_environment(devices: Iterable[str]) -> dict[str, Any]:
    """A JSON-serialisable description of this machine; `devices` are the devices the models run on."""
    ort_version, providers = _onnxruntime()
    return {
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpus_allowed": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "gpu": _gpu_name(set(devices)),
        "onnxruntime": ort_version,
        "onnxruntime_providers": providers,
        "torch": _version("torch"),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def hardware_key(env: Mapping[str, Any], device: str, threads: int) -> str:
    """A short stable name of the hardware a result was measured on, e.g. "Intel(R) Xeon(R) ... /cpu/1t"."""
    name = env.get("gpu") if device == "cuda" else env.get("cpu_model")
    return f"{' '.join(str(name or 'unknown').split())}/{device}/{threads}t"


def model_bytes(path: str) -> int:
    """The size of a model file, or of all files under a model directory."""
    if not os.path.isdir(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def cost_per_1k(hourly_price: float | None, inferences_per_second: float | None) -> float | None:
    """The price of 1,000 inferences at this throughput; None when either is unknown or nothing ran."""
    if hourly_price is None or inferences_per_second is None or inferences_per_second <= 0:
        return None
    return hourly_price / 3600 / inferences_per_second * 1000


class EnergyMeter:
    """GPU 0's total energy counter (NVML, through pynvml)."""

    def __init__(self, nvml: Any, handle: Any) -> None:
        self._nvml = nvml
        self._handle = handle

    @classmethod
    def open(cls, device: str) -> EnergyMeter | None:
        """A meter for a cuda run; None unless pynvml is installed and the GPU's counter reads."""
        if device != "cuda":
            return None
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception:
            return None
        try:
            meter = cls(pynvml, pynvml.nvmlDeviceGetHandleByIndex(0))
            meter.read_joules()
        except Exception:
            pynvml.nvmlShutdown()
            return None
        return meter

    def read_joules(self) -> float:
        """Energy used by GPU 0 since the driver loaded."""
        return float(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)) / 1000.0  # millijoules


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu_name(devices: set[str]) -> str | None:
    """GPU 0's name: through torch when a model runs on cuda, else through NVML; None without either."""
    if "cuda" in devices:
        try:
            import torch

            if torch.cuda.is_available():
                return str(torch.cuda.get_device_name(0))
        except Exception:
            pass
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return None
    return name.decode() if isinstance(name, bytes) else str(name)


def _onnxruntime() -> tuple[str | None, list[str] | None]:
    """onnxruntime's version and available execution providers (it may be installed as onnxruntime-gpu)."""
    try:
        import onnxruntime
    except Exception:
        return None, None
    return str(onnxruntime.__version__), list(onnxruntime.get_available_providers())


def _version(package: str) -> str | None:
    """An installed package's version, read without importing it."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
