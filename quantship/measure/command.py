"""``quantship bench``: latency of an export folder on this machine (every INT8
artifact beside the float model at each precision each runtime has here, after
checking every file against the manifest's sha256), or of one model in one or more
runtimes, in MLPerf LoadGen's scenarios (``scenarios.py``); the load and first run of
each apart (cold start). The JSON it writes is made to be compared across runs and
machines (``compare.py``)."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from quantship import __version__
from quantship.errors import QuantshipError
from quantship.exporter.output import write_json
from quantship.measure.machine import machine_record
from quantship.measure.run import ColdStart, ScenarioPlan, bench_candidates
from quantship.measure.scenarios import ScenarioResult
from quantship.measure.timing import BenchSettings, LatencyStats, p50_by_key
from quantship.measure.verdict import Option, decide
from quantship.ui import UI, api_ui

SCHEMA = "quantship.bench/2"


def bench(
    target: str | Path,
    *,
    backends: str | Sequence[str] | None = None,
    settings: BenchSettings | None = None,
    scenarios: ScenarioPlan | None = None,
    throughput_seconds: float | None = None,
    data: str | Path | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    tokenizer: str | Path | None = None,
    json_path: str | Path | None = None,
    plot_path: str | Path | None = None,
    duration: float | None = None,
    warmup: int | None = None,
    batch: int | Sequence[int] | None = None,
    threads: int | None = None,
    scenario: str | Sequence[str] | None = None,
    scenario_seconds: float | None = None,
    ui: UI | None = None,
) -> list[LatencyStats]:
    """Latency of an export folder (each artifact beside the float model in its own
    runtime) or of one ONNX model in one or more runtimes, as ``quantship bench``: the
    single-stream and offline scenarios by default. ``duration``, ``warmup``, ``batch``,
    ``threads``, ``scenario`` and ``scenario_seconds`` are its flags (or pass the whole
    ``settings``/``scenarios`` objects); ``throughput_seconds`` is the older name of
    ``scenario_seconds`` (README's Python example runs it)."""
    ui = api_ui(ui)
    from quantship.measure.report import latency_plot, latency_table, scenario_tables
    from quantship.measure.run import scenario_candidates
    from quantship.measure.targets import find_targets

    fields: dict[str, Any] = {"duration": duration, "warmup": warmup, "threads": threads}
    given: dict[str, Any] = {k: v for k, v in fields.items() if v is not None}
    if batch is not None:
        given["batches"] = (batch,) if isinstance(batch, int) else tuple(batch)
    if settings is not None and given:
        raise QuantshipError(f"give settings= or {', '.join(given)}, not both")
    try:
        settings = settings or BenchSettings(**given)
    except ValueError as e:
        raise QuantshipError(str(e)) from None
    asked: dict[str, Any] = {}
    if scenario is not None:
        asked["scenarios"] = (
            tuple(scenario.split(",")) if isinstance(scenario, str) else tuple(scenario)
        )
    if scenario_seconds is not None:
        asked["seconds"] = scenario_seconds
    if scenarios is not None and asked:
        raise QuantshipError("give scenarios= or scenario/scenario_seconds, not both")
    plan = scenarios or ScenarioPlan(**asked)
    if throughput_seconds is not None:
        if scenarios is not None or asked:
            raise QuantshipError("give the offline scenario's length once: --scenario-seconds")
        plan = (
            ScenarioPlan(("single-stream", "offline"), throughput_seconds)
            if throughput_seconds > 0
            else ScenarioPlan(("single-stream",))
        )
    found = find_targets(
        target, backends, data=data, input_shapes=input_shapes, tokenizer=tokenizer, ui=ui
    )
    cands, inputs, examples, sample = found.candidates, found.inputs, found.examples, found.sample
    recorded, budget, title = found.recorded, found.budget, found.title
    first = settings.lengths[0] if settings.lengths else None
    if first is not None and input_shapes:
        raise QuantshipError(
            "--lengths and --input-shape both size the dynamic dimensions; give one of them"
        )
    shapes = found.shapes(settings.batches[0], first)  # what the first point feeds
    cold: dict[str, ColdStart] = {}
    stats = bench_candidates(
        cands, inputs, settings, sample=sample, examples=examples, ui=ui, cold_start=cold,
        time_runs="single-stream" in plan.scenarios,
    )  # fmt: skip
    p50 = p50_by_key(stats, settings.batches[0], first)
    verdict = decide(
        [Option(c.key, c.label, c.is_float, p50.get(c.key), recorded.get(c.key)) for c in cands],
        budget,
    )
    # Speedups against the fastest float option within the budget (the fastest float
    # option at all where no fidelity is on record, as for a model file).
    floats = sorted((c for c in cands if c.is_float), key=lambda c: p50.get(c.key, 0.0))
    ref_key = verdict.fastest_float or floats[0].key
    reference = next(c.label for c in cands if c.key == ref_key)
    if stats:
        latency_table(ui, stats, f"{title}   (speedup against {reference})", reference,
                      settings.percentiles)  # fmt: skip
    ui.table(
        "cold start: loading (reading, compiling) and the first run",
        ["model", "load ms", "first run ms", "total ms"],
        [[c.label, f"{c.load_ms:.1f}", f"{c.first_run_ms:.1f}",
          f"{c.load_ms + c.first_run_ms:.1f}"] for c in cold.values()],
    )  # fmt: skip
    if recorded and stats:
        ui.note(f"verdict (fidelity as recorded at export): {verdict.line}")
        for w in verdict.warnings:
            ui.note(f"warning: {w}")
    results: list[ScenarioResult] = scenario_candidates(
        cands, inputs, settings, plan, sample=sample, examples=examples, ui=ui
    )
    scenario_tables(ui, results, settings.percentiles)
    if json_path is not None:
        runtimes: dict[str, str] = {}
        for c in cands:
            runtimes.setdefault(c.backend.name, c.backend.version())
        artifacts = []
        for c in cands:
            files = {f: found.hashes[f] for f in c.artifact.files if f in found.hashes}
            artifacts.append(
                {"key": c.key, "label": c.label, "backend": c.backend.name,
                 "precision": c.precision or c.artifact.precision, "format": c.artifact.format,
                 "files": files, "sha256_verified": len(files) == len(c.artifact.files)}
            )  # fmt: skip
        write_json(
            Path(json_path),
            {
                "schema": SCHEMA,
                "quantship": __version__,
                "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "target": str(target),
                "machine": machine_record(),
                "runtimes": runtimes,
                "settings": _settings_json(settings, plan),
                # At the first --batch (and --lengths): the others scale those axes.
                "input_shapes": shapes,
                "artifacts": artifacts,
                "keys": {c.label: c.key for c in cands},
                "cold_start": [c.to_json() for c in cold.values()],
                "results": [s.to_json(settings.percentiles) for s in stats]
                + [r.to_json(settings.percentiles) for r in results],
                "speedup_against": reference,
                "verdict": verdict.to_json(budget) if recorded and stats else None,
            },
        )
    if plot_path is not None and not latency_plot(stats, results, Path(plot_path), title):
        ui.note("plot skipped: matplotlib is not installed (pip install 'quantship[plot]')")
    return stats


def _settings_json(settings: BenchSettings, plan: ScenarioPlan) -> dict[str, Any]:
    out: dict[str, Any] = dict(settings.__dict__)
    out.update(
        scenarios=list(plan.scenarios),
        scenario_seconds=plan.seconds,
        qps=plan.qps,
        latency_bound_ms=plan.latency_bound_ms,
        streams=plan.streams,
    )
    return out
