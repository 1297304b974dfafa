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
    """After warm-up, the candidates take turns in short blocks, the order rotating
    each round: a harness that timed one candidate and then the other (one switch)
    fails this, and so does one that never rotates the order."""
    import time

    calls: list[str] = []

    def run(label: str) -> None:
        calls.append(label)
        time.sleep(0.0005)

    runners = {"a": lambda: run("a"), "b": lambda: run("b")}
    settings = BenchSettings(warmup=2, iterations=40, block_seconds=0.004)
    stats = measure_interleaved(runners, settings, batch=1)
    assert stats["a"].iterations == stats["b"].iterations == 40
    timed = calls[4:]  # after two warm-up runs of each
    assert timed.count("a") == timed.count("b")
    runs = [len(list(g)) for _, g in itertools.groupby(timed)]
    assert len(runs) >= 6  # blocks of a few runs each, not two long runs
    # The order rotates every round, so the candidate that ends a round also starts the
    # next: its blocks meet, and the second run of calls is longer than the first.
    assert runs[1] > runs[0]


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

    from quantship.backends.base import Artifact, BaseSession, Capabilities, SessionSettings
    from quantship.bench.run import Candidate, bench_candidates
    from quantship.exporter.load import InputSpec

    class CpuStub(BaseSession):
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

        def __init__(self, session: Any, device_timing: bool) -> None:
            self.s, self.device_timing = session, device_timing

        def capabilities(self) -> Capabilities:
            return Capabilities("GPU" if self.device_timing else "CPU", ("fp32",), "fp32",
                                device_timing=self.device_timing)  # fmt: skip

        def session(self, artifact: Artifact, settings: SessionSettings) -> Any:
            return self.s

    art = Artifact("stub", "onnx", Path(), ("m.onnx",))
    cands = [
        Candidate("cpu", StubBackend(CpuStub(), False), art),  # type: ignore[arg-type]
        Candidate("gpu", StubBackend(GpuStub(), True), art),  # type: ignore[arg-type]
    ]
    stats = bench_candidates(
        cands, [InputSpec("x", (None, 4), "float32")], BenchSettings(warmup=1, iterations=7)
    )
    by = {s.label: s for s in stats}
    assert by["gpu"].mode == "gpu" and by["gpu"].p50_ms == 0.5 and by["gpu"].iterations == 7
    assert by["cpu"].mode == "latency" and by["cpu"].iterations == 7
    assert np.isfinite(by["cpu"].p50_ms)
