"""The only timing code in quantship: warm-up, clocks, percentiles.

Candidates are measured *interleaved*: a short block of runs of each per round, the
order rotating every round, so that a noisy neighbour or a frequency change hits every
candidate alike and the ratio between them holds even where absolute numbers drift.
Each block starts with one untimed run: alternating models evict each other's weights
from the caches, and a deployed model that runs continuously does not pay that.
Before a block starts, the harness waits until the process is idle: runtimes keep
worker threads spinning for a while after a run (ONNX Runtime's do, by default), and a
block that started at once would share the cores with the previous candidate's threads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class BenchSettings:
    """Warm-up (runs, or at least ``warmup_seconds``), then ``iterations`` rounds or
    ``duration`` seconds in all, whichever ends first (at least ``min_iterations`` runs
    of each candidate, and at least ``min_rounds`` rounds of blocks: the interleaving
    only evens out a noisy neighbour over several rounds)."""

    warmup: int = 10
    warmup_seconds: float = 0.0
    iterations: int | None = None
    duration: float = 10.0
    min_iterations: int = 10
    min_rounds: int = 1
    block_seconds: float = 0.2
    settle_max_seconds: float = 1.0
    batches: tuple[int, ...] = (1,)
    threads: int | None = None
    # Sizes for every dynamic dimension other than the batch (sequence lengths), each
    # measured in turn; empty: the sample's or --input-shape's.
    lengths: tuple[int, ...] = ()
    # Reported besides p50/p90/p99 (--percentiles), in (0, 100].
    percentiles: tuple[float, ...] = (50.0, 90.0, 99.0)

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.warmup_seconds < 0:
            raise ValueError("warm-up must be non-negative")
        if self.iterations is not None and self.iterations < 1:
            raise ValueError("iterations must be >= 1")
        if self.duration <= 0:
            raise ValueError("duration must be positive")
        if not self.batches or any(b < 1 for b in self.batches):
            raise ValueError(f"batch sizes must be >= 1, got {self.batches}")
        if any(n < 1 for n in self.lengths):
            raise ValueError(f"lengths must be >= 1, got {self.lengths}")
        if self.threads is not None and self.threads < 1:
            raise ValueError("threads must be >= 1")
        if self.min_rounds < 1:
            raise ValueError("min_rounds must be >= 1")
        if self.settle_max_seconds < 0:
            raise ValueError("settle_max_seconds must be non-negative")
        if not self.percentiles or any(not 0 < p <= 100 for p in self.percentiles):
            raise ValueError(f"percentiles must lie in (0, 100], got {self.percentiles}")


def percentile_key(p: float) -> str:
    """The JSON key of a percentile: 50 → ``p50_ms``, 99.9 → ``p99.9_ms``."""
    return f"p{p:g}_ms"


def percentiles_of(ms: Sequence[float], ps: Sequence[float]) -> dict[str, float]:
    """``percentile_key(p)`` → the value, for each ``p`` (linear interpolation)."""
    if not len(ms):
        return {}
    values = np.percentile(np.asarray(ms, dtype=np.float64), list(ps))
    return {percentile_key(p): float(v) for p, v in zip(ps, values, strict=True)}


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one candidate at one batch size, in milliseconds per run."""

    label: str
    batch: int
    threads: int | None
    warmup: int
    iterations: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    throughput: float  # samples per second: batch · runs / time spent running
    mode: str = "latency"  # "latency": wall clock, host to host; "device": device time only
    key: str = ""  # the candidate's stable key, where there is one
    length: int | None = None  # the size of the dynamic dimensions (--lengths), if set
    # Every run's latency, in the order measured (the raw samples the JSON keeps).
    samples_ms: tuple[float, ...] = ()

    def percentiles(self, ps: Sequence[float]) -> dict[str, float]:
        """``p<p>_ms`` for each ``p`` from the raw samples (p50/p90/p99 without them)."""
        if self.samples_ms:
            return percentiles_of(self.samples_ms, ps)
        known = {50.0: self.p50_ms, 90.0: self.p90_ms, 99.0: self.p99_ms}
        return {percentile_key(p): known[p] for p in ps if p in known}

    def to_json(
        self, ps: Sequence[float] = (50.0, 90.0, 99.0), samples: bool = True
    ) -> dict[str, Any]:
        pct = {k: round(v, 4) for k, v in self.percentiles(ps).items()}
        runs_per_s = self.throughput / self.batch
        return {
            "label": self.label,
            "key": self.key,
            "scenario": "single-stream",
            "batch": self.batch,
            "length": self.length,
            "threads": self.threads,
            "mode": self.mode,
            "warmup": self.warmup,
            "iterations": self.iterations,
            "p50_ms": round(self.p50_ms, 4),
            "p90_ms": round(self.p90_ms, 4),
            "p99_ms": round(self.p99_ms, 4),
            **pct,
            "mean_ms": round(self.mean_ms, 4),
            "std_ms": round(self.std_ms, 4),
            "min_ms": round(self.min_ms, 4),
            "max_ms": round(self.max_ms, 4),
            # Queries (runs) per second of running, and samples (batch items) per second.
            "qps": round(runs_per_s, 3),
            "samples_per_s": round(self.throughput, 3),
            "throughput": round(self.throughput, 3),
            **({"samples_ms": [round(v, 4) for v in self.samples_ms]} if samples else {}),
        }


