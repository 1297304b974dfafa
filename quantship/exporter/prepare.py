"""Preparing a loaded model for calibration: opset upgrade, graph clean-up by a
maintained library, shape inference, and the checks that give one clear line instead
of a runtime's traceback.

The clean-up is onnxslim's (constant folding, dead-node and common-subexpression
elimination, ``Constant`` nodes to initializers, Identity/Dropout removal, Conv+BN and
MatMul+Add fusion). It was chosen by measurement against the onnxscript optimizer and
ONNX Runtime's basic offline optimisation and ``quant_pre_process``
(``benchmarks/cleanup_choice.py``): it folds the most (a legacy-exported BERT goes from
728 nodes to 329), keeps outputs within float rounding of the input, is deterministic,
and writes standard ONNX that every runtime reads.

Two kinds of weight are hidden from it as graph inputs and put back afterwards:

- fp16/bf16 weights behind a ``Cast`` to float32: folding the Cast doubles their bytes,
  and the prepared float model must never be larger than the user's file. The planner
  reads the weight through the Cast instead (``GraphView.constant_value``).
- weights in external data files: the library would load every one of them; hidden,
  they stay on disk, so a model larger than memory is prepared in a few MB. Conv+BN
  pairs over such weights are folded afterwards by ``fold_batchnorm``, one at a time.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper

from quantship.errors import ModelError
from quantship.exporter.fold import fold_batchnorm, remove_dead_nodes
from quantship.exporter.graph import (
    GraphView,
    all_nodes,
    check_model,
    get_attr,
    is_external,
    opset_version,
)
from quantship.exporter.load import MAX_OPSET, MIN_OPSET, FloatModel, Shape, raw_inputs
from quantship.exporter.onnx_file import model_bytes
from quantship.exporter.softmax_guard import rewrite_softmax_guards

_WIDENING = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE}
_NARROW_FLOAT = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
# Retried when a clean-up grows the model: folded tensors past this size are not kept.
_FOLD_LIMIT_BYTES = 1 << 16


def prepare(
    proto: onnx.ModelProto,
    *,
    source: str,
    source_sha256: str,
    shapes: dict[str, Shape],
    weights_dir: Path | None = None,
    source_bytes: int = 0,
    weights_sha256: str | None = None,
) -> FloatModel:
    """The ``FloatModel`` of a loaded model. Takes ``proto`` over (it is modified)."""
    model = proto
    notes: list[str] = []

    inits = {t.name for t in model.graph.initializer}
    if any(i.name in inits for i in model.graph.input):
        keep = [i for i in model.graph.input if i.name not in inits]
        del model.graph.input[:]
        model.graph.input.extend(keep)
        notes.append("removed initializers listed as graph inputs (pre-IR4 export)")

    opset = opset_version(model)
    if opset == 0:
        raise ModelError(f"'{source}' imports no default-domain ONNX opset")
    check_ops(model, source)
    if opset < MIN_OPSET:
        try:
            model = onnx.version_converter.convert_version(model, MIN_OPSET)
        except Exception as e:
            raise ModelError(
                f"'{source}' is opset {opset}; upgrading it to {MIN_OPSET} (needed for "
                f"per-channel quantization) failed: {str(e).splitlines()[0]}"
            ) from None
        notes.append(f"upgraded opset {opset} -> {MIN_OPSET}")
    elif opset > MAX_OPSET:
        try:
            model = onnx.version_converter.convert_version(model, MAX_OPSET)
        except Exception as e:
            raise ModelError(
                f"'{source}' is opset {opset}, newer than the runtimes run QuantizeLinear at, "
                f"and converting it to {MAX_OPSET} failed ({str(e).splitlines()[0]}); export "
                f"it at opset {MAX_OPSET} or lower"
            ) from None
        notes.append(
            f"converted opset {opset} -> {MAX_OPSET} (the newest the runtimes quantize at)"
        )

    if _set_dims(model, shapes):
        # Stale intermediate shapes could contradict the changed inputs; otherwise the
        # exporter's annotations (symbolic sequence lengths) help the clean-up fold.
        del model.graph.value_info[:]
    n_nodes = len(model.graph.node)
    model = clean_up(model, weights_dir, source_bytes, notes)
    n_bn = fold_batchnorm(model, weights_dir)
    if n_bn:
        notes.append(f"folded {n_bn} BatchNormalization into Conv over external weights")
    n_guards = rewrite_softmax_guards(model)
    if n_guards:
        notes.append(
            f"{n_guards} attention Softmax NaN guards (Where(IsNaN(p), 0, p)) replaced by one "
            "mask check per model (the same results, without a pass over every score)"
        )
    remove_dead_nodes(model)
    if len(model.graph.node) != n_nodes:
        notes.append(f"graph clean-up: {n_nodes} -> {len(model.graph.node)} nodes")
    model = _infer(model, source)
    _check(model, source)

    view = GraphView(model, weights_dir)
    _check_float32(view, source)
    untyped = [t for n in view.nodes for t in n.output if t and t not in view.elem_type]
    if untyped:
        notes.append(f"{len(untyped)} tensors have no inferred type and will not be quantized")
    specs = tuple(type(s)(s.name, shapes.get(s.name, s.shape), s.dtype) for s in raw_inputs(model))
    return FloatModel(
        proto=model,
        source=source,
        source_sha256=source_sha256,
        inputs=specs,
        outputs=tuple(view.outputs),
        notes=tuple(notes),
        weights_dir=weights_dir,
        source_bytes=source_bytes,
        weights_sha256=weights_sha256 if weights_dir is not None else None,
    )


def _check_float32(view: GraphView, source: str) -> None:
    """The model must compute in float32: its 8-bit grids, scales and integer kernels
    are float32's. (Weights stored in fp16 behind a Cast to float32 are fine.)"""
    for t in view.activations():
        elem = view.elem_type.get(t)
        if elem != onnx.TensorProto.FLOAT:
            kind = onnx.TensorProto.DataType.Name(elem or 0).lower()
            raise ModelError(
                f"'{source}' computes in {kind} (tensor {t!r}); quantship quantizes float32 "
                "models: export it in float32 (weights may stay float16 behind a Cast)"
            )


