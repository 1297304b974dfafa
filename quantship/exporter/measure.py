"""An export's measurements: fidelity of every float option and INT8 artifact against
fp32, the float layers' precision each artifact needs, latency side by side, the
verdict, and the accuracy guard's latency cost."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from quantship.backends import registry
from quantship.backends.base import Artifact, Backend
from quantship.exporter.load import FloatModel
from quantship.exporter.report import Measured
from quantship.measure.run import (
    Candidate,
    artifact_candidates,
    bench_candidates,
    float_candidates,
)
from quantship.measure.timing import BenchSettings, LatencyStats, p50_by_key
from quantship.measure.verdict import Budget, Option, decide
from quantship.ui import SILENT, UI

if TYPE_CHECKING:
    from quantship.exporter.job import ExportOptions, Loaded

# Five rounds at least: the interleaving evens out a shared host's noise only over
# rounds; timed in one round, identical artifacts came out up to 35 % apart here
# (benchmarks/accuracy_algorithms.py on ocrctc), enough to flip a verdict.
EXPORT_BENCH = BenchSettings(warmup=5, duration=3.0, min_iterations=10, min_rounds=5)


def export_bench(fm: FloatModel, threads: int | None) -> BenchSettings:
    """The export's timing: batch 1, or the model's fixed batch where it has one."""
    return dataclasses.replace(EXPORT_BENCH, threads=threads, batches=(fm.fixed_batch or 1,))


def measure(
    opts: ExportOptions,
    loaded: Loaded,
    float_art: Artifact,
    artifacts: Sequence[Artifact],
    chosen: Sequence[Backend],
    unguarded: dict[str, Artifact],
    ui: UI,
) -> tuple[Measured, dict[str, float | None]]:
    """Fidelity of every float option and artifact against fp32 in its own runtime, the
    float layers' precision each artifact needs, latency side by side, the verdict."""
    from quantship.exporter.pipeline import measure_fidelity

    budget = opts.budget
    runtimes = list(chosen)
    default = registry.get(registry.DEFAULT)
    if default.name not in {b.name for b in runtimes} and default.available() is None:
        runtimes.insert(0, default)  # the float model as most users first run it
    floats = float_candidates(float_art, runtimes)
    arts = artifact_candidates(list(zip(artifacts, chosen, strict=True)))
    fidelity, drift = measure_fidelity(
        loaded.fm, float_art, [*floats, *arts], loaded.held, opts.threads, ui,
        (loaded.check_feeds, loaded.expected), pooling=opts.pooling,
    )  # fmt: skip
    arts = [float_layers(c, fidelity, budget, loaded, float_art, opts.threads, ui) for c in arts]
    latency: list[LatencyStats] = []
    settings = export_bench(loaded.fm, opts.threads)
    if opts.bench:
        extra = [no_guard(c, unguarded[c.backend.name], opts.threads)
                 for c in arts if c.backend.name in unguarded]  # fmt: skip
        latency = bench_candidates(
            [*floats, *arts, *extra],
            loaded.fm.inputs,
            settings,
            sample=loaded.check_feeds[0] if loaded.check_feeds else None,
            examples=loaded.fm.example_shapes,
            ui=ui,
        )
    p50 = p50_by_key(latency, settings.batches[0])
    verdict = decide(
        [
            Option(c.key, c.label, c.is_float, p50.get(c.key),
                   (fidelity.get(c.key) or {}).get("cosine"),
                   c.artifact.size_bytes() / float_art.size_bytes()
                   if c.backend.name in unguarded and not c.is_float else None)
            for c in [*floats, *arts]
        ],
        budget,
    )  # fmt: skip
    return Measured(floats, arts, fidelity, latency, verdict, budget), drift


def float_layers(
    c: Candidate,
    fidelity: dict[str, dict[str, Any] | None],
    budget: Budget,
    loaded: Loaded,
    float_art: Artifact,
    threads: int | None,
    ui: UI,
) -> Candidate:
    """An INT8 artifact's float layers run in the precision its runtime picks (bf16 on
    such CPUs) unless that misses the budget and fp32 keeps it: then the artifact says
    it needs fp32, and why."""
    from quantship.exporter.pipeline import measure_fidelity

    caps = c.backend.capabilities()
    cos = (fidelity.get(c.key) or {}).get("cosine")
    if (
        cos is None
        or budget.meets(cos)
        or caps.default_precision == "fp32"
        or "fp32" not in caps.float_precisions
    ):
        return c
    meta = {**c.artifact.metadata, "float_precision": "fp32"}
    trial = dataclasses.replace(c.artifact, metadata=meta)
    probe = Candidate(c.backend.describe(trial, c.settings(threads)), c.backend, trial)
    again, _ = measure_fidelity(loaded.fm, float_art, [probe], loaded.held, threads, SILENT)
    cos32 = (again.get(probe.key) or {}).get("cosine")
    if not budget.meets(cos32):
        return c
    why = (
        f"float layers in {caps.default_precision} (the runtime's default) give cosine "
        f"{cos:.4f}, under the budget; in fp32 {cos32:.4f}: compile it with fp32 "
        "inference precision"
    )
    ui.note(f"{c.backend.name}: {why}")
    fidelity[probe.key] = again[probe.key]
    art = dataclasses.replace(trial, notes=(*trial.notes, why))
    return Candidate(c.backend.describe(art, c.settings(threads)), c.backend, art)


def no_guard(c: Candidate, plain: Artifact, threads: int | None) -> Candidate:
    """The all-INT8 build of a guarded artifact, run as the guarded one runs (the same
    float-layer precision), to time the guard's cost."""
    meta = dict(plain.metadata)
    if "float_precision" in c.artifact.metadata:
        meta["float_precision"] = c.artifact.metadata["float_precision"]
    art = dataclasses.replace(plain, metadata=meta)
    label = c.backend.describe(art, c.settings(threads)) + ", all INT8 (no guard)"
    return Candidate(label, c.backend, art, variant="no-guard")


def add_guard_cost(g: dict[str, Any], c: Candidate, latency: Sequence[LatencyStats]) -> None:
    """The accuracy guard's latency cost: the guarded artifact against the all-INT8 one."""
    p50 = p50_by_key(latency, latency[0].batch if latency else 1)
    guarded, plain = p50.get(c.key), p50.get(f"{c.key}:no-guard")
    if guarded is not None and plain is not None:
        g["p50_ms_guarded"] = guarded
        g["p50_ms_all_int8"] = plain
        g["latency_cost"] = guarded / plain
