"""Loading a model into a ``FloatModel``: an ONNX ModelProto at opset ≥ 13 whose input
shapes are fixed (all but a dynamic batch axis), shape-inferred, with BatchNormalization
folded into the Conv before it.

Why opset 13: per-channel DequantizeLinear (the ``axis`` attribute) exists from opset
13. Published models are often 11 or 12; ONNX Runtime's own quantizer writes an invalid
model for them, we upgrade instead.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from quantship.errors import DataError, ModelError
from quantship.exporter.fold import fold_batchnorm, remove_noops
from quantship.exporter.graph import GraphView, opset_version
from quantship.exporter.output import sha256_file

MIN_OPSET = 13
# Protobuf cannot serialise a message over 2 GiB; bigger models keep weights outside.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000

Shape = tuple[int | None, ...]


@dataclass(frozen=True)
class InputSpec:
    """A model input: name, shape (``None`` for a dynamic dimension) and numpy dtype."""

    name: str
    shape: Shape
    dtype: str

    def shape_str(self) -> str:
        return "x".join("?" if d is None else str(d) for d in self.shape)


@dataclass(frozen=True, eq=False)
class FloatModel:
    """The float model every stage works from. Treat ``proto`` as read-only."""

    proto: onnx.ModelProto
    source: str
    source_sha256: str
    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...]
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if opset_version(self.proto) < MIN_OPSET:
            raise ValueError(f"FloatModel needs opset >= {MIN_OPSET}")
        for spec in self.inputs:
            if any(d is None for d in spec.shape[1:]):
                raise ValueError(f"input {spec.name!r} has dynamic non-batch dims {spec.shape}")

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.proto.SerializeToString()).hexdigest()

    @property
    def dynamic_batch(self) -> bool:
        return any(s.shape and s.shape[0] is None for s in self.inputs)

    def input(self, name: str) -> InputSpec:
        for s in self.inputs:
            if s.name == name:
                return s
        raise KeyError(name)

    def save(self, path: Path) -> None:
        save_model(self.proto, path)


def save_model(proto: onnx.ModelProto, path: Path) -> None:
    """Save deterministically; weights go to ``<name>.data`` beside it past 1.8 GB."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if proto.ByteSize() > EXTERNAL_DATA_THRESHOLD:
        onnx.save_model(
            proto,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.name + ".data",
            size_threshold=1024,
        )
    else:
        path.write_bytes(proto.SerializeToString())


def read_onnx(path: Path) -> tuple[onnx.ModelProto, str]:
    """Read an ONNX file (with external data beside it). Returns the model and the
    sha256 of the file."""
    if not path.exists():
        raise ModelError(f"model file '{path}' not found")
    if path.is_dir():
        raise ModelError(f"model path '{path}' is a folder; pass the .onnx file")
    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError, onnx raises various
        raise ModelError(
            f"'{path}' is not a readable ONNX model ({type(e).__name__}: {e})"
        ) from None
    if not proto.graph.node:
        raise ModelError(f"'{path}' holds no graph nodes; is it an ONNX model?")
    try:
        onnx.external_data_helper.load_external_data_for_model(proto, str(path.parent))
    except (OSError, ValueError) as e:
        raise ModelError(f"'{path}': its external weight data cannot be read ({e})") from None
    return proto, sha256_file(path)


def raw_inputs(proto: onnx.ModelProto) -> list[InputSpec]:
    """The graph inputs (initializers listed as inputs by old exporters excluded)."""
    inits = {t.name for t in proto.graph.initializer}
    out = []
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise ModelError(
                f"model input {vi.name!r} is not a tensor; quantship handles tensor inputs"
            )
        dims: list[int | None] = []
        for d in tt.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None)
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
        except Exception:
            raise ModelError(
                f"model input {vi.name!r} has unsupported element type {tt.elem_type}"
            ) from None
        out.append(InputSpec(vi.name, tuple(dims), dtype))
    return out


