"""What the CLI and users call: ``export``, ``bench``, ``sensitivity``, ``distill``,
``build_engine``. Each checks its options and hands over to the module that does the
job (``exporter/job.py`` runs an export's stages)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantship.backends import registry
from quantship.backends.base import SessionSettings, ShapeRanges
from quantship.calibration.images import ImageOptions
from quantship.calibration.methods import MethodSpec
from quantship.errors import BackendError, QuantshipError
from quantship.exporter.output import (
    MANIFEST,
    write_json,
)
from quantship.types import Precision
from quantship.ui import UI, api_ui

if TYPE_CHECKING:  # importing the export side needs onnx; bench on a target does not
    from quantship.exporter.job import ExportResult


def export(
    model: Any,
    calib: Any,
    out: str | Path,
    *,
    backends: str | Sequence[str] = registry.DEFAULT,
    method: str = "percentile",
    percentile: float = 99.99,
    samples: int | None = None,
    held_out: Any = None,
    calib_cache: str | Path | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    example_inputs: Any = None,
    transform: Callable[[Any], Any] | None = None,
    images: ImageOptions | None = None,
    tokenizer: str | Path | None = None,
    weights: str | Path | None = None,
    float_nodes: Sequence[str] = (),
    exclude: Sequence[str] = (),
    exclude_ops: Sequence[str] = (),
    max_drop: float | None = None,
    metric: str | None = None,
    require_engine: bool = False,
    bench: bool = True,
    threads: int | None = None,
    plan: str = "rules",
    algorithms: str | Sequence[str] | None = None,
    pooling: str | None = None,
    ray: str | None = None,
    ui: UI | None = None,
) -> ExportResult:
    """Quantize ``model`` for each backend into ``out``; the options are ``quantship
    export``'s (see its ``--help``).

    ``model``: a path to an ``.onnx`` file, ``package.module:factory``, an
    ``onnx.ModelProto`` or a torch ``nn.Module`` (its input shapes from
    ``example_inputs``, ``input_shapes`` or the first calibration sample).
    ``calib``/``held_out``: a path (``.npz``, ``.npy``, a folder of images, a text file)
    or ``package.module:function``, or the data itself: a numpy array (one input), a
    dict of arrays keyed by input name, or any iterable of feeds, e.g. a torch
    ``DataLoader`` (of ``(inputs, labels)`` for a one-input model, or with
    ``transform`` making a feed of each item).

    >>> import numpy as np, onnx
    >>> from onnx import helper, TensorProto
    >>> w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], np.ones(12).tolist())
    >>> g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
    ...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
    ...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], [w])
    >>> result = export(helper.make_model(g), np.random.rand(64, 4).astype("float32"),
    ...                 out_dir, bench=False)
    >>> [(a.backend, a.precision) for a in result.artifacts]
    [('onnxruntime', 'int8')]
    """
    ui = api_ui(ui)
    from quantship.exporter.job import ExportOptions, run_export

    try:
        mspec = MethodSpec(method, percentile)  # type: ignore[arg-type]
    except ValueError as e:
        raise QuantshipError(str(e)) from None
    from quantship.calibration.objects import reiterable

    calib, held_out = reiterable(calib), reiterable(held_out)
    example_shapes = _shapes_of(example_inputs) if example_inputs is not None else None
    opts = ExportOptions(
        model=model,
        calib=calib,
        out=Path(out),
        backends=backends,
        method=mspec,
        samples=samples,
        held_out=held_out,
        calib_cache=calib_cache,
        input_shapes=input_shapes,
        images=images,
        tokenizer=Path(tokenizer) if tokenizer is not None else None,
        weights=Path(weights) if weights is not None else None,
        float_nodes=tuple(float_nodes),
        exclude=tuple(exclude),
        exclude_ops=tuple(exclude_ops),
        max_drop=max_drop,
        metric=metric,
        require_engine=require_engine,
        bench=bench,
        threads=threads,
        plan=plan,
        algorithms=algorithms,
        pooling=pooling,
        ray=ray,
        transform=transform,
        example_shapes=example_shapes,
        configuration=_recorded(  # not out: the manifest is in it, and moves with it
            model=model, calib=calib, backends=backends, method=method,
            percentile=percentile, samples=samples, held_out=held_out,
            calib_cache=calib_cache, input_shapes=input_shapes,
            images=dataclasses.asdict(images) if images is not None else None,
            tokenizer=tokenizer, weights=weights, float_nodes=list(float_nodes),
            exclude=list(exclude), exclude_ops=list(exclude_ops), max_drop=max_drop,
            metric=metric, require_engine=require_engine, bench=bench, threads=threads,
            plan=plan, algorithms=algorithms, pooling=pooling, ray=ray,
            transform=transform,
        ),
    )  # fmt: skip
    return run_export(opts, ui)


# Arguments whose strings are paths: recorded absolute, so that a replay from another
# folder reads the same files.
_PATH_ARGS = frozenset({"model", "calib", "held_out", "calib_cache", "tokenizer", "weights"})


def _recorded(**kwargs: Any) -> dict[str, Any]:
    """export()'s arguments as JSON, as `quantship export --replay` takes them back. An
    object (a ModelProto, an array, a function) is recorded as {"object": what it was}:
    such a run is described, not repeatable from the manifest."""
    import os

    from quantship.calibration.objects import describe, is_data_object
    from quantship.specs import is_reference

    out: dict[str, Any] = {}
    for k, v in kwargs.items():
        if v is None or isinstance(v, (bool, int, float)):
            out[k] = v
        elif isinstance(v, (str, os.PathLike)):
            text = str(v)
            is_path = k in _PATH_ARGS and not is_reference(text)
            out[k] = str(Path(text).resolve()) if is_path else text
        elif k == "input_shapes":
            out[k] = {n: list(s) for n, s in v.items()}
        elif isinstance(v, (list, tuple)) and all(isinstance(x, (str, int, float)) for x in v):
            out[k] = list(v)
        elif isinstance(v, dict) and k == "images":
            out[k] = {n: list(x) if isinstance(x, tuple) else x for n, x in v.items()}
        elif callable(v) and k == "transform":
            out[k] = {"object": f"function {getattr(v, '__qualname__', type(v).__name__)}"}
        else:
            kind = f"{type(v).__module__}.{type(v).__qualname__}"
            data = k in ("calib", "held_out") and is_data_object(v)
            out[k] = {"object": f"{kind}: {describe(v)}" if data else kind}
    return out


def _shapes_of(example: Any) -> dict[str, tuple[int, ...]]:
    """Input shapes from example inputs: a tensor or array (one input named "input"),
    a one-element tuple of one (as torch.export takes them), or a dict of them by the
    forward's argument names."""
    from collections.abc import Mapping

    if isinstance(example, (tuple, list)):
        if len(example) != 1:
            raise QuantshipError(
                "example_inputs: for a module with several inputs pass a dict keyed by "
                "forward's argument names"
            )
        example = example[0]
    items = example.items() if isinstance(example, Mapping) else [("input", example)]
    shapes = {}
    for name, v in items:
        if not hasattr(v, "shape"):
            raise QuantshipError(
                f"example_inputs: {name!r} is {type(v).__name__}; pass a tensor or array, or a "
                "dict of them keyed by input name"
            )
        shapes[str(name)] = tuple(int(d) for d in v.shape)
    return shapes


