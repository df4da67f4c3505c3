"""Name → detector class, for the config loader. A new detector is one module plus one entry here."""

from __future__ import annotations

from detectors.distribution import (
    CategoricalPSITest,
    Chi2Test,
    ErrorRateTest,
    JensenShannonTest,
    KSTest,
    PSITest,
    WassersteinTest,
)
from detectors.river_adapters import (
    ADWINDetector,
    DDMDetector,
    EDDMDetector,
    FHDDMDetector,
    HDDMADetector,
    HDDMWDetector,
    KSWINDetector,
    PageHinkleyDetector,
)
from detectors.scan import CategoricalScan, NumericScan

DETECTORS: dict[str, type] = {
    # River, numeric input
    "adwin": ADWINDetector,
    "page_hinkley": PageHinkleyDetector,
    "kswin": KSWINDetector,
    # River, binary input (True = error)
    "ddm": DDMDetector,
    "eddm": EDDMDetector,
    "hddm_a": HDDMADetector,
    "hddm_w": HDDMWDetector,
    "fhddm": FHDDMDetector,
    # Scans of several window lengths against an expanding reference (the defaults)
    "scan": NumericScan,
    "scan_categorical": CategoricalScan,
    # Window-vs-reference tests, numeric input
    "ks": KSTest,
    "wasserstein": WassersteinTest,
    "psi": PSITest,
    # Window-vs-reference test, binary input
    "error_rate": ErrorRateTest,
    # Window-vs-reference tests, categorical input
    "chi2": Chi2Test,
    "jensen_shannon": JensenShannonTest,
    "psi_categorical": CategoricalPSITest,
}
