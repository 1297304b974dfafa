"""Reading a model, and the ``FloatModel`` every later stage works from.

A ``FloatModel`` is an ONNX ModelProto at opset ≥ 13, cleaned up and shape-inferred
(``exporter/prepare.py``), whose inputs keep the dimensions the model leaves dynamic:
batch and sequence axes stay dynamic in every artifact. Weights the user's file keeps
in external data stay there (``weights_dir``) and are read one tensor at a time, so a
model larger than memory is never loaded whole.

Why opset 13: per-channel DequantizeLinear (the ``axis`` attribute) exists from opset
13. Published models are often 11 or 12; ONNX Runtime's own quantizer writes an invalid
model for them, we upgrade instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from quantship.errors import DataError, ModelError, did_you_mean
from quantship.exporter.graph import GraphView, is_external, opset_version
from quantship.exporter.onnx_file import (
    Source,
    external_info,
    has_external_data,
    read_onnx,
    save_model,
)
from quantship.types import InputSpec as InputSpec
from quantship.types import Shape as Shape

MIN_OPSET = 13
# The newest opset every runtime here runs QuantizeLinear at: onnxruntime 1.32 has no
# kernel for opset 28's (the default of onnx 1.23's helper.make_model); 27 and below
# run there and in OpenVINO 2026.4. A newer model is converted down to this.
MAX_OPSET = 27


@dataclass(frozen=True, eq=False)
class FloatModel:
    """The float model every stage works from. Treat ``proto`` as read-only; its
    external tensors are files in ``weights_dir``."""

    proto: onnx.ModelProto
    source: str
    source_sha256: str
    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...]
    notes: tuple[str, ...] = field(default=())
    weights_dir: Path | None = None
    source_bytes: int = 0  # the user's file, external data included
    weights_sha256: str | None = None  # of the external weight files
    # The shape of one calibration sample per input (batch 1): what a dynamic dimension
    # is benchmarked at when no other shape is asked for.
    example_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    # Per input and axis, the smallest and largest size in the calibration data (the
    # calibration table's ``input_dims``): the lengths INT8 was calibrated for.
    input_ranges: Mapping[str, tuple[tuple[int, int], ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if opset_version(self.proto) < MIN_OPSET:
            raise ValueError(f"FloatModel needs opset >= {MIN_OPSET}")
        if has_external_data(self.proto) and self.weights_dir is None:
            raise ValueError("a FloatModel with external data needs its weights_dir")

    @cached_property
    def sha256(self) -> str:
        """The prepared model's identity: its graph and every weight, external ones
        through the hash of their files."""
        h = hashlib.sha256(self.proto.SerializeToString())
        if self.weights_sha256:
            h.update(self.weights_sha256.encode())
        return h.hexdigest()

    @property
    def dynamic_batch(self) -> bool:
        return any(s.shape and s.shape[0] is None for s in self.inputs)

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the model is fixed at (its inputs' first dimension), if any:
        it then runs only full batches of exactly that many samples."""
        fixed = [s.shape[0] for s in self.inputs if s.shape and s.shape[0] is not None]
        return max(fixed) if fixed else None

    @property
    def dynamic(self) -> bool:
        """Whether any input dimension is left dynamic."""
        return any(d is None for s in self.inputs for d in s.shape)

    def example_shape(self, spec: InputSpec, batch: int = 1) -> tuple[int, ...]:
        """A concrete shape for ``spec``: its fixed dimensions, the calibration sample's
        for dynamic ones, ``batch`` on a dynamic batch axis."""
        return tuple(d or 1 for d in spec.concrete(batch, self.example_shapes.get(spec.name)))

    def input(self, name: str) -> InputSpec:
        for s in self.inputs:
            if s.name == name:
                return s
        raise KeyError(name)

    def view(self) -> GraphView:
        return GraphView(self.proto, self.weights_dir)

    def save(self, path: Path) -> Path | None:
        """Save the model; its external data, if any, goes to a file named like the
        user's (so the saved model is no larger than theirs). Returns that file."""
        locations = {external_info(t)[0] for t in self.proto.graph.initializer if is_external(t)}
        name = Path(next(iter(locations))).name if len(locations) == 1 else None
        return save_model(self.proto, path, self.weights_dir, location=name)


def raw_inputs(proto: onnx.ModelProto) -> list[InputSpec]:
    """The graph inputs (initializers listed as inputs by old exporters excluded);
    dimensions written as 0 or -1 (paddle2onnx) or named count as dynamic."""
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
    """Final input shapes. ``user`` (``--input-shape``) fixes every dimension. Data (one
    sample, batch axis included) is checked against the fixed dimensions and fixes
    none: a dimension the model leaves dynamic stays dynamic."""
    user = dict(user or {})
    names = [i.name for i in inputs]
    for name in user:
        if name not in names:
            raise ModelError(
                f"--input-shape names {name!r}, but the model's inputs are: {', '.join(names)}"
                + did_you_mean(name, names)
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
                if dims[axis] is not None and dims[axis] != sample[axis]:
                    raise DataError(
                        f"calibration data for input {spec.name!r} has shape "
                        f"{'x'.join(map(str, sample[1:]))} per sample; the model expects "
                        f"{'x'.join('?' if d is None else str(d) for d in dims[1:])}"
                    )
        result[spec.name] = tuple(dims)
    return result


def load_model(
    path: Path,
    *,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    data_shapes: dict[str, tuple[int, ...]] | None = None,
) -> FloatModel:
    """Read and prepare an ONNX file in one call."""
    return prepare_source(read_onnx(path), input_shapes, data_shapes)


def prepare_source(
    src: Source,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    data_shapes: dict[str, tuple[int, ...]] | None = None,
) -> FloatModel:
    """The ``FloatModel`` of a read model: shapes resolved (``--input-shape`` fixes,
    data is checked against the fixed dimensions), then prepared. Takes ``src.proto``
    over. One data sample's shapes become the model's example shapes."""
    from quantship.exporter.prepare import prepare

    shapes = resolve_shapes(raw_inputs(src.proto), input_shapes, data_shapes)
    fm = prepare(
        src.proto,
        source=src.name,
        source_sha256=src.sha256,
        shapes=shapes,
        weights_dir=src.weights_dir,
        source_bytes=src.size,
        weights_sha256=src.weights_sha256,
    )
    if data_shapes:
        examples = {k: (1, *v[1:]) for k, v in data_shapes.items()}
        fm = dataclasses.replace(fm, example_shapes=examples)
    return fm
