"""``quantship export`` as named stages:

    load → calibrate (or reuse a table) → per backend: guard, plan, write, compile →
    measure every candidate (the float model at each precision each runtime has here,
    and each INT8 artifact): fidelity against fp32, latency side by side → verdict →
    manifest

Everything is written into a staging folder that replaces ``out`` only when complete.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from quantship.algorithms import Algorithms
from quantship.backends import registry
from quantship.backends.base import Artifact, Backend, PlanOptions
from quantship.calibration.data import CalibrationData
from quantship.calibration.images import ImageOptions
from quantship.calibration.methods import MethodSpec
from quantship.calibration.objects import Transform
from quantship.calibration.table import CalibrationTable
from quantship.calibration.text import TextOptions
from quantship.errors import BackendError, DataError, QuantshipError
from quantship.exporter.load import FloatModel
from quantship.exporter.measure import add_guard_cost, measure
from quantship.exporter.output import MANIFEST, check_output_dir, release_memory, staged_dir
from quantship.exporter.plan_search import Choice
from quantship.exporter.split import DEFAULT_HELD_OUT, HeldOut
from quantship.measure.fidelity import POOLINGS
from quantship.measure.verdict import Budget
from quantship.types import Feed
from quantship.ui import SILENT, UI

# Held-out samples the prepared float model is compared on with the user's model.
DRIFT_SAMPLES = 4


@dataclass(frozen=True)
class ExportOptions:
    """What the user asked of an export, checked on construction (``QuantshipError``)."""

    # a path or package.module:factory; through the API also an onnx.ModelProto or an
    # nn.Module, and data held in objects (calibration/objects.py)
    model: Any
    calib: Any
    out: Path
    backends: str | Sequence[str] = registry.DEFAULT
    method: MethodSpec = field(default_factory=MethodSpec)
    samples: int | None = None
    held_out: Any = None
    calib_cache: str | Path | None = None
    input_shapes: dict[str, tuple[int, ...]] | None = None
    images: ImageOptions | None = None
    tokenizer: Path | None = None  # a local Hugging Face tokenizer, for text data
    weights: Path | None = None
    float_nodes: Sequence[str] = ()
    exclude: Sequence[str] = ()
    exclude_ops: Sequence[str] = ()
    max_drop: float | None = None
    metric: str | None = None
    require_engine: bool = False
    bench: bool = True
    threads: int | None = None
    plan: str = "rules"  # a plan variant's name, or "search" (exporter/plan_search.py)
    algorithms: str | Sequence[str] | None = None  # quantship/algorithms: names or a preset
    pooling: str | None = None  # "mean" or "cls": sentence-embedding fidelity (encoders)
    ray: str | None = None  # a Ray cluster's address (or "auto"): calibration shards there
    transform: Transform | None = None  # each item of data held in an object → a feed
    example_shapes: dict[str, tuple[int, ...]] | None = None  # an nn.Module's trace shapes
    # The call's arguments as JSON (api.export): recorded in the manifest for --replay.
    configuration: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.samples is not None and self.samples < 1:
            raise QuantshipError(f"--samples must be at least 1, got {self.samples}")
        if self.max_drop is not None and not 0 < self.max_drop < 1:
            raise QuantshipError(
                f"--max-drop is a budget on 1 - cosine, in (0, 1); got {self.max_drop}"
            )
        if self.metric is not None and self.max_drop is None:
            raise QuantshipError("--metric sets what --max-drop measures; give --max-drop too")
        if self.metric is not None and self.held_out is None:
            raise QuantshipError("--metric needs --held-out data with labels")
        Algorithms.parse(self.algorithms)
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise QuantshipError(f"--pooling {self.pooling!r}: choose {' or '.join(POOLINGS)}")
        _ = self.tokens  # a tokenizer that is not there fails before any work
        if self.calib is None and self.calib_cache is None:
            raise DataError(
                "give calibration data (--calib) or a calibration table (--calib-cache)"
            )

    @property
    def tokens(self) -> TextOptions | None:
        return TextOptions(self.tokenizer) if self.tokenizer is not None else None

    @property
    def budget(self) -> Budget:
        """What the verdict holds every option to: --max-drop on 1 - cosine, unless it
        is a task metric's drop (then the default cosine budget)."""
        if self.metric is None:
            return Budget.from_max_drop(self.max_drop)
        return Budget(
            source=(
                f"cosine to fp32 >= {Budget().min_cosine} (the default; --max-drop "
                f"{self.max_drop} bounds the drop of {self.metric} in the accuracy guard, "
                "not in this verdict)"
            )
        )


