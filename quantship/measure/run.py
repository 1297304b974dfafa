"""Benchmark sessions side by side: feeds for each batch size, interleaved timing.

Needs only numpy and the runtimes being measured (no torch), so it runs on a target
machine that has only what deployment has.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from quantship.backends.base import Artifact, Backend, Session, SessionSettings
from quantship.errors import QuantshipError, closest
from quantship.measure import DEFAULT_SCENARIO_SECONDS, DEFAULT_SCENARIOS
from quantship.measure.scenarios import ScenarioResult
from quantship.measure.timing import (
    BenchSettings,
    LatencyStats,
    measure_interleaved,
    stats_from_samples,
)
from quantship.types import Feed, InputSpec, Precision
from quantship.ui import SILENT, UI


@dataclass(frozen=True)
class Candidate:
    """One thing to time: an INT8 artifact, or the float model at a float precision, in
    a backend. ``label`` names what actually runs (the backend's ``describe``)."""

    label: str
    backend: Backend
    artifact: Artifact
    precision: Precision | None = None  # the float model's (None: an INT8 artifact)
    default: bool = False  # the runtime's own choice for the float model
    variant: str = ""  # another build of the same artifact, timed beside it

    @property
    def is_float(self) -> bool:
        return self.artifact.precision == "float"

    @property
    def key(self) -> str:
        """Stable across machines: ``<backend>:float:<precision>`` or ``<backend>:int8``,
        then ``:<variant>`` where there is one."""
        key = f"{self.backend.name}:{self.artifact.precision}"
        if self.is_float:
            key += f":{self.precision or 'default'}"
        return f"{key}:{self.variant}" if self.variant else key

    def settings(self, threads: int | None, mode: str = "latency") -> SessionSettings:
        return SessionSettings(threads=threads, mode=mode, precision=self.precision)  # type: ignore[arg-type]


def float_candidates(float_art: Artifact, backends: Sequence[Backend]) -> list[Candidate]:
    """The float model in every runtime that can run it here, at each float precision
    the runtime has on this machine: its default (bf16 where OpenVINO finds AVX-512 BF16
    or AMX), its fastest, and fp32. These are what the user runs without us."""
    out: list[Candidate] = []
    seen: set[str] = set()
    for b in backends:
        caps = b.capabilities()
        if b.name in seen or not caps.float_precisions:
            continue
        seen.add(b.name)
        for prec in caps.float_precisions:
            default = prec == caps.default_precision
            label = b.describe(float_art, SessionSettings(precision=prec))
            out.append(
                Candidate(label + (" (default)" if default else ""), b, float_art, prec, default)
            )
    return out


def artifact_candidates(pairs: Sequence[tuple[Artifact, Backend]]) -> list[Candidate]:
    return [Candidate(b.describe(a, SessionSettings()), b, a) for a, b in pairs]


def make_feeds(
    inputs: Sequence[InputSpec],
    batch: int,
    sample: Feed | None = None,
    seed: int = 0,
    examples: Mapping[str, Sequence[int]] | None = None,
    length: int | None = None,
) -> Feed:
    """Inputs for one run at ``batch``: a real sample repeated, or seeded random data
    (standard normal for floats, zeros for integers). A dynamic dimension other than
    the batch takes its size from ``length`` (``--lengths``; a real sample is then cut
    or repeated along it), else from the sample, else from ``examples`` (the
    calibration sample's shape, or ``--input-shape``)."""
    if length is not None:
        if not any(None in s.shape[1:] for s in inputs):
            raise QuantshipError(
                "--lengths sizes the dynamic dimensions other than the batch, and the model "
                "has none: every input is " + ", ".join(f"{s.name} {s.shape_str()}" for s in inputs)
            )
        sample = _at_length(inputs, sample, length) if sample is not None else None
        examples = {s.name: [1, *(length if d is None else d for d in s.shape[1:])] for s in inputs}
    rng = np.random.default_rng(seed)
    feeds: Feed = {}
    for spec in inputs:
        fixed = spec.shape[0] if spec.shape else None
        if fixed is not None and fixed != batch:
            raise QuantshipError(
                f"model input {spec.name!r} has a fixed batch of {fixed}; time it at that batch "
                f"(--batch {fixed}), or export the model with a dynamic batch axis for batch {batch}"
            )
        if sample is not None and spec.name in sample:
            ex: Sequence[int] | None = sample[spec.name].shape
        else:
            ex = (examples or {}).get(spec.name)
        dims = spec.concrete(batch, ex)
        if None in dims:
            axis = dims.index(None)
            example = "x".join(str(x or "N") for x in spec.shape)
            raise QuantshipError(
                f"model input {spec.name!r} ({spec.shape_str()}) has dynamic dimension {axis}; "
                f"say its size with --input-shape {spec.name}={example.replace('N', '1', 1)}"
            )
        shape = tuple(int(d or 0) for d in dims)
        if sample is not None and spec.name in sample:
            one = sample[spec.name]
            feeds[spec.name] = np.ascontiguousarray(np.repeat(one[:1], batch, axis=0))
        elif np.issubdtype(np.dtype(spec.dtype), np.floating):
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            feeds[spec.name] = np.zeros(shape, dtype=spec.dtype)
    return feeds


def _at_length(inputs: Sequence[InputSpec], sample: Feed, length: int) -> Feed:
    """``sample`` with every dynamic non-batch axis cut, or repeated, to ``length``."""
    out = dict(sample)
    for spec in inputs:
        a = sample.get(spec.name)
        if a is None:
            continue
        for axis, d in enumerate(spec.shape):
            if axis and d is None and axis < a.ndim and 0 < a.shape[axis] != length:
                a = np.take(a, np.arange(length) % a.shape[axis], axis=axis)
        out[spec.name] = np.ascontiguousarray(a)
    return out


def bench_candidates(
    candidates: Sequence[Candidate],
    inputs: Sequence[InputSpec],
    settings: BenchSettings,
    *,
    sample: Feed | None = None,
    examples: Mapping[str, Sequence[int]] | None = None,
    ui: UI = SILENT,
    cold_start: dict[str, ColdStart] | None = None,
    time_runs: bool = True,
) -> list[LatencyStats]:
    """Latency of every candidate at every batch size, interleaved per batch size, on
    the wall clock: a run from host inputs to host outputs, copies to and from a device
    included, so every row measures the same thing. Sessions with a device clock (a
    TensorRT engine) also get a row of device time alone, named so. Each session's load
    and first run are timed apart (``cold_start``, filled where given); with
    ``time_runs`` False, that is all."""
    for n in settings.lengths or (None,):
        for b in settings.batches:
            make_feeds(inputs, b, sample, examples=examples, length=n)  # fail before loading
    for attr in ("key", "label"):
        seen: set[str] = set()
        for c in candidates:
            value = getattr(c, attr)
            if value in seen:
                raise QuantshipError(f"two candidates to time are both {value!r}; name them apart")
            seen.add(value)
    with contextlib.ExitStack() as stack:
        sessions: dict[str, Session] = {}
        first = make_feeds(inputs, settings.batches[0], sample, examples=examples,
                           length=settings.lengths[0] if settings.lengths else None)  # fmt: skip
        for c in candidates:
            t0 = time.perf_counter()
            sessions[c.key] = stack.enter_context(
                c.backend.session(c.artifact, c.settings(settings.threads))
            )
            t1 = time.perf_counter()
            try:
                sessions[c.key].run(first)
            except Exception as e:
                raise QuantshipError(
                    f"{c.label} fails on its first run: {str(e).splitlines()[0]}"
                ) from None
            if cold_start is not None:
                cold_start[c.key] = ColdStart(c.label, c.key, (t1 - t0) * 1e3,
                                              (time.perf_counter() - t1) * 1e3)  # fmt: skip
        if not time_runs:
            return []
        return _time_all(candidates, sessions, inputs, settings, sample, examples, ui)


@dataclass(frozen=True)
class ColdStart:
    """Loading an artifact (reading, compiling) and its first run, apart from the warm
    latency: what a process that starts, answers one query and exits pays."""

    label: str
    key: str
    load_ms: float
    first_run_ms: float

    def to_json(self) -> dict[str, object]:
        return {"label": self.label, "key": self.key, "load_ms": round(self.load_ms, 3),
                "first_run_ms": round(self.first_run_ms, 3),
                "total_ms": round(self.load_ms + self.first_run_ms, 3)}  # fmt: skip


def _time_all(
    candidates: Sequence[Candidate],
    sessions: Mapping[str, Session],
    inputs: Sequence[InputSpec],
    settings: BenchSettings,
    sample: Feed | None,
    examples: Mapping[str, Sequence[int]] | None,
    ui: UI,
) -> list[LatencyStats]:
    out: list[LatencyStats] = []
    points = [(n, b) for n in settings.lengths or (None,) for b in settings.batches]
    for n, b in points:
        feeds = make_feeds(inputs, b, sample, examples=examples, length=n)
        at = f"batch {b}" + (f", length {n}" if n is not None else "")
        for c in candidates:
            try:
                sessions[c.key].run(feeds)
            except Exception as e:
                raise QuantshipError(f"{c.label} fails at {at}: {str(e).splitlines()[0]}") from None
        runners = {key: (lambda s=s, f=feeds: s.run(f)) for key, s in sessions.items()}
        with ui.progress(f"benchmarking {at}", settings.iterations) as advance:
            stats = measure_interleaved(runners, settings, b, progress=advance)
        for c in candidates:
            out.append(replace(stats[c.key], label=c.label, key=c.key, length=n))
        for c in candidates:
            s = sessions[c.key]
            if not s.device_clock:
                continue
            ms = s.device_latency_ms(feeds, max(settings.warmup, 1), settings.iterations or 200)
            row = stats_from_samples(
                f"{c.label} (device time, no copies)",
                b,
                [int(m * 1e6) for m in ms],
                threads=None,
                warmup=settings.warmup,
                mode="device",
                key=f"{c.key}:device",
            )
            out.append(replace(row, length=n))
    return out


def scenario_candidates(
    candidates: Sequence[Candidate],
    inputs: Sequence[InputSpec],
    settings: BenchSettings,
    plan: ScenarioPlan,
    *,
    sample: Feed | None = None,
    examples: Mapping[str, Sequence[int]] | None = None,
    ui: UI = SILENT,
) -> list[ScenarioResult]:
    """The offline and server scenarios (``plan``) for every candidate at every batch
    size (and length): each candidate's request queue in turn, two rounds, the order
    reversed in the second."""
    from quantship.measure import scenarios as sc

    out: list[ScenarioResult] = []
    points = [(n, b) for n in settings.lengths or (None,) for b in settings.batches]
    todo = [x for x in ("offline", "server") if x in plan.scenarios]
    if not todo or plan.seconds <= 0:
        return out
    steps = len(points) * len(candidates) * 2 * len(todo)
    with contextlib.ExitStack() as stack, ui.progress("scenarios", steps) as advance:
        sessions = {
            c.key: stack.enter_context(c.backend.session(c.artifact, c.settings(settings.threads)))
            for c in candidates
        }
        for n, b in points:
            feeds = make_feeds(inputs, b, sample, examples=examples, length=n)
            queues = {}
            for c in candidates:
                q = sessions[c.key].queue(feeds, plan.streams)
                stack.callback(q.close)
                queues[c.key] = q
            for scenario in todo:
                acc: dict[str, list[Any]] = {c.key: [0, 0.0, []] for c in candidates}
                for rnd in range(2):
                    for c in candidates if rnd == 0 else list(reversed(candidates)):
                        q = queues[c.key]
                        if scenario == "offline":
                            done, secs = sc.offline(q, plan.seconds / 2)
                            acc[c.key][0] += done
                            acc[c.key][1] += secs
                        else:
                            assert plan.qps is not None
                            lat, secs = sc.server(q, plan.qps, plan.seconds / 2, seed=rnd)
                            acc[c.key][0] += len(lat)
                            acc[c.key][1] += secs
                            acc[c.key][2].extend(lat)
                        advance(1)
                for c in candidates:
                    done, secs, lat = acc[c.key]
                    res = ScenarioResult(
                        c.label, c.key, scenario, b, n, int(done), float(secs),
                        queues[c.key].what, tuple(lat),
                        target_qps=plan.qps if scenario == "server" else None,
                    )  # fmt: skip
                    out.append(res)
            if "server" in todo and plan.latency_bound_ms is not None:
                for c in candidates:
                    ceiling = next(
                        (r.qps for r in out if r.key == c.key and r.scenario == "offline"
                         and r.batch == b and r.length == n), None,
                    )  # fmt: skip
                    if ceiling is None:  # no offline run: the server run's own rate bounds it
                        srv = next(r for r in out if r.key == c.key and r.scenario == "server")
                        ceiling = max(srv.qps, 1e3 / max(np.median(srv.latencies_ms), 1e-3))
                    ui.note(f"{c.label}: searching the highest rate with p99 under "
                            f"{plan.latency_bound_ms:g} ms")  # fmt: skip
                    best = sc.max_qps_within(
                        queues[c.key], plan.latency_bound_ms, ceiling, plan.seconds / 2
                    )
                    i = next(i for i, r in enumerate(out) if r.key == c.key
                             and r.scenario == "server" and r.batch == b and r.length == n)  # fmt: skip
                    out[i] = replace(out[i], latency_bound_ms=plan.latency_bound_ms,
                                     max_qps_within_bound=best)  # fmt: skip
    return out


@dataclass(frozen=True)
class ScenarioPlan:
    """What ``--scenario`` asked for: the scenarios, seconds per candidate and scenario,
    the server's rate and latency bound, parallel requests (None: the runtime's choice)."""

    scenarios: tuple[str, ...] = DEFAULT_SCENARIOS
    seconds: float = DEFAULT_SCENARIO_SECONDS
    qps: float | None = None
    latency_bound_ms: float | None = None
    streams: int | None = None

    def __post_init__(self) -> None:
        from quantship.measure.scenarios import SCENARIOS

        for x in self.scenarios:
            if x not in SCENARIOS:
                raise QuantshipError(f"unknown scenario {x!r}; {closest(x, SCENARIOS)}")
        if "server" in self.scenarios and (self.qps is None or self.qps <= 0):
            raise QuantshipError("the server scenario needs an arrival rate: --qps N (queries/s)")
        if self.qps is not None and "server" not in self.scenarios:
            raise QuantshipError("--qps sets the server scenario's rate; add --scenario server")
        if self.latency_bound_ms is not None:
            if "server" not in self.scenarios:
                raise QuantshipError("--latency-bound applies to the server scenario; add "
                                     "--scenario server")  # fmt: skip
            if self.latency_bound_ms <= 0:
                raise QuantshipError("--latency-bound must be a positive number of milliseconds")
        if self.seconds < 0:
            raise QuantshipError("--scenario-seconds must be >= 0")
        if self.streams is not None and self.streams < 1:
            raise QuantshipError("--streams must be >= 1")
