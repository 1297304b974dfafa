"""The timing harness: percentiles, interleaving, and the stopping rules."""

from __future__ import annotations

import itertools

import pytest

from quantship.bench.timing import BenchSettings, measure_interleaved, stats_from_samples


def test_percentiles_and_throughput_from_known_samples() -> None:
    ns = [i * 1_000_000 for i in range(1, 101)]  # 1 ms .. 100 ms
    s = stats_from_samples("m", 4, ns, threads=2, warmup=3)
    assert s.p50_ms == pytest.approx(50.5)
    assert s.p90_ms == pytest.approx(90.1)
    assert s.p99_ms == pytest.approx(99.01)
    assert s.min_ms == 1.0 and s.max_ms == 100.0
    assert s.mean_ms == pytest.approx(50.5)
    assert s.throughput == pytest.approx(4 * 100 / 5.05)  # samples / second of running


def test_interleaving_runs_each_candidate_equally() -> None:
    calls: list[str] = []
    runners = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    stats = measure_interleaved(runners, BenchSettings(warmup=2, iterations=50), batch=1)
    assert stats["a"].iterations == stats["b"].iterations == 50
    # warm-up first, then blocks alternate between the candidates
    after_warmup = calls[4:]
    switches = sum(1 for x, y in itertools.pairwise(after_warmup) if x != y)
    assert switches >= 1
    assert calls.count("a") == calls.count("b")


def test_settings_validate() -> None:
    with pytest.raises(ValueError):
        BenchSettings(batches=(0,))
    with pytest.raises(ValueError):
        BenchSettings(duration=0)
    with pytest.raises(ValueError):
        BenchSettings(iterations=0)


def test_gpu_sessions_are_timed_by_their_own_device_clock() -> None:
    """Harness test with stub sessions (no hardware claim): a session that reports
    device times (as the TensorRT session does with CUDA events) is timed by them, the
    others interleaved on the CPU."""
    from pathlib import Path
    from typing import Any

    import numpy as np

    from quantship.backends.base import Artifact, SessionSettings
    from quantship.bench.run import Candidate, bench_candidates
    from quantship.exporter.load import InputSpec

    class CpuStub:
        def run(self, feeds: dict[str, Any]) -> list[Any]:
            return [feeds["x"] * 2]

    class GpuStub(CpuStub):
        def device_latency_ms(
            self, feeds: dict[str, Any], warmup: int, iterations: int
        ) -> list[float]:
            return [0.5] * iterations

    class StubBackend:
        name = "stub"
        extra = "stub"
        formats = ("onnx",)

        def __init__(self, session: Any) -> None:
            self.s = session

        def session(self, artifact: Artifact, settings: SessionSettings) -> Any:
            return self.s

    art = Artifact("stub", "onnx", Path(), ("m.onnx",))
    cands = [
        Candidate("cpu", StubBackend(CpuStub()), art),  # type: ignore[arg-type]
        Candidate("gpu", StubBackend(GpuStub()), art),  # type: ignore[arg-type]
    ]
    stats = bench_candidates(
        cands, [InputSpec("x", (None, 4), "float32")], BenchSettings(warmup=1, iterations=7)
    )
    by = {s.label: s for s in stats}
    assert by["gpu"].mode == "gpu" and by["gpu"].p50_ms == 0.5 and by["gpu"].iterations == 7
    assert by["cpu"].mode == "latency" and by["cpu"].iterations == 7
    assert np.isfinite(by["cpu"].p50_ms)