@dataclass(frozen=True)
class ExportResult:
    """What ``export`` returns: the output folder, the manifest written there, each
    artifact (``.backend``, ``.precision``, ``.path``), and backends that failed."""

    out: Path
    manifest: dict[str, Any]
    artifacts: tuple[Artifact, ...]
    failures: tuple[str, ...] = field(default=())

    @property
    def verdict(self) -> dict[str, Any] | None:
        """The manifest's verdict: ``choice`` (the fastest option within the fidelity
        budget, as ``backend precision``), ``line`` (it, in words), ``warnings``; None
        when the export was not timed (``bench=False``)."""
        v = self.manifest.get("verdict")
        return dict(v) if isinstance(v, dict) else None

    @property
    def recommended(self) -> dict[str, Any] | None:
        """The manifest's entry for the verdict's choice (an INT8 artifact, or a float
        baseline where no INT8 artifact pays): its backend, precision, latency and
        fidelity; None without a choice."""
        entries = [*self.manifest.get("artifacts", []), *self.manifest.get("baselines", [])]
        return next((dict(e) for e in entries if e.get("recommended")), None)


@dataclass(frozen=True)
class Loaded:
    """The prepared model and the data around it."""

    fm: FloatModel
    data: CalibrationData | None
    held: HeldOut
    check_feeds: list[Feed]  # held-out feeds the prepared model is checked on
    expected: list[dict[str, Any]]  # the user's model's outputs on them


def run_export(opts: ExportOptions, ui: UI = SILENT) -> ExportResult:
    check_output_dir(opts.out)
    chosen, failures = choose_backends(opts)
    loaded = load(opts, ui)
    table, sharding = calibration(opts, loaded, ui)
    if table.input_dims:
        fm = dataclasses.replace(loaded.fm, input_ranges=dict(table.input_dims))
        # The same graph and weights: its identity carries over (hashing it again
        # would serialize the whole model, 435 MB for BERT-base).
        fm.__dict__["sha256"] = loaded.fm.sha256
        loaded = dataclasses.replace(loaded, fm=fm)
    options = plan_options(opts, loaded)
    with staged_dir(opts.out) as stage:
        float_art = write_float(stage, loaded.fm, table)
        artifacts, figures, unguarded = build(
            opts, loaded, table, options, chosen, stage, float_art, ui
        )
        measured, drift = measure(opts, loaded, float_art, artifacts, chosen, unguarded, ui)
        shutil.rmtree(stage / ".unguarded", ignore_errors=True)
        shutil.rmtree(stage / ".search", ignore_errors=True)
        for c in measured.artifacts:
            g = figures.get(c.backend.name, {}).get("accuracy_guard")
            if g is not None and c.backend.name in unguarded:
                add_guard_cost(g, c, measured.latency)
        from quantship.exporter.output import write_json
        from quantship.exporter.report import manifest_for

        manifest = manifest_for(
            loaded.fm,
            table,
            loaded.data,
            loaded.held.note,
            opts.method,
            options,
            float_art,
            chosen,
            measured,
            figures,
            failures,
            opts.calib_cache,
            drift,
            sharding=sharding.to_json() if sharding is not None else None,
        )
        if opts.configuration is not None:  # what `export --replay` repeats
            manifest["configuration"] = dict(opts.configuration)
        write_json(stage / MANIFEST, manifest)
    final = tuple(dataclasses.replace(c.artifact, root=opts.out) for c in measured.artifacts)
    from quantship.exporter.report import export_table

    export_table(ui, opts.out, manifest)
    return ExportResult(opts.out, manifest, final, tuple(failures))


def choose_backends(opts: ExportOptions) -> tuple[list[Backend], list[str]]:
    chosen, missing = registry.available(opts.backends)
    if opts.require_engine:
        engines = [b for b in chosen if b.capabilities().engine]
        if not engines:
            raise BackendError(
                "--require-engine applies to backends that build an engine ("
                + ", ".join(n for n in registry.names() if registry.get(n).capabilities().engine)
                + "), and none was asked for"
            )
        for b in engines:
            reason = b.engine_unavailable()
            if reason is not None:
                raise BackendError(
                    f"--require-engine: a {b.name} engine cannot be built here: {reason}"
                )
    from quantship.exporter.plan_search import SEARCH, pick

    if opts.plan != SEARCH:
        for b in chosen:
            pick(b, opts.plan)  # an unknown plan name fails before any work
    return chosen, missing