def build_engine(
    folder: str | Path,
    *,
    max_batch: int = 32,
    float_layers: Precision | None = None,
    shapes: ShapeRanges | None = None,
    ui: UI | None = None,
) -> dict[str, Any]:
    """Build the engine of each artifact in an export folder whose backend builds one
    (TensorRT), here on the deployment GPU, and record it in the manifest, which is
    rewritten only once every engine is built. Layers the plan left float run at
    ``float_layers`` (default: the runtime's fastest float here, fp16 on GPUs with fast
    fp16). ``shapes``: an input's (min, opt, max) shapes for the engine's profile
    (default: batch 1 … ``max_batch``, other dynamic dimensions over the sizes the
    calibration data covered). Returns what each build reported."""
    ui = api_ui(ui)
    from quantship.exporter.manifest import artifact_entry, artifacts_in, read_manifest

    root = Path(folder)
    manifest = read_manifest(root)
    engines = [
        (i, a, registry.get(a.backend))
        for i, a in enumerate(artifacts_in(root, manifest))
        if a.backend in registry.names() and registry.get(a.backend).capabilities().engine
    ]
    if not engines:
        makers = [n for n in registry.names() if registry.get(n).capabilities().engine]
        raise BackendError(
            f"'{root}' has no artifact that builds an engine; export with --backend "
            f"{' or '.join(makers) or 'a backend that builds engines'} first"
        )
    info: dict[str, Any] = {}
    for i, art, backend in engines:
        reason = backend.engine_unavailable()
        if reason is not None:
            raise BackendError(f"cannot build a {backend.name} engine here: {reason}")
        ui.note(f"building the {backend.name} engine in {root} ...")
        built = backend.build(art, max_batch, float_layers, shapes)
        old = manifest["artifacts"][i]
        # What was measured at export ran elsewhere (the QDQ model on a CPU): latency
        # and the verdict go; fidelity stays, saying where it was measured.
        stale = ("files", "metadata", "notes", "size_bytes", "sha256", "path", "label",
                 "p50_ms", "latency", "speedup", "recommended")  # fmt: skip
        kept = {k: v for k, v in old.items() if k not in stale}
        kept["label"] = backend.describe(built, SessionSettings())
        if kept.get("fidelity"):
            kept["fidelity"] = {**kept["fidelity"], "measured_on": old.get("label")}
        manifest["artifacts"][i] = artifact_entry(built, kept)
        for entry in manifest.get("baselines", []):
            entry["recommended"] = False
        if manifest.get("verdict"):
            manifest["verdict"]["choice"] = None
            manifest["verdict"]["line"] = (
                f"the {backend.name} engine was built after the export's measurements; "
                f"time it here: quantship bench {root}"
            )
        info[backend.name] = dict(built.metadata.get("engine", {}))
        for note in built.notes:
            ui.note(f"{backend.name}: {note}")
    write_json(root / MANIFEST, manifest)
    return info


