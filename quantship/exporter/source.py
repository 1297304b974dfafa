"""Where an export starts: the user's model (an ONNX file, a PyTorch factory or a
``torch.export`` program; through the API an ``onnx.ModelProto`` or an ``nn.Module``) prepared as a ``FloatModel``, and the calibration data bound
to its inputs."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from quantship.calibration.data import CalibrationData
from quantship.calibration.images import ImageOptions
from quantship.calibration.objects import Transform
from quantship.calibration.sources import open_data
from quantship.calibration.text import TextOptions
from quantship.errors import QuantshipError
from quantship.exporter.load import FloatModel


def load_float_model(
    model: Any,
    calib: Any,
    *,
    input_shapes: dict[str, tuple[int, ...]] | None,
    images: ImageOptions | None,
    weights: Path | None,
    held_out: Any = None,
    tokens: TextOptions | None = None,
    transform: Transform | None = None,
    example_shapes: dict[str, tuple[int, ...]] | None = None,
) -> tuple[FloatModel, CalibrationData | None, Path | bytes]:
    """The prepared float model, the calibration data bound to its inputs, and the
    user's model as given (a file, or the bytes of the model held in memory or that a
    PyTorch export produced), against which the prepared model's outputs are checked.
    ``model``: a path, ``package.module:factory``, or through the API an
    ``onnx.ModelProto`` or a torch ``nn.Module``. A dynamic dimension's example size
    comes from the first calibration sample, or held-out one (``--calib-cache``)."""
    import onnx

    from quantship.calibration.objects import reiterable
    from quantship.calibration.sources import peek_shapes
    from quantship.exporter import load as loader
    from quantship.exporter.onnx_file import Source, read_onnx
    from quantship.exporter.output import sha256_bytes
    from quantship.exporter.torch_export import export_module, export_spec, is_torch_spec

    calib, held_out = reiterable(calib), reiterable(held_out)  # read more than once here
    spec = str(model) if isinstance(model, (str, os.PathLike)) else None
    reference: Path | bytes
    if isinstance(model, onnx.ModelProto):
        if weights is not None:
            raise QuantshipError("weights= applies to a PyTorch model, not an onnx.ModelProto")
        held = model.SerializeToString()
        copy = onnx.ModelProto()  # the caller's object is left as it was
        copy.CopyFrom(model)
        src = Source(copy, "the onnx.ModelProto passed in", sha256_bytes(held), len(held))
        reference = held
    elif spec is None or (is_torch_spec(spec) and Path(spec).suffix != ".onnx"):
        what = spec if spec is not None else f"the {type(model).__name__} passed in"
        if spec is None and not _is_torch_module(model):
            raise QuantshipError(
                f"model of type {type(model).__name__}: pass a path to an .onnx file, "
                "package.module:factory, an onnx.ModelProto or a torch nn.Module"
            )
        # What the module is traced with (its batch stays dynamic); input_shapes fix dims.
        torch_shapes = dict(example_shapes or input_shapes or {})
        if not torch_shapes:
            shape_data = calib if calib is not None else held_out
            torch_shapes = (
                peek_shapes(shape_data, images, tokens, transform) if shape_data is not None else {}
            )
        if not torch_shapes:
            raise QuantshipError(
                f"exporting {what} needs input shapes: give calibration data or --input-shape NAME=1x3x224x224"
            )
        if spec is not None:
            proto = export_spec(spec, weights, torch_shapes)
        else:
            if weights is not None:
                raise QuantshipError("weights= applies to a factory; load them into the module")
            proto = export_module(model, _in_forward_order(model, torch_shapes))
        exported = proto.SerializeToString()
        src = Source(proto, what, sha256_bytes(exported), len(exported))
        reference = exported
    else:
        if weights is not None:
            raise QuantshipError(
                "--weights applies to a PyTorch model (package.module:factory), not an ONNX file"
            )
        reference = Path(spec)
        src = read_onnx(reference)
    raw = loader.raw_inputs(src.proto)
    shape_data = calib if calib is not None else held_out
    data = (
        open_data(shape_data, raw, images=images, tokens=tokens, transform=transform)
        if shape_data is not None
        else None
    )
    first = data.first() if data is not None else None
    data_shapes = {k: tuple(v.shape) for k, v in first.items()} if first else None
    fm = loader.prepare_source(src, input_shapes, data_shapes)
    data = (
        open_data(calib, fm.inputs, images=images, tokens=tokens, transform=transform)
        if calib is not None
        else None
    )
    if data is not None:
        data.first()
    return fm, data, reference


def _is_torch_module(obj: Any) -> bool:
    torch = sys.modules.get("torch")  # a module object means torch is imported already
    return torch is not None and isinstance(obj, (torch.nn.Module, torch.export.ExportedProgram))


def _in_forward_order(
    module: Any, shapes: dict[str, tuple[int, ...]]
) -> dict[str, tuple[int, ...]]:
    """``shapes`` in the order of ``module.forward``'s arguments, matched by name: the
    exporter passes inputs by position, and a dict's order is not the signature's."""
    import inspect

    if len(shapes) < 2:
        return shapes
    forward = getattr(module, "forward", None)
    params = list(inspect.signature(forward).parameters) if forward is not None else []
    missing = [n for n in shapes if n not in params]
    if missing:
        raise QuantshipError(
            f"the module's inputs are named by forward's arguments ({', '.join(params)}); "
            f"the data names {', '.join(map(repr, missing))}"
        )
    return {n: shapes[n] for n in params if n in shapes}