def stats_from_samples(
    label: str,
    batch: int,
    samples_ns: list[int],
    *,
    threads: int | None,
    warmup: int,
    mode: str = "latency",
    key: str = "",
) -> LatencyStats:
    if not samples_ns:
        raise ValueError(f"{label}: no timing samples")
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return LatencyStats(
        label=label,
        batch=batch,
        threads=threads,
        warmup=warmup,
        iterations=int(ms.size),
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        mean_ms=float(ms.mean()),
        std_ms=float(ms.std()),
        min_ms=float(ms.min()),
        max_ms=float(ms.max()),
        throughput=float(batch * ms.size / (ms.sum() / 1e3)),
        mode=mode,
        key=key,
        samples_ms=tuple(float(v) for v in ms),
    )


def p50_by_key(
    stats: Sequence[LatencyStats], batch: int, length: int | None = None
) -> dict[str, float]:
    """Wall-clock p50 at ``batch`` (and ``length``) by candidate key (rows of device
    time left out): the figure verdicts and speedups compare."""
    return {
        s.key: s.p50_ms
        for s in stats
        if s.batch == batch and s.length == length and s.mode == "latency"
    }


def settle(max_seconds: float, window: float = 0.005, busy: float = 0.1) -> float:
    """Wait until this process's threads have been idle (CPU time below ``busy`` of one
    core) for one ``window``, at most ``max_seconds``; return the seconds waited."""
    start = time.perf_counter()
    if max_seconds <= 0:
        return 0.0
    while True:
        cpu0, t0 = time.process_time(), time.perf_counter()
        time.sleep(window)
        cpu1, t1 = time.process_time(), time.perf_counter()
        if cpu1 - cpu0 < busy * (t1 - t0) or t1 - start >= max_seconds:
            return t1 - start


def measure_interleaved(
    runners: Mapping[str, Callable[[], object]],
    settings: BenchSettings,
    batch: int,
    progress: Callable[[int], None] | None = None,
) -> dict[str, LatencyStats]:
    """Time each runner (one inference per call), interleaved block by block."""
    labels = list(runners)
    block: dict[str, int] = {}
    settle_max = settings.settle_max_seconds if len(labels) > 1 else 0.0
    for label in labels:
        fn = runners[label]
        settle(settle_max)  # the previous candidate's threads stop before this one runs
        t_end = time.perf_counter() + settings.warmup_seconds
        k = 0
        t0 = time.perf_counter()
        while k < max(settings.warmup, 1) or time.perf_counter() < t_end:
            fn()
            k += 1
        per_run = (time.perf_counter() - t0) / k
        block[label] = max(1, min(100, round(settings.block_seconds / max(per_run, 1e-6))))
    samples: dict[str, list[int]] = {label: [] for label in labels}
    deadline = time.perf_counter() + settings.duration
    clock = time.perf_counter_ns
    rounds = 0

    def done(label: str) -> bool:
        n = len(samples[label])
        if settings.iterations is not None:
            return n >= settings.iterations
        return (
            n >= settings.min_iterations
            and rounds >= settings.min_rounds
            and time.perf_counter() >= deadline
        )

    while not all(done(label) for label in labels):
        shift = rounds % len(labels)
        for label in labels[shift:] + labels[:shift]:
            if done(label) and settings.iterations is not None:
                continue
            fn = runners[label]
            settle(settle_max)
            fn()  # untimed: refills the caches the previous block evicted
            want = block[label]
            if settings.iterations is not None:
                want = min(want, settings.iterations - len(samples[label]))
            for _ in range(want):
                t0 = clock()
                fn()
                samples[label].append(clock() - t0)
            if progress is not None:
                progress(want)
        rounds += 1
    return {
        label: stats_from_samples(
            label, batch, samples[label], threads=settings.threads, warmup=settings.warmup
        )
        for label in labels
    }
