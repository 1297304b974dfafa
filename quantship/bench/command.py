"""``quantship bench``: latency of an export folder on this machine (every INT8
artifact beside the float model at each precision each runtime has here, after
checking every file against the manifest's sha256), or of one model in one or more
runtimes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from quantship.bench.machine import cpu_info
from quantship.bench.run import bench_candidates
from quantship.bench.timing import BenchSettings, LatencyStats, p50_by_key
from quantship.bench.verdict import Option, decide
from quantship.errors import QuantshipError
from quantship.exporter.output import write_json
from quantship.ui import SILENT, UI


def bench(
    target: str | Path,
    *,
    backends: str | Sequence[str] | None = None,
    settings: BenchSettings | None = None,
    throughput_seconds: float = 0.0,
    data: str | Path | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    tokenizer: str | Path | None = None,
    json_path: str | Path | None = None,
    plot_path: str | Path | None = None,
    ui: UI = SILENT,
) -> list[LatencyStats]:
    """Latency of an export folder (each artifact beside the float model in its own
    runtime) or of one ONNX model in one or more runtimes; with ``throughput_seconds``,
    also the throughput mode of runtimes that have one (OpenVINO's async requests)."""
    from quantship.bench.report import latency_plot, latency_table
    from quantship.bench.run import throughput_candidates
    from quantship.bench.targets import find_targets

    settings = settings or BenchSettings()
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
    stats = bench_candidates(cands, inputs, settings, sample=sample, examples=examples, ui=ui)
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
    latency_table(ui, stats, f"{title}   (speedup against {reference})", reference)
    if recorded:
        ui.note(f"verdict (fidelity as recorded at export): {verdict.line}")
        for w in verdict.warnings:
            ui.note(f"warning: {w}")
    tput = throughput_candidates(
        cands, inputs, settings, throughput_seconds, sample=sample, examples=examples, ui=ui
    )
    if tput:
        ui.table(
            "throughput mode (the runtime's own parallel requests)"
            + (f", length {first}" if first is not None else ""),
            ["model", "batch", "samples/s", "runs"],
            [[t.label, str(t.batch), f"{t.samples_per_s:.1f}", str(t.runs)] for t in tput],
        )
    if json_path is not None:
        write_json(
            Path(json_path),
            {
                "target": str(target),
                "machine": cpu_info(),
                "settings": dict(settings.__dict__),
                # At the first --batch (and --lengths): the others scale those axes.
                "input_shapes": shapes,
                "results": [s.to_json() for s in stats],
                "keys": {c.label: c.key for c in cands},
                "speedup_against": reference,
                "throughput": [t.to_json() for t in tput],
                "verdict": verdict.to_json(budget) if recorded else None,
            },
        )
    if plot_path is not None and not latency_plot(stats, Path(plot_path), title):
        ui.note("plot skipped: matplotlib is not installed (pip install 'quantship[plot]')")
    return stats
