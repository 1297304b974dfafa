"""A folder of images as calibration data: sorted by path, resized, normalised and
laid out as the model's input expects (see ``ImageOptions``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from quantship.calibration.data import CalibrationData
from quantship.errors import DataError
from quantship.types import Feed, InputSpec

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


@dataclass(frozen=True)
class ImageOptions:
    """Preprocessing for a folder of images: pixel · scale, then (x − mean) / std, per
    channel, in ``channel_order``, laid out as ``layout``. ``size`` is (height, width);
    by default the model input's own."""

    size: tuple[int, int] | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    scale: float = 1.0 / 255.0
    channel_order: Literal["RGB", "BGR"] = "RGB"
    layout: Literal["NCHW", "NHWC"] | None = None

    def __post_init__(self) -> None:
        if self.size is not None and (len(self.size) != 2 or min(self.size) <= 0):
            raise ValueError(f"image size must be two positive integers, got {self.size}")
        if len(self.mean) not in (1, 3) or len(self.std) not in (1, 3):
            raise ValueError("mean and std take one value or three (one per channel)")
        if any(s == 0 for s in self.std):
            raise ValueError("std must not contain 0")
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel order must be RGB or BGR, got {self.channel_order!r}")
        if self.layout not in (None, "NCHW", "NHWC"):
            raise ValueError(f"layout must be NCHW or NHWC, got {self.layout!r}")


def image_folder(
    folder: Path, inputs: Sequence[InputSpec], opts: ImageOptions, role: str
) -> CalibrationData:
    if len(inputs) != 1:
        raise DataError(
            f"a folder of images feeds one input; the model has {len(inputs)} "
            f"({', '.join(i.name for i in inputs)}); use an .npz keyed by input name"
        )
    spec = inputs[0]
    if len(spec.shape) != 4:
        raise DataError(
            f"a folder of images needs a 4-D model input; {spec.name!r} is {spec.shape_str()}"
        )
    files = sorted(
        (p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
        key=lambda p: p.relative_to(folder).as_posix(),
    )
    if not files:
        raise DataError(f"{role} folder '{folder}' holds no images ({', '.join(IMAGE_SUFFIXES)})")
    layout = opts.layout or (
        "NHWC" if spec.shape[3] in (1, 3) and spec.shape[1] not in (1, 3) else "NCHW"
    )
    c_axis, h_axis, w_axis = (1, 2, 3) if layout == "NCHW" else (3, 1, 2)
    channels = spec.shape[c_axis]
    if channels not in (1, 3):
        raise DataError(
            f"model input {spec.name!r} ({spec.shape_str()}) has {channels} channels in layout "
            f"{layout}; images give 1 or 3 (set --layout)"
        )
    size = opts.size or (spec.shape[h_axis], spec.shape[w_axis])
    if size[0] is None or size[1] is None:
        raise DataError(f"model input {spec.name!r} has a dynamic height/width; pass --image-size")
    h, w = int(size[0]), int(size[1])
    mean = np.asarray(opts.mean, dtype=np.float32)
    std = np.asarray(opts.std, dtype=np.float32)
    try:
        from PIL import Image
    except ImportError:
        raise DataError("reading images needs Pillow: pip install 'quantship[images]'") from None

    def load(p: Path) -> Feed:
        try:
            with Image.open(p) as im:
                rgb = im.convert("L" if channels == 1 else "RGB")
                x = np.asarray(rgb.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
        except OSError as e:
            raise DataError(f"image '{p}' cannot be read ({e})") from None
        if x.ndim == 2:
            x = x[:, :, None]
        x = x * np.float32(opts.scale)
        if channels == 3 and opts.channel_order == "BGR":
            x = x[:, :, ::-1]
        x = (x - mean) / std
        if layout == "NCHW":
            x = x.transpose(2, 0, 1)
        return {spec.name: np.ascontiguousarray(x[None], dtype=np.float32)}

    def gen() -> Iterator[Feed]:
        for p in files:
            yield load(p)

    desc = f"'{folder}' ({len(files)} images, {h}x{w}, {layout})"
    sized = InputSpec(spec.name, _with_hw(spec.shape, h_axis, w_axis, h, w), spec.dtype)
    return CalibrationData(desc, role, (sized,), len(files), gen)


def _with_hw(
    shape: tuple[int | None, ...], ha: int, wa: int, h: int, w: int
) -> tuple[int | None, ...]:
    dims = list(shape)
    dims[ha], dims[wa] = h, w
    return tuple(dims)
