"""Benchmark sessions side by side: feeds for each batch size, interleaved timing.

Needs only numpy and the runtimes being measured (no torch), so it runs on a target
machine that has only what deployment has.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from quantship.backends.base import Artifact, Backend, Session, SessionSettings
from quantship.bench.timing import (
    BenchSettings,
    LatencyStats,
    measure_interleaved,
    stats_from_samples,
)
from quantship.errors import QuantshipError
from quantship.exporter.load import InputSpec
from quantship.types import Feed, Precision
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


@dataclass(frozen=True)
class Throughput:
    """Throughput mode: the runtime's own parallel requests (OpenVINO's THROUGHPUT hint)."""

    label: str
    batch: int
    runs: int
    seconds: float

    @property
    def samples_per_s(self) -> float:
        return self.batch * self.runs / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "label": self.label,
            "batch": self.batch,
            "mode": "throughput",
            "runs": self.runs,
            "seconds": round(self.seconds, 3),
            "samples_per_s": round(self.samples_per_s, 2),
        }


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
) -> list[LatencyStats]:
    """Latency of every candidate at every batch size, interleaved per batch size, on
    the wall clock: a run from host inputs to host outputs, copies to and from a device
    included, so every row measures the same thing. Sessions with a device clock (a
    TensorRT engine) also get a row of device time alone, named so."""
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
        sessions: dict[str, Session] = {
            c.key: stack.enter_context(c.backend.session(c.artifact, c.settings(settings.threads)))
            for c in candidates
        }
        return _time_all(candidates, sessions, inputs, settings, sample, examples, ui)


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


def throughput_candidates(
    candidates: Sequence[Candidate],
    inputs: Sequence[InputSpec],
    settings: BenchSettings,
    seconds: float,
    *,
    sample: Feed | None = None,
    examples: Mapping[str, Sequence[int]] | None = None,
    ui: UI = SILENT,
) -> list[Throughput]:
    """Throughput mode for the candidates whose session offers it, in two interleaved
    rounds of ``seconds / 2`` each."""
    out: list[Throughput] = []
    capable = [c for c in candidates if c.backend.capabilities().throughput]
    if not capable or seconds <= 0:
        return out
    with contextlib.ExitStack() as stack:
        sessions = [
            (c, stack.enter_context(c.backend.session(c.artifact, c.settings(settings.threads))))
            for c in capable
        ]
        return _throughput(sessions, inputs, settings, seconds, sample, examples, ui)


def _throughput(
    capable: Sequence[tuple[Candidate, Session]],
    inputs: Sequence[InputSpec],
    settings: BenchSettings,
    seconds: float,
    sample: Feed | None,
    examples: Mapping[str, Sequence[int]] | None,
    ui: UI,
) -> list[Throughput]:
    out: list[Throughput] = []
    with ui.progress("throughput mode", len(capable) * len(settings.batches) * 2) as advance:
        for b in settings.batches:
            first = settings.lengths[0] if settings.lengths else None
            feeds = make_feeds(inputs, b, sample, examples=examples, length=first)
            acc = {c.label: [0, 0.0] for c, _ in capable}
            for _ in range(2):
                for c, s in capable:
                    runs, secs = s.throughput(feeds, seconds / 2)
                    acc[c.label][0] += runs
                    acc[c.label][1] += secs
                    advance(1)
            out.extend(
                Throughput(c.label, b, int(acc[c.label][0]), float(acc[c.label][1]))
                for c, _ in capable
            )
    return out
