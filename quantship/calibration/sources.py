"""Opening sample data by what the user passed: a ``.npz``/``.npy`` file, a folder of
images, a text file with a tokenizer, or ``package.module:function`` (the readers are
in ``data.py``, ``images.py`` and ``text.py``); through the API, also arrays, dicts and
iterables held in memory (``objects.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from quantship.calibration.data import (
    CalibrationData,
    callable_data,
    npy_data,
    npz_data,
    stored_npy,
    stored_npz,
)
from quantship.calibration.images import ImageOptions, image_folder
from quantship.calibration.objects import Transform, is_data_object, object_data, object_shapes
from quantship.calibration.text import FIELDS, TextOptions, is_text, text_data
from quantship.errors import DataError
from quantship.specs import is_callable_spec
from quantship.types import InputSpec


def open_data(
    spec: Any,
    inputs: Sequence[InputSpec],
    *,
    images: ImageOptions | None = None,
    role: str = "calibration",
    tokens: TextOptions | None = None,
    transform: Transform | None = None,
) -> CalibrationData:
    """Open ``spec`` (a file, a folder, or ``package.module:function``; through the API
    also data held in objects, ``objects.py``, each item through ``transform``) for
    ``inputs``; a text file is tokenized as ``tokens`` says."""
    if is_data_object(spec):
        return object_data(spec, inputs, role, transform)
    if transform is not None:
        raise DataError(f"transform= applies to data passed as an object, not to '{spec}'")
    text = str(spec)
    path = Path(text)
    if path.exists():
        if path.is_dir():
            return image_folder(path, inputs, images or ImageOptions(), role)
        if path.suffix == ".npz":
            return npz_data(path, inputs, role)
        if path.suffix == ".npy":
            return npy_data(path, inputs, role)
        if is_text(path) or tokens is not None:
            if tokens is None:
                raise DataError(
                    f"{role} data '{path}' is text: say how to tokenize it with --tokenizer DIR "
                    "(a local Hugging Face tokenizer folder)"
                )
            return text_data(path, inputs, tokens, role)
        raise DataError(
            f"{role} data '{path}' is neither .npz, .npy, a text file nor a folder of images; "
            "see `quantship export --help` for the accepted forms"
        )
    if is_callable_spec(text):
        return callable_data(text, inputs, role)
    raise DataError(
        f"{role} data '{text}' not found (expected an .npz/.npy file, a folder of images, "
        "or package.module:function)"
    )


def peek_shapes(
    spec: Any,
    images: ImageOptions | None = None,
    tokens: TextOptions | None = None,
    transform: Transform | None = None,
) -> dict[str, tuple[int, ...]]:
    """Per-sample shapes (batch axis of 1) of data not yet bound to a model: for
    exporting a PyTorch model, whose input shapes come from its data."""
    if is_data_object(spec):
        return object_shapes(spec, transform)
    if transform is not None:
        raise DataError(f"transform= applies to data passed as an object, not to '{spec}'")
    text = str(spec)
    path = Path(text)
    if path.is_dir():
        opts = images or ImageOptions()
        if opts.size is None:
            raise DataError("a folder of images for a PyTorch model needs --image-size")
        h, w = opts.size
        return {"input": (1, 3, h, w) if opts.layout != "NHWC" else (1, h, w, 3)}
    if (
        path.is_file()
        and (is_text(path) or tokens is not None)
        and path.suffix not in (".npz", ".npy")
    ):
        fields = [InputSpec(n, (None, None), "int64") for n in FIELDS]
        if tokens is None:
            raise DataError(f"calibration data '{path}' is text: give --tokenizer DIR")
        return {
            k: tuple(v.shape)
            for k, v in text_data(path, fields, tokens, "calibration").first().items()
        }
    if path.suffix == ".npz" and path.exists():
        return {k: (1, *a.shape[1:]) for k, a in stored_npz(path).items()}
    if path.suffix == ".npy" and path.exists():
        return {"input": (1, *stored_npy(path).shape[1:])}
    if is_callable_spec(text):
        fake = [InputSpec("input", (None,), "float32")]
        src = callable_data(text, fake, "calibration")
        for feed in src._open():
            return {k: tuple(v.shape) for k, v in feed.items()}
    raise DataError(f"calibration data '{text}' not found")
