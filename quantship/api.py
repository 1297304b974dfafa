"""What the CLI and users call: ``export()`` and ``bench()``.

export: load → calibrate once → for each backend: plan → QDQ → compile → fidelity →
latency, all into a staging folder that replaces ``out`` only when complete.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from quantship.backends import registry
from quantship.backends.base import Artifact, PlanOptions
from quantship.bench.run import Candidate, bench_candidates
from quantship.bench.timing import BenchSettings, LatencyStats
from quantship.calibration.data import CalibrationData, ImageOptions, open_data
from quantship.calibration.methods import MethodSpec
from quantship.calibration.table import CalibrationTable
from quantship.errors import BackendError, DataError, QuantshipError
from quantship.exporter.output import (
    MANIFEST,
    check_output_dir,
    release_memory,
    staged_dir,
    write_json,
)
from quantship.ui import SILENT, UI

DEFAULT_SAMPLES = 256
DEFAULT_HELD_OUT = 100
# Held-out samples the prepared float model is compared on with the user's model.
DRIFT_SAMPLES = 4
EXPORT_BENCH = BenchSettings(warmup=5, duration=3.0, min_iterations=10)


@dataclass(frozen=True)
class ExportResult:
    out: Path
    manifest: dict[str, Any]
    artifacts: tuple[Artifact, ...]
    failures: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class _Split:
    calib_stop: int | None
    held_start: int
    held_stop: int | None
    held_data: CalibrationData | None
    note: str


def _split(
    data: CalibrationData | None, samples: int | None, held: CalibrationData | None
) -> _Split:
    """Which samples calibrate and which measure fidelity. Held-out data given: all of
    the calibration data (up to ``samples``) calibrates. Otherwise the samples after
    the calibration ones are held out; if there are none, the last fifth."""
    cap = samples or DEFAULT_SAMPLES
    if held is not None:
        return _Split(cap, 0, DEFAULT_HELD_OUT, held, f"held-out data {held.description}")
    if data is None:
        return _Split(None, 0, 0, None, "no held-out data: fidelity not measured")
    n = data.num_samples
    if n is None or n > cap:
        return _Split(
            cap, cap, cap + DEFAULT_HELD_OUT, data, f"samples {cap}.. of the calibration data"
        )
    if n >= 5:
        h = min(DEFAULT_HELD_OUT, n // 5)
        return _Split(
            n - h,
            n - h,
            n,
            data,
            f"the last {h} of {n} calibration samples (not used to calibrate)",
        )
    return _Split(n, 0, n, data, "the calibration samples themselves (too few to hold any out)")


def export(
    model: str | Path,
    calib: str | Path | None,
    out: str | Path,
    *,
    backends: str | Sequence[str] = registry.DEFAULT,
    method: str = "percentile",
    percentile: float = 99.99,
    samples: int | None = None,
    held_out: str | Path | None = None,
    calib_cache: str | Path | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    images: ImageOptions | None = None,
    weights: str | Path | None = None,
    float_nodes: Sequence[str] = (),
    exclude: Sequence[str] = (),
    exclude_ops: Sequence[str] = (),
    max_drop: float | None = None,
    metric: str | None = None,
    require_engine: bool = False,
    bench: bool = True,
    threads: int | None = None,
    ui: UI = SILENT,
) -> ExportResult:
    """Quantize ``model`` for each backend into ``out``; see ``quantship export --help``."""
    from quantship.calibration.runner import calibrate
    from quantship.exporter.pipeline import build_artifact, measure_fidelity
    from quantship.guard import (
        Evaluator,
        guard,
        held_feeds,
        held_labels,
        load_metric,
        resolve_exclusions,
    )

    out = Path(out)
    try:
        mspec = MethodSpec(method, percentile)  # type: ignore[arg-type]
    except ValueError as e:
        raise QuantshipError(str(e)) from None
    if samples is not None and samples < 1:
        raise QuantshipError(f"--samples must be at least 1, got {samples}")
    check_output_dir(out)
    chosen, missing = registry.available(backends)
    if require_engine:
        from quantship.backends.tensorrt import engine_unavailable

        if "tensorrt" not in [b.name for b in chosen]:
            raise BackendError(
                "--require-engine applies to --backend tensorrt, which was not asked for"
            )
        reason = engine_unavailable()
        if reason is not None:
            raise BackendError(
                f"--require-engine: a TensorRT engine cannot be built here: {reason}"
            )
    if calib is None and calib_cache is None:
        raise DataError("give calibration data (--calib) or a calibration table (--calib-cache)")

    from quantship.exporter.source import load_float_model

    fm, data, reference = load_float_model(
        model,
        calib,
        input_shapes=input_shapes,
        images=images,
        weights=Path(weights) if weights is not None else None,
        held_out=held_out,
    )
    for n in fm.notes:
        ui.note(f"model: {n}")
    held = (
        open_data(held_out, fm.inputs, images=images, role="held-out")
        if held_out is not None
        else None
    )
    for d in (data, held):
        for n in d.notes if d is not None else ():
            ui.note(n)
    split = _split(data, samples, held)
    from quantship.exporter.prepare import reference_outputs

    check_feeds = (
        held_feeds(
            split.held_data,
            split.held_start,
            split.held_stop,
            limit=DRIFT_SAMPLES,
            batch=fm.fixed_batch,
        )
        if split.held_data is not None
        else []
    )
    expected = reference_outputs(reference, check_feeds)

    if calib_cache is not None:
        table = CalibrationTable.load(Path(calib_cache))
        if table.model_sha256 != fm.sha256:
            raise DataError(
                f"calibration cache '{calib_cache}' was made for a different model or input shape "
                f"(model sha256 {table.model_sha256[:12]}…, this one {fm.sha256[:12]}…); drop --calib-cache"
            )
        if mspec.needs_histogram and not table.histograms:
            raise DataError(
                f"calibration cache '{calib_cache}' has no histograms (made with --method minmax); "
                f"--method {method} needs them: drop --calib-cache to recalibrate"
            )
        ui.note(f"calibration: reusing {calib_cache} ({table.samples} samples)")
    else:
        assert data is not None
        table = calibrate(
            fm, data, samples=split.calib_stop, histograms=mspec.needs_histogram, ui=ui
        )

    excluded = resolve_exclusions(fm, exclude, exclude_ops)
    options = PlanOptions(method=mspec, float_nodes=frozenset(float_nodes) | excluded)
    if max_drop is not None and not 0 < max_drop < 1:
        raise QuantshipError(f"--max-drop is a budget on 1 - cosine, in (0, 1); got {max_drop}")
    metric_fn = load_metric(metric) if metric is not None else None
    if metric_fn is not None and max_drop is None:
        raise QuantshipError("--metric sets what --max-drop measures; give --max-drop too")
    # A task metric needs more samples than a cosine does to resolve a small drop.
    limit = 32 if metric_fn is None else 1000
    guard_feeds = (
        held_feeds(
            split.held_data, split.held_start, split.held_stop, limit=limit, batch=fm.fixed_batch
        )
        if max_drop is not None and split.held_data is not None
        else []
    )
    labels = None
    if metric_fn is not None:
        if held_out is None:
            raise QuantshipError("--metric needs --held-out data with labels")
        count = sum(next(iter(f.values())).shape[0] for f in guard_feeds)
        labels = held_labels(held_out, split.held_start, count)
    artifacts: list[Artifact] = []
    figures: dict[str, dict[str, Any]] = {}
    failures = list(missing)
    unguarded: dict[str, Artifact] = {}
    with staged_dir(out) as stage:
        # Inside the staging folder, so a failed run removes it with the rest.
        unguarded_root = stage / ".unguarded"
        float_rel = "float/model.onnx"
        float_data = fm.save(stage / float_rel)
        table.save(stage / "calibration.json")
        float_files = (float_rel,) + (
            (f"float/{float_data.name}",) if float_data is not None else ()
        )
        float_art = Artifact("onnxruntime", "onnx", stage, float_files, precision="float")
        for b in chosen:
            b_options, guarded = options, None
            if max_drop is not None:
                evaluator = Evaluator(fm, table, b, guard_feeds, metric_fn, labels)
                res = guard(evaluator, options, max_drop, ui)
                b_options = PlanOptions(
                    options.method, options.float_nodes | frozenset(res.float_nodes)
                )
                guarded = res.to_json()
                ui.note(
                    f"{b.name}: accuracy guard kept {len(res.float_nodes)} node(s) in float; "
                    f"1 - cosine {res.before:.4g} -> {res.after:.4g} ({res.evaluations} evaluations, {res.seconds:.1f} s)"
                )
            art, plan_summary = build_artifact(b, fm, table, b_options, stage, ui)
            release_memory()
            artifacts.append(art)
            figures[b.name] = {"plan": plan_summary}
            if guarded is not None and guarded["float_nodes"] and bench:
                # The guard's latency cost: the all-INT8 artifact, timed beside the guarded
                # one, built outside the output folder and deleted afterwards.
                unguarded[b.name], _ = build_artifact(b, fm, table, options, unguarded_root, SILENT)
            if guarded is not None:
                figures[b.name]["accuracy_guard"] = guarded
        fid, drift = measure_fidelity(
            fm, float_art, artifacts, chosen, split, threads, ui, (check_feeds, expected)
        )
        for b in chosen:
            figures[b.name]["fidelity"] = fid.get(b.name)
        latency: list[LatencyStats] = []
        if bench:
            from quantship.bench.run import with_float_baselines

            cands = with_float_baselines(float_art, list(zip(artifacts, chosen, strict=True)))
            for b in chosen:
                if b.name in unguarded:
                    cands.append(Candidate(f"{b.name} int8 (no guard)", b, unguarded[b.name]))
            latency = bench_candidates(
                cands,
                fm.inputs,
                replace(EXPORT_BENCH, threads=threads),
                sample=check_feeds[0] if check_feeds else None,
                ui=ui,
            )
            p50 = {st.label: st.p50_ms for st in latency}
            for b in chosen:
                if b.name in unguarded:
                    g = figures[b.name]["accuracy_guard"]
                    g["p50_ms_guarded"] = p50[f"{b.name} int8"]
                    g["p50_ms_all_int8"] = p50[f"{b.name} int8 (no guard)"]
                    g["latency_cost"] = p50[f"{b.name} int8"] / p50[f"{b.name} int8 (no guard)"]
            for b in chosen:
                figures[b.name]["latency"] = [
                    s.to_json() for s in latency if s.label == f"{b.name} int8"
                ]
                figures[b.name]["float_latency"] = [
                    s.to_json() for s in latency if s.label == f"float ({b.name})"
                ]
        import shutil

        shutil.rmtree(unguarded_root, ignore_errors=True)
        from quantship.exporter.pipeline import manifest_for

        manifest = manifest_for(
            fm,
            table,
            data,
            split.note,
            mspec,
            options,
            float_art,
            artifacts,
            figures,
            latency,
            failures,
            calib_cache,
            drift,
        )
        write_json(stage / MANIFEST, manifest)
    final = tuple(
        Artifact(a.backend, a.format, out, a.files, a.precision, a.metadata) for a in artifacts
    )
    from quantship.exporter.pipeline import export_table

    export_table(ui, out, manifest)
    return ExportResult(out, manifest, final, tuple(failures))


def build_engine(folder: str | Path, *, max_batch: int = 32, ui: UI = SILENT) -> dict[str, Any]:
    """Build the TensorRT engine of an export folder here (the deployment GPU) and
    record it in the manifest, which is rewritten only once the engine is built."""
    from quantship.backends.tensorrt import ENGINE_FILE
    from quantship.backends.tensorrt import build_engine as trt_build
    from quantship.exporter.manifest import read_manifest

    root = Path(folder)
    manifest = read_manifest(root)
    entry = next((a for a in manifest["artifacts"] if a["backend"] == "tensorrt"), None)
    if entry is None:
        raise BackendError(
            f"'{root}' has no tensorrt artifact; export with --backend tensorrt first"
        )
    ui.note(f"building {root / ENGINE_FILE} ...")
    info = trt_build(
        root / entry["path"], root / ENGINE_FILE, entry["metadata"]["inputs"], max_batch=max_batch
    )
    entry["metadata"]["engine"] = {"built": True, "path": ENGINE_FILE, **info}
    write_json(root / MANIFEST, manifest)
    ui.note(f"engine built for {info['gpu']} with TensorRT {info['tensorrt']}")
    return info


def distill(
    teacher: str,
    student: str,
    data: str | Path,
    out: str | Path,
    *,
    val: str | Path | None = None,
    teacher_weights: str | Path | None = None,
    epochs: int = 20,
    temperature: float = 4.0,
    alpha: float = 0.7,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    resume: bool = False,
    ui: UI = SILENT,
) -> dict[str, Any]:
    """Distill ``student`` (package.module:factory) from ``teacher``; writes
    student.pt, student.onnx and metrics.json into ``out``."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise QuantshipError(
            "distill needs torch: pip install torch==2.13.0 'quantship[torch]'"
        ) from None
    from quantship.distill.train import DistillConfig, load_dataset
    from quantship.distill.train import distill as run
    from quantship.exporter.torch_export import load_factory, load_weights

    try:
        config = DistillConfig(epochs, temperature, alpha, lr, batch_size, seed)
    except ValueError as e:
        raise QuantshipError(str(e)) from None
    t = load_factory(teacher, "teacher")
    if teacher_weights is not None:
        load_weights(t, Path(teacher_weights), "teacher")
    s = load_factory(student, "student")
    train = load_dataset(data, "training")
    v = load_dataset(val, "validation") if val is not None else None
    return run(t, s, train, v, Path(out), config, resume=resume, ui=ui)


# Implemented beside what they orchestrate; part of this API.
from quantship.bench.command import bench  # noqa: E402
from quantship.guard_command import sensitivity  # noqa: E402

__all__ = [
    "ExportResult",
    "bench",
    "build_engine",
    "distill",
    "export",
    "sensitivity",
]
