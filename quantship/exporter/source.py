"""Where an export starts: the user's model (an ONNX file, a PyTorch factory or a
``torch.export`` program) prepared as a ``FloatModel``, and the calibration data bound
to its inputs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from quantship.calibration.data import CalibrationData, ImageOptions, open_data
from quantship.errors import QuantshipError
from quantship.exporter.load import FloatModel


def load_float_model(
    model: str | Path,
    calib: str | Path | None,
    *,
    input_shapes: dict[str, tuple[int, ...]] | None,
    images: ImageOptions | None,
    weights: Path | None,
) -> tuple[FloatModel, CalibrationData | None, Path | bytes]:
    """The prepared float model, the calibration data bound to its inputs, and the
    user's model as given (a file, or the bytes a PyTorch export produced), against
    which the prepared model's outputs are checked."""
    from quantship.calibration.data import peek_shapes
    from quantship.exporter import load as loader
    from quantship.exporter.prepare import prepare
    from quantship.exporter.torch_export import export_spec, is_torch_spec

    spec = str(model)
    reference: Path | bytes
    weights_dir: Path | None = None
    if is_torch_spec(spec) and Path(spec).suffix != ".onnx":
        torch_shapes = dict(input_shapes or {})
        if not torch_shapes:
            torch_shapes = peek_shapes(calib, images) if calib is not None else {}
        if not torch_shapes:
            raise QuantshipError(
                f"exporting '{spec}' needs input shapes: give calibration data or --input-shape NAME=1x3x224x224"
            )
        proto = export_spec(spec, weights, torch_shapes)
        from quantship.exporter.output import sha256_bytes

        exported = proto.SerializeToString()
        source_sha, source_bytes = sha256_bytes(exported), len(exported)
        reference = exported
    else:
        if weights is not None:
            raise QuantshipError(
                "--weights applies to a PyTorch model (package.module:factory), not an ONNX file"
            )
        reference = Path(spec)
        proto, source_sha, source_bytes = loader.read_onnx(reference)
        if loader.has_external_data(proto):
            weights_dir = reference.parent
    raw = loader.raw_inputs(proto)
    data = open_data(calib, raw, images=images) if calib is not None else None
    first = data.first() if data is not None else None
    data_shapes = {k: tuple(v.shape) for k, v in first.items()} if first else None
    shapes = loader.resolve_shapes(raw, input_shapes, data_shapes)
    fm = prepare(
        proto,
        source=spec,
        source_sha256=source_sha,
        shapes=shapes,
        weights_dir=weights_dir,
        source_bytes=source_bytes,
    )
    if data_shapes:
        fm = replace(fm, example_shapes={k: (1, *v[1:]) for k, v in data_shapes.items()})
    if calib is not None:
        data = open_data(calib, fm.inputs, images=images)
        data.first()
    return fm, data, reference
