"""Timing, fidelity and the verdict: what ``quantship bench`` and ``profile`` run."""

# What `quantship bench` and the API's bench() run unless told: single-stream latency
# and the offline scenario's throughput, each scenario this many seconds per model.
DEFAULT_SCENARIOS = ("single-stream", "offline")
DEFAULT_SCENARIO_SECONDS = 4.0