def check_ops(model: onnx.ModelProto, source: str) -> None:
    """Every op must be one ONNX Runtime runs on the CPU (a kernel, an ONNX function, or
    a function the model defines): the first that is not is named in one line."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    kernels = {(k.domain, k.op_name) for k in ort_state.get_all_opkernel_def()}
    kernels.add(("", "Constant"))  # folded at load time, no kernel needed
    local = {(f.domain, f.name) for f in model.functions}
    for n in all_nodes(model.graph):
        domain = "" if n.domain == "ai.onnx" else n.domain
        if (domain, n.op_type) in kernels or (n.domain, n.op_type) in local:
            continue
        try:
            schema: Any = onnx.defs.get_schema(n.op_type, opset_version(model), domain)
            if schema.has_function or schema.has_context_dependent_function:
                continue
        except onnx.defs.SchemaError:
            pass
        where = f"custom domain '{n.domain}'" if domain else "the ONNX standard"
        raise ModelError(
            f"'{source}': node {n.name or n.op_type!r} uses op '{n.op_type}' from {where}, "
            "which ONNX Runtime cannot run; re-export the model with standard ONNX ops "
            "(or register the op's implementation before exporting)"
        )


def _set_dims(model: onnx.ModelProto, shapes: dict[str, Shape]) -> bool:
    """Input dimensions the user fixed (``--input-shape``) become values; dimensions
    written as 0 or -1 (paddle2onnx's "unknown") become named dynamic dimensions, on
    inputs and outputs alike, so shape inference does not take -1 for a size. Returns
    whether anything changed."""
    changed = False
    for vi in [*model.graph.input, *model.graph.output]:
        if not vi.type.HasField("tensor_type"):
            continue
        fixed = shapes.get(vi.name)
        for axis, d in enumerate(vi.type.tensor_type.shape.dim):
            want = fixed[axis] if fixed is not None and axis < len(fixed) else None
            if want is not None:
                if not (d.HasField("dim_value") and d.dim_value == want):
                    d.dim_value = want
                    changed = True
            elif d.HasField("dim_value") and d.dim_value <= 0:
                d.dim_param = f"{vi.name}_dim{axis}"
                changed = True
    return changed


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    loggers = [logging.getLogger(n) for n in ("onnxslim", "onnx_graphsurgeon")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


def clean_up(
    model: onnx.ModelProto, weights_dir: Path | None, source_bytes: int, notes: list[str]
) -> onnx.ModelProto:
    """The model after onnxslim, with hidden weights put back. Never larger than the
    user's file: a clean-up that grows it is retried without folding large tensors,
    and dropped (the graph used as exported) if it still does."""
    try:
        import onnxslim
    except ImportError:
        notes.append("graph clean-up skipped: onnxslim is not installed (pip install onnxslim)")
        return model
    # The user's inputs, all of them: the library drops inputs nothing reads, and the
    # artifacts must take the inputs the user's deployment code feeds.
    inputs = [onnx.ValueInfoProto() for _ in model.graph.input]
    for kept, vi in zip(inputs, model.graph.input, strict=True):
        kept.CopyFrom(vi)
    hidden = _hide(model)
    before = [(n.name, n.op_type, n.input[0] if n.input else "") for n in model.graph.node]
    attempts: list[dict[str, Any]] = [{}, {"size_threshold": _FOLD_LIMIT_BYTES}]
    for kwargs in attempts:
        try:
            with _quiet():
                slim = onnxslim.slim(model, **kwargs)
        except Exception as e:
            first = (str(e).splitlines() or [type(e).__name__])[0]
            notes.append(f"graph clean-up (onnxslim) failed, graph used as exported: {first}")
            break
        if not isinstance(slim, onnx.ModelProto):
            break
        _restore(slim, hidden)
        del slim.graph.input[:]
        slim.graph.input.extend(inputs)
        _restore_names(slim, before)
        if not source_bytes or model_bytes(slim) <= source_bytes:
            return slim
    _restore(model, hidden)
    return model


def _hide(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Move external weights and narrow-float weights read by a widening Cast from the
    initializers to graph inputs, where no clean-up folds them."""
    g = model.graph
    widened = {
        n.input[0]
        for n in g.node
        if n.op_type == "Cast" and n.input and int(get_attr(n, "to", 0)) in _WIDENING
    }
    hidden: dict[str, onnx.TensorProto] = {}
    for i in range(len(g.initializer) - 1, -1, -1):
        t = g.initializer[i]
        if is_external(t) or (t.data_type in _NARROW_FLOAT and t.name in widened):
            keep = onnx.TensorProto()
            keep.CopyFrom(t)
            hidden[t.name] = keep
            del g.initializer[i]
    for name in sorted(hidden):
        t = hidden[name]
        g.input.append(helper.make_tensor_value_info(name, t.data_type, list(t.dims)))
    return hidden


def _restore(model: onnx.ModelProto, hidden: dict[str, onnx.TensorProto]) -> None:
    if not hidden:
        return
    g = model.graph
    present = {i.name for i in g.input}
    keep = [i for i in g.input if i.name not in hidden]
    del g.input[:]
    g.input.extend(keep)
    have = {t.name for t in g.initializer}
    for name in sorted(hidden):
        if name in present and name not in have:
            g.initializer.append(hidden[name])


# A fused node takes the name of the node it grew from: MatMul+Add becomes a Gemm.
_FUSED_FROM = {"Gemm": ("Gemm", "MatMul"), "Conv": ("Conv",), "ConvTranspose": ("ConvTranspose",)}


def _restore_names(model: onnx.ModelProto, before: list[tuple[str, str, str]]) -> None:
    """Nodes the library fused or rebuilt get the user's node names back (matched by
    op and first input): ``--exclude``/``--keep-float`` and every report name nodes as
    the user's own model does."""
    names = {n for n, _, _ in before if n}
    taken = {n.name for n in model.graph.node if n.name in names}
    by_input: dict[str, list[tuple[str, str]]] = {}
    for name, op, first in before:
        if name and name not in taken:
            by_input.setdefault(first, []).append((op, name))
    for n in model.graph.node:
        if n.name in names or not n.input:
            continue
        ops = _FUSED_FROM.get(n.op_type, (n.op_type,))
        for cand in by_input.get(n.input[0], []):
            if cand[0] in ops and cand[1] not in taken:
                n.name = cand[1]
                taken.add(cand[1])
                break


def _infer(model: onnx.ModelProto, source: str) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(
            model, check_type=False, strict_mode=False, data_prop=True
        )
    except Exception as e:
        raise ModelError(
            f"shape inference failed on '{source}': {str(e).splitlines()[0]}"
        ) from None


def _check(model: onnx.ModelProto, source: str) -> None:
    try:
        check_model(model)
    except onnx.checker.ValidationError as e:
        raise ModelError(
            f"'{source}' fails ONNX validation after loading: {str(e).splitlines()[0]}"
        ) from None


def reference_outputs(
    reference: Path | bytes, feeds: list[dict[str, npt.NDArray[Any]]]
) -> list[dict[str, npt.NDArray[Any]]]:
    """The user's model (a file, or the bytes a PyTorch export produced) run on
    ``feeds``, to compare the prepared model with. Its session is freed on return, so
    the weights are never in memory twice."""
    from quantship.calibration.runner import ort_session

    if not feeds:
        return []
    src = reference if isinstance(reference, Path) else onnx.load_model_from_string(reference)
    ref = ort_session(src, weights_dir=None)
    names = [o.name for o in ref.get_outputs()]
    wanted = {i.name for i in ref.get_inputs()}
    out = []
    for f in feeds:
        try:
            out.append(
                dict(
                    zip(
                        names,
                        ref.run(names, {k: v for k, v in f.items() if k in wanted}),
                        strict=True,
                    )
                )
            )
        except Exception as e:
            raise ModelError(
                f"the model as given fails on a held-out sample in ONNX Runtime: "
                f"{str(e).splitlines()[0]}"
            ) from None
    return out


def max_abs_diff(
    expected: list[dict[str, npt.NDArray[Any]]], got: list[dict[str, npt.NDArray[Any]]]
) -> dict[str, float | None]:
    """Per output, the largest absolute difference over the samples; None where the two
    disagree on shape or on which values are finite."""
    out: dict[str, float | None] = {}
    for exp, g in zip(expected, got, strict=True):
        for name, e in exp.items():
            if name not in g:
                continue
            a, b = np.asarray(e, np.float64), np.asarray(g[name], np.float64)
            prev = out.get(name, 0.0)
            if (
                prev is None
                or a.shape != b.shape
                or not np.array_equal(np.isfinite(a), np.isfinite(b))
            ):
                out[name] = None
                continue
            fin = np.isfinite(a)
            diff = float(np.abs(a[fin] - b[fin]).max()) if fin.any() else 0.0
            out[name] = max(prev, diff)
    return out