def distill(
    teacher: Any,
    student: Any,
    data: Any,
    out: str | Path,
    *,
    val: Any = None,
    unlabelled: Any = None,
    teacher_weights: str | Path | None = None,
    student_weights: str | Path | None = None,
    epochs: int = 20,
    temperature: float = 4.0,
    alpha: float = 0.7,
    lr: float | str | None = "auto",
    batch_size: int = 64,
    seed: int = 0,
    resume: bool = False,
    patience: int = 0,
    schedule: str = "cosine",
    qat: bool = False,
    backend: str = registry.DEFAULT,
    calib: str | Path | None = None,
    method: str = "percentile",
    qat_epochs: int = 5,
    qat_scales: str = "learned",
    qat_lr: float | str | None = "auto",
    algorithms: str | None = None,
    ui: UI | None = None,
) -> dict[str, Any]:
    """Distill ``student`` from ``teacher`` (each ``package.module:factory`` or an
    ``nn.Module``); writes student.pt (the best epoch on validation), student.onnx and
    metrics.json into ``out``. ``data``, ``val``: a path, ``package.module:function``,
    ``(inputs, labels)`` arrays or a torch Dataset (``unlabelled``: inputs alone).
    ``lr="auto"`` (or None) picks the learning rate by a short sweep;
    ``unlabelled`` data (inputs only) is taught by the teacher alone.
    ``student_weights``: the student's starting weights; with ``epochs=0`` and ``qat``
    the float distillation is skipped and they are what is quantized.

    ``qat``: then quantization-aware distillation for ``backend``: the student's INT8
    model as that backend's plan writes it (ranges from ``calib``, else the training
    data, by ``method``) fine-tuned for ``qat_epochs`` with the teacher guiding it,
    scales ``"learned"`` (LSQ) or ``"frozen"``, starting from the INT8 model export
    writes with ``algorithms`` (export's ``--algorithms``); writes student.ptq.onnx,
    student.int8.onnx and metrics.json's ``qat`` section.

    >>> import numpy as np, torch
    >>> from torch import nn
    >>> _ = torch.manual_seed(0)
    >>> x = np.random.default_rng(0).standard_normal((256, 8)).astype("float32")
    >>> teacher = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3)).eval()
    >>> y = teacher(torch.from_numpy(x)).argmax(1).numpy()
    >>> metrics = distill(teacher, nn.Linear(8, 3), (x, y), out_dir, epochs=5, lr=1e-2)
    >>> metrics["val_accuracy"] > 0.5, (out_dir / "student.onnx").exists()
    (True, True)
    """
    ui = api_ui(ui)
    try:
        import torch
    except ImportError:
        raise QuantshipError(
            "distill needs torch: pip install torch==2.13.0 'quantship[torch]'"
        ) from None
    from quantship.algorithms import Algorithms
    from quantship.distill.data import as_dataset
    from quantship.distill.qad import QatOptions, quantization_aware
    from quantship.distill.train import DistillConfig, _dist, write_student
    from quantship.distill.train import distill as run
    from quantship.exporter.torch_export import load_factory, load_weights

    if epochs < 0:
        raise QuantshipError(f"epochs must be >= 0, got {epochs}")
    given = not isinstance(student, str)  # a module object: trained or not, as it is
    if epochs == 0 and not (qat and (student_weights is not None or given)):
        raise QuantshipError(
            "--epochs 0 skips float distillation: give the trained student's --student-weights "
            "and --qat (or --epochs N to distill it first)"
        )
    try:
        rate = None if lr in (None, "auto") else float(lr)
        config = DistillConfig(max(epochs, 1), temperature, alpha, rate, batch_size, seed,
                               patience, schedule)  # fmt: skip
        qopts = QatOptions(backend, calib, method, epochs=qat_epochs, scales=qat_scales,
                           lr=None if qat_lr in (None, "auto") else float(qat_lr),
                           algorithms=algorithms)  # fmt: skip
        Algorithms.parse(algorithms)  # an unknown name fails now, not after the training
    except ValueError as e:
        raise QuantshipError(str(e)) from None
    if qat:  # a backend that is not here fails now, not after the float training
        registry.available(backend)
    t = load_factory(teacher, "teacher") if isinstance(teacher, str) else teacher
    if teacher_weights is not None:
        load_weights(t, Path(teacher_weights), "teacher")
    s = load_factory(student, "student") if isinstance(student, str) else student
    if student_weights is not None:
        load_weights(s, Path(student_weights), "student")
    train = as_dataset(data, "training")
    v = as_dataset(val, "validation") if val is not None else None
    u = as_dataset(unlabelled, "unlabelled", labelled=False) if unlabelled is not None else None
    if epochs == 0:  # quantization-aware distillation of the given student alone
        metrics: dict[str, Any] = {
            "config": {**dataclasses.asdict(config), "epochs": 0},
            "student_weights": str(student_weights) if student_weights is not None else None,
            "student_parameters": sum(p.numel() for p in s.parameters()),
            "teacher_parameters": sum(p.numel() for p in t.parameters()),
        }
        if _dist()[0] == 0:  # quantization_aware waits for rank 0's student.onnx
            write_student(s, tuple(torch.as_tensor(train[0][0]).shape), Path(out), metrics)
    else:
        metrics = run(t, s, train, v, Path(out), config, unlabelled=u, resume=resume, ui=ui)
    if not qat:
        return metrics
    metrics["qat"] = quantization_aware(
        t, train, v, u, Path(out), config, qopts, resume=resume, ui=ui
    )
    return metrics


# Implemented beside what they orchestrate; part of this API.
from quantship.guard_command import sensitivity  # noqa: E402
from quantship.measure.command import bench  # noqa: E402
from quantship.measure.profile import profile  # noqa: E402


def __getattr__(name: str) -> Any:
    if name == "ExportResult":
        from quantship.exporter.job import ExportResult

        return ExportResult
    raise AttributeError(f"module 'quantship.api' has no attribute {name!r}")


__all__ = [
    "ExportResult",
    "bench",
    "build_engine",
    "distill",
    "export",
    "profile",
    "sensitivity",
]
