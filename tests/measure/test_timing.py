"""The timing harness: percentiles, interleaving, and the stopping rules."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from quantship.measure.timing import BenchSettings, measure_interleaved, stats_from_samples


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
    """After warm-up, the candidates take turns in blocks (each block one untimed run,
    then timed ones), the order rotating each round: a harness that timed one candidate
    and then the other (one switch) fails this, and so does one that never rotates the
    order. Runners this fast get the largest block (100 runs), whatever the load."""
    calls: list[str] = []
    runners = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    stats = measure_interleaved(runners, BenchSettings(warmup=2, iterations=250), batch=1)
    assert stats["a"].iterations == stats["b"].iterations == 250
    runs = [(k, len(list(g))) for k, g in itertools.groupby(calls)]
    # warm-up 2 + 2; round 1: a, b (100 + 1 each); round 2 rotated: b, a; round 3: a, b
    # with the 50 left; a round's last candidate starts the next, so their blocks meet.
    assert runs == [("a", 2), ("b", 2), ("a", 101), ("b", 202), ("a", 152), ("b", 51)]


def test_min_rounds_outlasts_a_short_duration() -> None:
    """A duration that one round of blocks already spends still gives every candidate
    ``min_rounds`` blocks: the rounds are what even out a noisy neighbour."""
    calls: list[str] = []
    runners = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    settings = BenchSettings(warmup=1, duration=1e-6, min_iterations=1, min_rounds=4,
                             settle_max_seconds=0.0)  # fmt: skip
    stats = measure_interleaved(runners, settings, batch=1)
    # each block is one untimed run and 100 timed ones (these runners are that fast)
    assert stats["a"].iterations == stats["b"].iterations == 4 * 100
    assert len([k for k, _ in itertools.groupby(calls[2:])]) >= 4


def test_a_block_waits_until_the_previous_candidates_threads_are_idle() -> None:
    """Runtimes keep worker threads spinning after a run (ONNX Runtime's, for tens of
    milliseconds by default); a block that started at once would share the cores with
    them. Here one candidate leaves a busy thread behind after every call, as such a
    pool does, and the other candidate must never run while it is still busy."""
    import threading
    import time

    state: dict[str, object] = {"until": 0.0, "thread": None}
    overlaps: list[bool] = []

    def spin_for_a_while() -> None:
        while time.perf_counter() < float(state["until"]):  # type: ignore[arg-type]
            pass

    def spinning_runtime() -> None:
        state["until"] = time.perf_counter() + 0.03
        t = state["thread"]
        if not (isinstance(t, threading.Thread) and t.is_alive()):
            t = threading.Thread(target=spin_for_a_while, daemon=True)
            state["thread"] = t
            t.start()

    def quiet_runtime() -> None:
        t = state["thread"]
        overlaps.append(isinstance(t, threading.Thread) and t.is_alive())

    runners = {"spinning": spinning_runtime, "quiet": quiet_runtime}
    stats = measure_interleaved(runners, BenchSettings(warmup=2, iterations=20), batch=1)
    assert stats["quiet"].iterations == 20 and len(overlaps) > 20
    assert not any(overlaps)
    # Without the wait (settle_max_seconds=0) the same pair does overlap: the test can fail.
    overlaps.clear()
    measure_interleaved(
        runners, BenchSettings(warmup=2, iterations=20, settle_max_seconds=0), batch=1
    )
    assert any(overlaps)
    t = state["thread"]
    if isinstance(t, threading.Thread):
        t.join()


def test_settings_validate() -> None:
    with pytest.raises(ValueError):
        BenchSettings(batches=(0,))
    with pytest.raises(ValueError):
        BenchSettings(duration=0)
    with pytest.raises(ValueError):
        BenchSettings(iterations=0)
    with pytest.raises(ValueError):
        BenchSettings(min_rounds=0)


def test_gpu_sessions_get_a_device_time_row_beside_the_wall_clock() -> None:
    """Harness test with stub sessions (no hardware claim): every session is timed on
    the wall clock, host to host, interleaved with the others, so every row measures
    the same scope; a session with a device clock (as the TensorRT engine's, with CUDA
    events) gets a second row of device time alone, named so."""
    from pathlib import Path

    import numpy as np

    from quantship.backends.base import Artifact, BaseSession, Capabilities, SessionSettings
    from quantship.exporter.load import InputSpec
    from quantship.measure.run import Candidate, bench_candidates

    class CpuStub(BaseSession):
        def run(self, feeds: dict[str, Any]) -> list[Any]:
            return [feeds["x"] * 2]

    class GpuStub(CpuStub):
        device_clock = True

        def device_latency_ms(
            self, feeds: dict[str, Any], warmup: int, iterations: int
        ) -> list[float]:
            return [0.5] * iterations

    class StubBackend:
        extra = "stub"
        formats = ("onnx",)

        def __init__(self, name: str, session: Any) -> None:
            self.name, self.s = name, session

        def capabilities(self) -> Capabilities:
            return Capabilities("CPU", ("fp32",), "fp32")

        def session(self, artifact: Artifact, settings: SessionSettings) -> Any:
            return self.s

    art = Artifact("stub", "onnx", Path(), ("m.onnx",))
    cands = [
        Candidate("cpu", StubBackend("cpu_stub", CpuStub()), art),  # type: ignore[arg-type]
        Candidate("gpu", StubBackend("gpu_stub", GpuStub()), art),  # type: ignore[arg-type]
    ]
    stats = bench_candidates(
        cands, [InputSpec("x", (None, 4), "float32")], BenchSettings(warmup=1, iterations=7)
    )
    by = {s.label: s for s in stats}
    assert set(by) == {"cpu", "gpu", "gpu (device time, no copies)"}
    for label in ("cpu", "gpu"):
        assert by[label].mode == "latency" and by[label].iterations == 7
        assert np.isfinite(by[label].p50_ms)
    dev = by["gpu (device time, no copies)"]
    assert dev.mode == "device" and dev.p50_ms == 0.5 and dev.iterations == 7
    assert (by["gpu"].key, dev.key) == ("gpu_stub:int8", "gpu_stub:int8:device")


def test_candidates_with_the_same_key_are_refused() -> None:
    from pathlib import Path

    from quantship.backends import registry
    from quantship.backends.base import Artifact
    from quantship.errors import QuantshipError
    from quantship.exporter.load import InputSpec
    from quantship.measure.run import Candidate, bench_candidates

    b = registry.get(registry.DEFAULT)
    art = Artifact(b.name, "onnx-qdq", Path(), ("m.onnx",))
    with pytest.raises(QuantshipError, match="both"):
        bench_candidates(
            [Candidate("a", b, art), Candidate("b", b, art)],
            [InputSpec("x", (None, 4), "float32")],
            BenchSettings(warmup=1, iterations=3),
        )


def test_lengths_size_dynamic_dimensions_and_cut_or_repeat_a_sample() -> None:
    import numpy as np

    from quantship.errors import QuantshipError
    from quantship.exporter.load import InputSpec
    from quantship.measure.run import make_feeds

    inputs = [InputSpec("input_ids", (None, None), "int64"), InputSpec("x", (None, 3), "float32")]
    feeds = make_feeds(inputs, 2, length=7)
    assert feeds["input_ids"].shape == (2, 7) and feeds["x"].shape == (2, 3)
    sample: dict[str, np.ndarray[Any, Any]] = {
        "input_ids": np.arange(1, 6)[None],
        "x": np.ones((1, 3), np.float32),
    }
    long = make_feeds(inputs, 1, sample, length=12)["input_ids"][0]
    assert long.tolist() == [1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2]
    assert make_feeds(inputs, 1, sample, length=3)["input_ids"][0].tolist() == [1, 2, 3]
    with pytest.raises(QuantshipError, match="has none"):
        make_feeds([InputSpec("x", (None, 3), "float32")], 1, length=4)
    with pytest.raises(ValueError, match="lengths"):
        BenchSettings(lengths=(0,))
