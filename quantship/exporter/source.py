"""Where an export starts: the user's model (an ONNX file, a PyTorch factory or a
``torch.export`` program) prepared as a ``FloatModel``, and the calibration data bound
to its inputs."""

from __future__ import annotations

from pathlib import Path

from quantship.calibration.data import CalibrationData
from quantship.calibration.images import ImageOptions
from quantship.calibration.sources import open_data
from quantship.calibration.text import TextOptions
from quantship.errors import QuantshipError
from quantship.exporter.load import FloatModel


def load_float_model(
    model: str | Path,
    calib: str | Path | None,
    *,
    input_shapes: dict[str, tuple[int, ...]] | None,
    images: ImageOptions | None,
    weights: Path | None,
    held_out: str | Path | None = None,
    tokens: TextOptions | None = None,
) -> tuple[FloatModel, CalibrationData | None, Path | bytes]:
    """The prepared float model, the calibration data bound to its inputs, and the
    user's model as given (a file, or the bytes a PyTorch export produced), against
    which the prepared model's outputs are checked. A dynamic dimension's example
    size comes from the first calibration sample, or held-out one (``--calib-cache``)."""
    from quantship.calibration.sources import peek_shapes
    from quantship.exporter import load as loader
    from quantship.exporter.onnx_file import Source, read_onnx
    from quantship.exporter.output import sha256_bytes
    from quantship.exporter.torch_export import export_spec, is_torch_spec

    spec = str(model)
    reference: Path | bytes
    if is_torch_spec(spec) and Path(spec).suffix != ".onnx":
        torch_shapes = dict(input_shapes or {})
        if not torch_shapes:
            torch_shapes = peek_shapes(calib, images, tokens) if calib is not None else {}
        if not torch_shapes:
            raise QuantshipError(
                f"exporting '{spec}' needs input shapes: give calibration data or --input-shape NAME=1x3x224x224"
            )
        proto = export_spec(spec, weights, torch_shapes)
        exported = proto.SerializeToString()
        src = Source(proto, spec, sha256_bytes(exported), len(exported))
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
        open_data(shape_data, raw, images=images, tokens=tokens) if shape_data is not None else None
    )
    first = data.first() if data is not None else None
    data_shapes = {k: tuple(v.shape) for k, v in first.items()} if first else None
    fm = loader.prepare_source(src, input_shapes, data_shapes)
    data = open_data(calib, fm.inputs, images=images, tokens=tokens) if calib is not None else None
    if data is not None:
        data.first()
    return fm, data, reference
