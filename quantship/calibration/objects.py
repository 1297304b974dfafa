"""Data held in Python objects, for the API (a notebook's arrays and loaders):

- a numpy array (or a CPU torch tensor), first axis the sample axis, for a one-input
  model;
- a dict of arrays keyed by input name (labels under ``labels`` or ``y`` are left for
  ``--metric``);
- any other iterable of feeds: dicts of arrays, arrays for a one-input model, or
  tuples, each a batch along its first axis. A torch ``DataLoader`` of ``(inputs,
  labels)`` pairs feeds a one-input model its inputs. A one-shot iterator (a
  generator) is read once into a list (``reiterable``): an export reads its data more
  than once.

``transform`` (as NNCF's ``Dataset(loader, transform_fn)``) turns each item into a feed
first.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from quantship.calibration.data import LABEL_KEYS, CalibrationData, arrays_data, batched_feeds
from quantship.errors import DataError
from quantship.types import Feed, InputSpec

Transform = Callable[[Any], Any]


def is_data_object(spec: Any) -> bool:
    """Whether ``spec`` is data itself, not a path or a ``package.module:function``."""
    return not isinstance(spec, (str, os.PathLike))


def describe(obj: Any) -> str:
    """A short, stable description for messages and the manifest."""
    if isinstance(obj, Mapping):
        parts = [f"{k}: {_shape_text(v)}" for k, v in obj.items()]
        return "a dict of arrays (" + ", ".join(parts) + ")"
    if _is_array(obj):
        return f"an array {_shape_text(obj)}"
    return f"an iterable ({type(obj).__module__}.{type(obj).__qualname__})"


def reiterable(obj: Any) -> Any:
    """``obj``, or for a one-shot iterator (a generator) its items in a list: an export
    reads its data more than once (shapes, calibration, held-out checks), and splits
    calibration from held-out samples by position, so every pass must give the same
    samples in the same order. A shuffling DataLoader does not: it is refused."""
    if obj is None or not is_data_object(obj) or isinstance(obj, Mapping) or _is_array(obj):
        return obj
    sampler = getattr(obj, "sampler", None)
    if sampler is not None and type(sampler).__name__ != "SequentialSampler":
        raise DataError(
            f"a DataLoader with a {type(sampler).__name__} gives its samples in another order "
            "on every pass, and an export reads its data more than once: pass shuffle=False"
        )
    try:
        it = iter(obj)
    except TypeError:
        return obj  # not data: object_data says so
    return list(it) if it is obj else obj


def object_data(
    obj: Any, inputs: Sequence[InputSpec], role: str, transform: Transform | None = None
) -> CalibrationData:
    desc = describe(obj)
    if transform is not None and (isinstance(obj, Mapping) or _is_array(obj)):
        raise DataError(
            f"{role} data is {desc}, already feeds: transform= applies to the items of an "
            "iterable (a DataLoader's batches)"
        )
    if _is_array(obj):
        if len(inputs) != 1:
            raise DataError(
                f"{role} data is one array, but the model has {len(inputs)} inputs "
                f"({', '.join(i.name for i in inputs)}); pass a dict of arrays keyed by input name"
            )
        return arrays_data({inputs[0].name: _numpy(obj, role)}, inputs, desc, role)
    if isinstance(obj, Mapping):
        return arrays_data({str(k): _numpy(v, role) for k, v in obj.items()}, inputs, desc, role)
    items = _items(obj, role)
    names = [i.name for i in inputs]

    def gen() -> Iterator[Feed]:
        return batched_feeds(items, lambda item: _one_feed(item, names, role, transform),
                             inputs, desc, role)  # fmt: skip

    return CalibrationData(desc, role, tuple(inputs), None, gen)


def object_shapes(obj: Any, transform: Transform | None = None) -> dict[str, tuple[int, ...]]:
    """Per-sample shapes (batch axis of 1) of data not yet bound to a model: for
    exporting a PyTorch module, whose input shapes come from its data (the first item's
    names and shapes)."""
    if isinstance(obj, Mapping):
        return {
            str(k): (1, *np.shape(_numpy(v, "calibration"))[1:])
            for k, v in obj.items()
            if k not in LABEL_KEYS
        }
    if _is_array(obj):
        return {"input": (1, *np.shape(_numpy(obj, "calibration"))[1:])}
    for item in _items(obj, "calibration"):
        feed = _one_feed(item, ["input"], "calibration", transform)
        return {k: (1, *np.shape(v)[1:]) for k, v in feed.items()}
    raise DataError("calibration data holds no samples")


def _items(obj: Any, role: str) -> Any:
    """The items of an iterable, readable again (``reiterable``); else an error."""
    try:
        iter(obj)
    except TypeError:
        raise DataError(
            f"{role} data of type {type(obj).__name__} is not data: pass a path, an array, a dict "
            "of arrays, or an iterable of feeds (a DataLoader, a list of dicts)"
        ) from None
    return reiterable(obj)


def _one_feed(
    item: Any, names: list[str], role: str, transform: Transform | None
) -> dict[str, Any]:
    if transform is not None:
        try:
            item = transform(item)
        except Exception as e:
            raise DataError(f"{role} data: transform failed: {type(e).__name__}: {e}") from None
    return _as_feed(item, names, role)


def _as_feed(item: Any, names: list[str], role: str) -> dict[str, Any]:
    if isinstance(item, Mapping):
        return {str(k): _numpy(v, role) for k, v in item.items() if k not in LABEL_KEYS}
    if _is_array(item):
        return {names[0]: _numpy(item, role)} if len(names) == 1 else _bad(item, names, role)
    if isinstance(item, (tuple, list)):
        if len(item) == len(names):
            return {n: _numpy(v, role) for n, v in zip(names, item, strict=True)}
        if len(names) == 1 and item and _is_array(item[0]):  # (inputs, labels, ...)
            return {names[0]: _numpy(item[0], role)}
    return _bad(item, names, role)


def _bad(item: Any, names: list[str], role: str) -> dict[str, Any]:
    raise DataError(
        f"{role} data yielded {type(item).__name__}; yield dicts of arrays keyed by input name "
        f"({', '.join(names)}), or arrays for a one-input model (or pass transform= to make "
        "one of these from each item)"
    )


def _is_array(obj: Any) -> bool:
    return isinstance(obj, np.ndarray) or (hasattr(obj, "shape") and hasattr(obj, "dtype"))


def _numpy(v: Any, role: str) -> Any:
    if hasattr(v, "detach") and hasattr(v, "cpu"):  # a torch tensor
        v = v.detach().cpu().numpy()
    try:
        return np.asarray(v)
    except Exception as e:
        raise DataError(f"{role} data: {type(v).__name__} is not an array ({e})") from None


def _shape_text(v: Any) -> str:
    shape = getattr(v, "shape", None)
    dtype = getattr(v, "dtype", None)
    if shape is None:
        return type(v).__name__
    return "x".join(str(int(d)) for d in shape) + (f" {dtype}" if dtype is not None else "")
