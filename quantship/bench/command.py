"""``quantship bench``: latency of an export folder on this machine (every INT8
artifact beside the float model at each precision each runtime has here, after
checking every file against the manifest's sha256), or of one model in one or more
runtimes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from quantship.backends import registry
from quantship.backends.base import Artifact, Backend
from quantship.bench.machine import cpu_info
from quantship.bench.run import bench_candidates, make_feeds
from quantship.bench.timing import BenchSettings, LatencyStats, p50_by_key
from quantship.bench.verdict import Budget, Option, decide
from quantship.calibration.sources import open_data
from quantship.errors import BackendError, QuantshipError
from quantship.exporter.load import InputSpec
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
    json_path: str | Path | None = None,
    plot_path: str | Path | None = None,
    ui: UI = SILENT,
) -> list[LatencyStats]:
    """Latency of an export folder (each artifact beside the float model in its own
    runtime) or of one ONNX model in one or more runtimes; with ``throughput_seconds``,
    also the throughput mode of runtimes that have one (OpenVINO's async requests)."""
    from quantship.bench.report import latency_plot, latency_table
    from quantship.bench.run import artifact_candidates, float_candidates, throughput_candidates
    from quantship.exporter.load import load_model
    from quantship.exporter.manifest import (
        artifacts_in,
        float_artifact,
        read_manifest,
        verify_files,
    )

    settings = settings or BenchSettings()
    path = Path(target)
    recorded: dict[str, float] = {}  # cosine to fp32 per candidate key, from the export
    budget = Budget()
    if path.is_dir():
        manifest = read_manifest(path)
        verify_files(path, manifest)
        inputs = [
            InputSpec(i["name"], tuple(i["shape"]), i["dtype"])
            for i in manifest["float_model"]["inputs"]
        ]
        examples: dict[str, tuple[int, ...]] = {
            i["name"]: tuple(i["example_shape"])
            for i in manifest["float_model"]["inputs"]
            if "example_shape" in i
        }
        wanted = None
        if backends is not None:
            spec = backends if isinstance(backends, str) else ",".join(backends)
            wanted = {b.name for b in registry.parse(spec)}
        pairs: list[tuple[Artifact, Backend]] = []
        for a in artifacts_in(path, manifest):
            if wanted is not None and a.backend not in wanted:
                continue
            b = registry.get(a.backend)
            reason = b.available()
            if reason is not None:
                ui.note(f"skipping {a.backend}: {reason}")
                continue
            pairs.append((a, b))
        runtimes = [b for _, b in pairs]
        default = registry.get(registry.DEFAULT)
        if default.name not in {b.name for b in runtimes} and default.available() is None:
            runtimes.insert(0, default)
        cands = float_candidates(float_artifact(path, manifest), runtimes)
        cands += artifact_candidates(pairs)
        v = manifest.get("verdict") or {}
        if "min_cosine" in v:  # the budget the export was judged by
            budget = Budget(float(v["min_cosine"]), str(v.get("budget", "")))
        for entry in [*manifest.get("baselines", []), *manifest["artifacts"]]:
            cos = (entry.get("fidelity") or {}).get("cosine")
            if entry.get("key") and cos is not None:
                recorded[entry["key"]] = float(cos)
        title = f"latency: {path}"
    else:
        fm = load_model(path)
        inputs = list(fm.inputs)
        examples = {}
        chosen, missing = registry.available(backends or registry.DEFAULT)
        for m in missing:
            ui.note(f"error: {m}")
        art = Artifact("", "onnx", path.parent, (path.name,), precision="float")
        cands = float_candidates(art, chosen)
        if not cands:
            raise BackendError(
                f"none of {', '.join(b.name for b in chosen)} can run a float model on this machine"
            )
        title = f"latency: {path.name}"
    for name, shape in (input_shapes or {}).items():
        examples[name] = _checked_shape(inputs, name, shape)
    sample = open_data(data, inputs, role="benchmark").first() if data is not None else None
    shapes = {k: list(v.shape) for k, v in make_feeds(inputs, 1, sample, examples=examples).items()}
    stats = bench_candidates(cands, inputs, settings, sample=sample, examples=examples, ui=ui)
    p50 = p50_by_key(stats, settings.batches[0])
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
            "throughput mode (the runtime's own parallel requests)",
            ["model", "batch", "samples/s", "runs"],
            [[t.label, str(t.batch), f"{t.samples_per_s:.1f}", str(t.runs)] for t in tput],
        )
    if json_path is not None:
        write_json(
            Path(json_path),
            {
                "target": str(path),
                "machine": cpu_info(),
                "settings": dict(settings.__dict__),
                "input_shapes": shapes,  # at batch 1; --batch scales the first axis
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


def _checked_shape(
    inputs: Sequence[InputSpec], name: str, shape: tuple[int, ...]
) -> tuple[int, ...]:
    """An ``--input-shape`` for ``bench``: it names an input, has its rank, and agrees
    with its fixed dimensions (the batch comes from ``--batch``)."""
    spec = next((i for i in inputs if i.name == name), None)
    if spec is None:
        raise QuantshipError(
            f"--input-shape names {name!r}; the model's inputs are: "
            + ", ".join(i.name for i in inputs)
        )
    if len(shape) != len(spec.shape):
        raise QuantshipError(
            f"--input-shape {name}={'x'.join(map(str, shape))} has rank {len(shape)}; "
            f"the input is {spec.shape_str()}"
        )
    for axis, (want, have) in enumerate(zip(shape, spec.shape, strict=True)):
        if axis and have is not None and have != want:
            raise QuantshipError(
                f"--input-shape {name}={'x'.join(map(str, shape))}: dimension {axis} of "
                f"{spec.shape_str()} is fixed at {have}"
            )
    return shape
