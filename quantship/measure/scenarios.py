"""MLPerf LoadGen's scenarios, with its meanings, on the runtimes' own parallel requests.

- ``single-stream``: the next query is issued when the previous one completes; latency
  percentiles. This is ``timing.measure_interleaved``: candidates take turns in blocks.
- ``offline``: every sample is available at once; the runtime's request queue is kept
  full (OpenVINO's infer requests on the THROUGHPUT-hint compile, ONNX Runtime's
  threads) and throughput is what counts.
- ``server``: queries arrive as a Poisson process at ``--qps``; a query's latency runs
  from its scheduled arrival to its completion, so time spent waiting for a free
  request counts, as it does for a user. With ``--latency-bound``, also the highest rate
  whose p99 stays under the bound (a bisection over short server runs).

The arrivals of a server run are the order statistics of uniform times over the run
(a Poisson process given its number of arrivals): the run then asks for exactly
``--qps``, and the rate it achieves (queries over the time from the first arrival to the
last completion) differs from that only by what the model could not keep up with.
Candidates run one after another in two rounds (order reversed in the second), as each
saturates the machine; the two rounds' figures are pooled.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from quantship.backends.base import RequestQueue
from quantship.measure.timing import percentile_key, percentiles_of

SCENARIOS = ("single-stream", "offline", "server")


@dataclass(frozen=True)
class ScenarioResult:
    """One candidate in the offline or server scenario at one batch size (and length)."""

    label: str
    key: str
    scenario: str
    batch: int
    length: int | None
    queries: int  # completed
    seconds: float  # from the first query issued (or scheduled) to the last completion
    requests: str  # how the runtime ran them in parallel
    latencies_ms: tuple[float, ...] = ()  # server: each query, arrival to completion
    target_qps: float | None = None
    latency_bound_ms: float | None = None
    max_qps_within_bound: float | None = None

    @property
    def qps(self) -> float:
        """Achieved: queries completed per second."""
        return self.queries / self.seconds if self.seconds > 0 else 0.0

    @property
    def samples_per_s(self) -> float:
        return self.qps * self.batch

    def percentiles(self, ps: Sequence[float]) -> dict[str, float]:
        return percentiles_of(self.latencies_ms, ps) if self.latencies_ms else {}

    def to_json(self, ps: Sequence[float] = (50.0, 90.0, 99.0)) -> dict[str, Any]:
        out: dict[str, Any] = {
            "label": self.label,
            "key": self.key,
            "scenario": self.scenario,
            "batch": self.batch,
            "length": self.length,
            "requests": self.requests,
            "queries": self.queries,
            "seconds": round(self.seconds, 4),
            "qps": round(self.qps, 3),
            "samples_per_s": round(self.samples_per_s, 3),
        }
        if self.target_qps is not None:
            out["target_qps"] = self.target_qps
        if self.latencies_ms:
            pct = self.percentiles(sorted({50.0, 90.0, 99.0, *ps}))
            out.update({k: round(v, 4) for k, v in pct.items()})
            out["mean_ms"] = round(float(np.mean(self.latencies_ms)), 4)
            out["samples_ms"] = [round(v, 4) for v in self.latencies_ms]
        if self.latency_bound_ms is not None:
            out["latency_bound_ms"] = self.latency_bound_ms
            out["max_qps_within_bound"] = (
                None if self.max_qps_within_bound is None else round(self.max_qps_within_bound, 2)
            )
        return out


def offline(queue: RequestQueue, seconds: float) -> tuple[int, float]:
    """Queries completed and seconds spent with the queue kept full for ``seconds``
    (after one warm-up query per request)."""
    for _ in range(queue.size):
        queue.start(lambda: None)
    queue.wait_all()
    lock = threading.Lock()
    done = [0]

    def one() -> None:
        with lock:
            done[0] += 1

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        queue.start(one)  # returns when a request is free: the queue stays full
    queue.wait_all()
    return done[0], time.perf_counter() - t0


def arrivals(qps: float, seconds: float, seed: int = 0) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Arrival times (s from the start) of a Poisson process at ``qps`` given that
    ``round(qps · seconds)`` queries arrive in ``seconds``: sorted uniform times."""
    n = max(1, round(qps * seconds))
    rng = np.random.default_rng(seed)
    return np.sort(rng.uniform(0.0, n / qps, n))


def server(
    queue: RequestQueue, qps: float, seconds: float, seed: int = 0
) -> tuple[list[float], float]:
    """Each query's latency (ms, from its scheduled arrival to its completion) and the
    seconds from the first arrival to the last completion."""
    times = arrivals(qps, seconds, seed)
    finished = [0.0] * len(times)
    for _ in range(queue.size):  # warm-up
        queue.start(lambda: None)
    queue.wait_all()
    start = time.perf_counter() + 0.002
    for i, at in enumerate(times):
        due = start + float(at)
        # Sleep, never spin: a spinning dispatcher would take a core from the runtime.
        if (left := due - time.perf_counter()) > 0:
            time.sleep(left)
        queue.start(_stamp(finished, i))
    queue.wait_all()
    lat = [(finished[i] - (start + float(t))) * 1e3 for i, t in enumerate(times)]
    return lat, max(finished) - (start + float(times[0]))


def _stamp(finished: list[float], i: int) -> Callable[[], None]:
    def done() -> None:
        finished[i] = time.perf_counter()

    return done


def max_qps_within(
    queue: RequestQueue, bound_ms: float, ceiling_qps: float, seconds: float, p: float = 99.0
) -> float | None:
    """The highest arrival rate (within 5 %) whose p-th percentile latency stays under
    ``bound_ms``, by bisection between 0 and ``ceiling_qps`` (the offline throughput: no
    server does better); None if even a trickle of queries exceeds it."""
    key = percentile_key(p)

    def ok(rate: float) -> bool:
        trial = max(seconds, min(30 / rate, 4 * seconds))  # at least 30 queries where it can
        lat, _ = server(queue, rate, trial, seed=1)
        return percentiles_of(lat, [p])[key] <= bound_ms

    if ok(ceiling_qps):
        return ceiling_qps
    lo, hi = ceiling_qps * 0.02, ceiling_qps
    if not ok(lo):
        return None
    while hi > 1.05 * lo:  # geometric bisection: the same relative precision at any rate
        mid = (lo * hi) ** 0.5
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo
