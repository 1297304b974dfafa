"""``quantship bench``: latency of an export folder (each artifact beside the float
model in its own runtime) or of one model in one or more runtimes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from quantship.backends import registry
from quantship.backends.base import Artifact, Backend
from quantship.bench.run import Candidate, bench_candidates, make_feeds
from quantship.bench.timing import BenchSettings, LatencyStats
from quantship.calibration.data import open_data
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
    from quantship.bench.run import throughput_candidates, with_float_baselines
    from quantship.exporter.load import load_model
    from quantship.exporter.manifest import artifacts_in, float_artifact, read_manifest

    settings = settings or BenchSettings()
    path = Path(target)
    if path.is_dir():
        manifest = read_manifest(path)
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
        if not pairs:
            pairs_f = [(float_artifact(path, manifest), registry.get("onnxruntime"))]
            cands = [Candidate("float (onnxruntime)", pairs_f[0][1], pairs_f[0][0])]
        else:
            cands = with_float_baselines(float_artifact(path, manifest), pairs)
        title = f"latency: {path}"
    else:
        fm = load_model(path)
        inputs = list(fm.inputs)
        examples = {}
        chosen, missing = registry.available(backends or registry.DEFAULT)
        for m in missing:
            ui.note(f"error: {m}")
        art = Artifact("onnxruntime", "onnx", path.parent, (path.name,), precision="float")
        cands = []
        for b in chosen:
            if "onnx" not in b.formats:
                raise BackendError(f"backend {b.name!r} cannot run an ONNX model directly")
            cands.append(Candidate(b.name, b, art, cands[0].label if cands else None))
        title = f"latency: {path.name}"
    for name, shape in (input_shapes or {}).items():
        examples[name] = _checked_shape(inputs, name, shape)
    sample = open_data(data, inputs, role="benchmark").first() if data is not None else None
    shapes = {k: list(v.shape) for k, v in make_feeds(inputs, 1, sample, examples=examples).items()}
    stats = bench_candidates(cands, inputs, settings, sample=sample, examples=examples, ui=ui)
    latency_table(ui, stats, title, {c.label: c.baseline for c in cands})
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
                "settings": dict(settings.__dict__),
                "input_shapes": shapes,  # at batch 1; --batch scales the first axis
                "results": [s.to_json() for s in stats],
                "throughput": [t.to_json() for t in tput],
                "baselines": {c.label: c.baseline for c in cands},
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