def load(opts: ExportOptions, ui: UI) -> Loaded:
    """The prepared model, its data, the held-out split, and the user's model's outputs
    on a few held-out samples (its session freed before anything else loads)."""
    from quantship.calibration.sources import open_data
    from quantship.exporter.prepare import reference_outputs
    from quantship.exporter.source import load_float_model
    from quantship.exporter.split import split_data
    from quantship.guard import held_feeds

    fm, data, reference = load_float_model(
        opts.model,
        opts.calib,
        input_shapes=opts.input_shapes,
        images=opts.images,
        weights=opts.weights,
        held_out=opts.held_out,
        tokens=opts.tokens,
        transform=opts.transform,
        example_shapes=opts.example_shapes,
    )
    for n in fm.notes:
        ui.note(f"model: {n}")
    held = None
    if opts.held_out is not None:
        held = open_data(opts.held_out, fm.inputs, images=opts.images, role="held-out",
                         tokens=opts.tokens, transform=opts.transform)  # fmt: skip
    for d in (data, held):
        for n in d.notes if d is not None else ():
            ui.note(n)
    split = split_data(data, opts.samples, held)
    feeds = (
        held_feeds(split.data, split.start, split.stop, DRIFT_SAMPLES, fm.fixed_batch)
        if split.data is not None
        else []
    )
    return Loaded(fm, data, split, feeds, reference_outputs(reference, feeds))


def calibration(opts: ExportOptions, loaded: Loaded, ui: UI) -> tuple[CalibrationTable, Any]:
    """One pass over the calibration data (sharded over a Ray cluster with ``--ray``:
    the same table, and how it was split), or the table of an earlier one."""
    from quantship.calibration.runner import calibrate

    fm, mspec = loaded.fm, opts.method
    if opts.calib_cache is None:
        assert loaded.data is not None
        if opts.ray is not None:
            from quantship.fleet import calibrate_sharded

            return calibrate_sharded(
                fm, loaded.data, samples=loaded.held.calib_stop,
                histograms=mspec.needs_histogram, address=opts.ray, ui=ui,
            )  # fmt: skip
        table = calibrate(
            fm, loaded.data, samples=loaded.held.calib_stop, histograms=mspec.needs_histogram, ui=ui
        )
        return table, None
    table = CalibrationTable.load(Path(opts.calib_cache))
    if table.model_sha256 != fm.sha256:
        raise DataError(
            f"calibration cache '{opts.calib_cache}' was made for a different model or input "
            f"shape (model sha256 {table.model_sha256[:12]}…, this one {fm.sha256[:12]}…); "
            "drop --calib-cache"
        )
    if mspec.needs_histogram and not table.histograms:
        raise DataError(
            f"calibration cache '{opts.calib_cache}' has no histograms (made with --method "
            f"minmax); --method {mspec.method} needs them: drop --calib-cache to recalibrate"
        )
    ui.note(f"calibration: reusing {opts.calib_cache} ({table.samples} samples)")
    return table, None


def plan_options(opts: ExportOptions, loaded: Loaded) -> PlanOptions:
    from quantship.guard import resolve_exclusions

    kept = resolve_exclusions(loaded.fm, opts.exclude, opts.exclude_ops, opts.float_nodes)
    return PlanOptions(method=opts.method, float_nodes=kept)


def write_float(stage: Path, fm: FloatModel, table: CalibrationTable) -> Artifact:
    """The prepared float model (the fp32 reference, and every float baseline) and the
    calibration table, into the staging folder."""
    rel = "float/model.onnx"
    data = fm.save(stage / rel)
    table.save(stage / "calibration.json")
    files = (rel,) + ((f"float/{data.name}",) if data is not None else ())
    return Artifact("", "onnx", stage, files, precision="float")


