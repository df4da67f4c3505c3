"""Streaming detectors and statistics: drift tests, calibration, sequential tests, quality formulas.

Pure statistics: nothing here imports the daemon.
"""
