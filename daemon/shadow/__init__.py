"""Shadow benchmarks: replay recent real inputs through the configured models on local hardware.

The daemon keeps a reservoir of logged inputs per model (daemon.monitors.reservoir) and, on a schedule,
hands a copy to a runner in its own process (service), which loads the models (models), measures
them (measure), compares candidate with production and replays with logs (compare), and keeps
results across runs to flag regressions (history). runner wires one run together.
"""