def resolve_shapes(
    inputs: list[InputSpec],
    user: dict[str, tuple[int, ...]] | None,
    data: dict[str, tuple[int, ...]] | None,
) -> dict[str, Shape]:
    """Final input shapes. ``user`` (``--input-shape``) fixes every dimension; ``data``
    (one calibration sample, batch axis included) fixes the dynamic non-batch ones. A
    dynamic batch axis stays dynamic unless the user fixes it."""
    user = dict(user or {})
    names = [i.name for i in inputs]
    for name in user:
        if name not in names:
            raise ModelError(
                f"--input-shape names {name!r}, but the model's inputs are: {', '.join(names)}"
            )
    result: dict[str, Shape] = {}
    for spec in inputs:
        if spec.name in user:
            shape = user[spec.name]
            if len(shape) != len(spec.shape):
                raise ModelError(
                    f"--input-shape {spec.name}={'x'.join(map(str, shape))} has rank {len(shape)}; "
                    f"the model input is {spec.shape_str()} (rank {len(spec.shape)})"
                )
            for axis, (want, have) in enumerate(zip(shape, spec.shape, strict=True)):
                if have is not None and have != want:
                    raise ModelError(
                        f"--input-shape {spec.name}={'x'.join(map(str, shape))} conflicts with the "
                        f"model's fixed dimension {axis} = {have} ({spec.shape_str()})"
                    )
            result[spec.name] = tuple(shape)
            continue
        dims = list(spec.shape)
        sample = (data or {}).get(spec.name)
        if sample is not None:
            if len(sample) != len(dims):
                raise DataError(
                    f"calibration data for input {spec.name!r} has rank {len(sample)} "
                    f"(shape {'x'.join(map(str, sample))}); the model expects rank {len(dims)} "
                    f"({spec.shape_str()}), the first axis being the batch axis"
                )
            for axis in range(1, len(dims)):
                if dims[axis] is None:
                    dims[axis] = sample[axis]
                elif dims[axis] != sample[axis]:
                    raise DataError(
                        f"calibration data for input {spec.name!r} has shape "
                        f"{'x'.join(map(str, sample[1:]))} per sample; the model expects "
                        f"{'x'.join('?' if d is None else str(d) for d in dims[1:])}"
                    )
        missing = [a for a in range(1, len(dims)) if dims[a] is None]
        if missing:
            example = "x".join(
                str(d) if d is not None else ("1" if a == 0 else "<n>")
                for a, d in enumerate(spec.shape)
            )
            raise ModelError(
                f"model input {spec.name!r} has dynamic dimensions ({spec.shape_str()}) that no "
                f"calibration sample fixes; pass --input-shape {spec.name}={example}"
            )
        result[spec.name] = tuple(dims)
    return result


def prepare(
    proto: onnx.ModelProto,
    *,
    source: str,
    source_sha256: str,
    shapes: dict[str, Shape],
) -> FloatModel:
    """Upgrade, fix shapes, clean up and shape-infer a loaded model."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
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
    if opset < MIN_OPSET:
        try:
            model = onnx.version_converter.convert_version(model, MIN_OPSET)
        except Exception as e:
            raise ModelError(
                f"'{source}' is opset {opset}; upgrading it to {MIN_OPSET} (needed for "
                f"per-channel quantization) failed: {e}"
            ) from None
        notes.append(f"upgraded opset {opset} -> {MIN_OPSET}")

    for vi in model.graph.input:
        if vi.name not in shapes:
            continue
        dims = vi.type.tensor_type.shape.dim
        for axis, d in enumerate(shapes[vi.name]):
            if d is None:
                if not dims[axis].dim_param:
                    dims[axis].dim_param = "batch"
            else:
                dims[axis].dim_value = d
    # Stale intermediate shapes can contradict the fixed inputs: infer them afresh.
    del model.graph.value_info[:]

    model = _infer(model, source)
    n_bn = fold_batchnorm(model)
    if n_bn:
        notes.append(f"folded {n_bn} BatchNormalization into Conv")
    n_noop = remove_noops(model)
    if n_noop:
        notes.append(f"removed {n_noop} Identity/Dropout")
    del model.graph.value_info[:]
    model = _infer(model, source)

    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise ModelError(
            f"'{source}' fails ONNX validation after loading: {str(e).splitlines()[0]}"
        ) from None

    view = GraphView(model)
    untyped = [t for n in view.nodes for t in n.output if t and t not in view.elem_type]
    if untyped:
        notes.append(f"{len(untyped)} tensors have no inferred type and will not be quantized")
    specs = tuple(InputSpec(i.name, shapes[i.name], i.dtype) for i in raw_inputs(model))
    return FloatModel(
        proto=model,
        source=source,
        source_sha256=source_sha256,
        inputs=specs,
        outputs=tuple(view.outputs),
        notes=tuple(notes),
    )


def _infer(model: onnx.ModelProto, source: str) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(
            model, check_type=False, strict_mode=False, data_prop=True
        )
    except Exception as e:
        raise ModelError(
            f"shape inference failed on '{source}': {str(e).splitlines()[0]}"
        ) from None


def load_model(
    path: Path,
    *,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    data_shapes: dict[str, tuple[int, ...]] | None = None,
) -> FloatModel:
    """Read and prepare an ONNX file in one call."""
    proto, sha = read_onnx(path)
    shapes = resolve_shapes(raw_inputs(proto), input_shapes, data_shapes)
    return prepare(proto, source=str(path), source_sha256=sha, shapes=shapes)