def build(
    opts: ExportOptions,
    loaded: Loaded,
    table: CalibrationTable,
    options: PlanOptions,
    chosen: Sequence[Backend],
    stage: Path,
    float_art: Artifact,
    ui: UI,
) -> tuple[list[Artifact], dict[str, dict[str, Any]], dict[str, Artifact]]:
    """Per backend: the plan (the rule table, a named variant, or the search's choice),
    the accuracy guard (with --max-drop), then the artifact. Returns the artifacts,
    each backend's figures, and (guarded, benchmarked) the all-INT8 artifacts to time
    beside the guarded ones."""
    from quantship.algorithms import BIAS_SAMPLES, before_planning, for_plan
    from quantship.exporter.guard_step import run_guard
    from quantship.exporter.pipeline import build_artifact
    from quantship.guard import Evaluator, held_feeds, held_labels, load_metric

    algos = Algorithms.parse(opts.algorithms).for_model(loaded.fm, loaded.data is not None)
    held = loaded.held
    # What INT8 is made from: the prepared model, changed by the algorithms asked for.
    fm, table, algo_report = before_planning(
        loaded.fm, table, loaded.data, held.calib_stop, algos, ui
    )
    q_loaded = dataclasses.replace(loaded, fm=fm)
    calib_feeds = (
        held_feeds(loaded.data, 0, held.calib_stop, BIAS_SAMPLES, fm.fixed_batch)
        if loaded.data is not None and algos.names
        else []
    )
    metric_fn = load_metric(opts.metric) if opts.metric is not None else None
    guard_feeds: list[Feed] = []
    labels = None
    if opts.max_drop is not None and held.data is not None:
        # The samples the export's fidelity is measured on: per-sample errors are heavy-
        # tailed (on the PP-OCR-style recogniser five of 256 lines carry two thirds of
        # 1 - cosine), so a guard tuned on fewer misses its budget on them.
        guard_feeds = held_feeds(held.data, held.start, held.stop, DEFAULT_HELD_OUT, fm.fixed_batch)
    if metric_fn is not None:
        assert opts.held_out is not None
        count = sum(next(iter(f.values())).shape[0] for f in guard_feeds)
        labels = held_labels(opts.held_out, held.start, count)
    artifacts: list[Artifact] = []
    figures: dict[str, dict[str, Any]] = {}
    unguarded: dict[str, Artifact] = {}
    learned: dict[str, Any] = {}  # AdaRound's weights, shared by backends with one grid
    for backend in chosen:
        choice = plan_choice(opts, q_loaded, table, options, backend, float_art, stage, ui)
        b = choice.variant.backend
        planned = choice.variant.options(options, fm)
        b_fm, b_algos = for_plan(fm, table, b, planned, calib_feeds, algos, ui, learned)
        b_options, guarded = planned, None
        if opts.max_drop is not None:
            res = run_guard(
                partial(Evaluator, b_fm, table, b, guard_feeds, metric_fn, labels, opts.threads,
                        reference=loaded.fm, ray=opts.ray),
                b, b_fm, table, opts.threads, planned, opts.max_drop, opts.metric, held, float_art, ui,
            )  # fmt: skip
            b_options = dataclasses.replace(
                planned, float_nodes=planned.float_nodes | frozenset(res.float_nodes)
            )
            guarded = res.to_json()
        art, plan_summary = build_artifact(b, b_fm, table, b_options, stage, ui)
        release_memory()
        artifacts.append(art)
        figures[b.name] = {"plan": plan_summary, "plan_variant": choice.variant.name}
        if algos.names:
            figures[b.name]["algorithms"] = {"names": list(algos.names), **algo_report, **b_algos}
        if choice.record is not None:
            figures[b.name]["plan_search"] = choice.record
        if guarded is not None:
            figures[b.name]["accuracy_guard"] = guarded
            if guarded["float_nodes"] and opts.bench:
                # The guard's latency cost: the all-INT8 artifact, timed beside the
                # guarded one, built inside the staging folder and deleted afterwards.
                unguarded[b.name], _ = build_artifact(
                    b, b_fm, table, planned, stage / ".unguarded", SILENT
                )
    return artifacts, figures, unguarded


def plan_choice(
    opts: ExportOptions,
    loaded: Loaded,
    table: CalibrationTable,
    options: PlanOptions,
    backend: Backend,
    float_art: Artifact,
    stage: Path,
    ui: UI,
) -> Choice:
    """``--plan``: the rule table, a variant by name, or the search's measured choice
    (its budget: ``--max-drop`` on 1 - cosine, else the rule plan's cosine)."""
    from quantship.exporter.plan_search import SEARCH, pick, search

    if opts.plan != SEARCH:
        return pick(backend, opts.plan)
    floor = 1 - opts.max_drop if opts.max_drop is not None and opts.metric is None else None
    return search(
        backend, loaded.fm, table, options, loaded.held, float_art,
        stage / ".search" / backend.name, min_cosine=floor, threads=opts.threads,
        sample=loaded.check_feeds[0] if loaded.check_feeds else None, ray=opts.ray, ui=ui,
    )  # fmt: skip
