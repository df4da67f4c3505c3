"""Streaming detectors and statistics: small classes with `snapshot()` / `restore()`."""

from __future__ import annotations

from detectors.quantiles import QuantileSketch

__all__ = ["QuantileSketch"]
