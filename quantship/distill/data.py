"""The data ``quantship distill`` trains on: ``--data``/``--val``/``--unlabelled`` read
into torch Datasets (an .npz, or ``package.module:function``), with the wrappers the
training loop needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from quantship.distill.loss import UNLABELLED
from quantship.errors import DataError
from quantship.specs import is_reference


def load_dataset(spec: str | Path, role: str, *, labelled: bool = True) -> Any:
    """An .npz with ``x`` (inputs, first axis samples) and ``y`` (integer labels), or
    ``package.module:function`` returning a ``torch.utils.data.Dataset``. With
    ``labelled`` False the data needs only ``x`` (a Dataset's items: an input, or a
    tuple whose first element is the input), and every sample gets the label
    ``UNLABELLED``: only the teacher teaches it."""
    import torch
    from torch.utils.data import TensorDataset

    text = str(spec)
    path = Path(text)
    if path.suffix == ".npz":
        if not path.exists():
            raise DataError(f"{role} data '{path}' not found")
        with np.load(path, allow_pickle=False) as z:
            if not labelled:
                if "x" not in z:
                    raise DataError(
                        f"{role} data '{path}' needs an array 'x' (inputs); it has {', '.join(z.files)}"
                    )
                x = z["x"]
                if len(x) == 0:
                    raise DataError(f"{role} data '{path}' holds no samples")
                if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
                    raise DataError(f"{role} data '{path}': inputs contain NaN or Inf")
                return TensorDataset(
                    torch.from_numpy(np.ascontiguousarray(x, np.float32)),
                    torch.full((len(x),), UNLABELLED, dtype=torch.int64),
                )
            if "x" not in z or "y" not in z:
                raise DataError(
                    f"{role} data '{path}' needs arrays 'x' (inputs) and 'y' (labels); it has {', '.join(z.files)}"
                )
            x, y = z["x"], z["y"]
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{role} data '{path}': labels 'y' must be integers, got {y.dtype}")
        if len(x) != len(y):
            raise DataError(f"{role} data '{path}': {len(x)} inputs but {len(y)} labels")
        if len(x) == 0:
            raise DataError(f"{role} data '{path}' holds no samples")
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            raise DataError(f"{role} data '{path}': inputs contain NaN or Inf")
        return TensorDataset(
            torch.from_numpy(np.ascontiguousarray(x, np.float32)),
            torch.from_numpy(y.astype(np.int64)),
        )
    if is_reference(text):
        from quantship.specs import resolve

        try:
            _, name, fn = resolve(text)
            if fn is None:
                raise AttributeError(f"no attribute {name!r}")
            obj = fn()
        except Exception as e:
            raise DataError(f"{role} data '{text}': {type(e).__name__}: {e}") from None
        return obj if labelled else Unlabelled(obj)
    raise DataError(
        f"{role} data '{text}' not found (an .npz with x and y, or package.module:function)"
    )


class Unlabelled:
    """A Dataset's inputs with the label ``UNLABELLED``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> Any:
        item = self.inner[i]
        return (item[0] if isinstance(item, (tuple, list)) else item), UNLABELLED


class Indexed:
    """``(x, y, i)``: each sample with its index, to look up the teacher's cached logits."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> Any:
        x, y = self.inner[i]
        return x, y, i


def is_static(data: Any) -> bool:
    """Whether every item of ``data`` is the same on every read (tensors held in memory,
    no random transform), so that the teacher's logits can be computed once."""
    from torch.utils.data import ConcatDataset, Subset, TensorDataset

    if isinstance(data, TensorDataset):
        return True
    if isinstance(data, (Subset, Unlabelled)):
        return is_static(data.dataset if isinstance(data, Subset) else data.inner)
    if isinstance(data, ConcatDataset):
        return all(is_static(d) for d in data.datasets)
    return False


def as_dataset(obj: Any, role: str, *, labelled: bool = True) -> Any:
    """What the API's distill() takes as data: a path or ``package.module:function``
    (``load_dataset``), an ``(inputs, labels)`` pair of arrays (inputs alone where
    unlabelled), or a torch Dataset as it is."""
    import os

    import torch
    from torch.utils.data import TensorDataset

    if isinstance(obj, (str, os.PathLike)):
        return load_dataset(str(obj), role, labelled=labelled)
    if isinstance(obj, (tuple, list)) and len(obj) == 2 and labelled:
        x, y = (np.asarray(v.detach().cpu() if hasattr(v, "detach") else v) for v in obj)
        if len(x) != len(y) or not np.issubdtype(y.dtype, np.integer):
            raise DataError(
                f"{role} data: pass (inputs, labels) with one integer label per input; got "
                f"{len(x)} inputs and {len(y)} labels of {y.dtype}"
            )
        return TensorDataset(
            torch.from_numpy(np.ascontiguousarray(x, np.float32)),
            torch.from_numpy(y.astype(np.int64)),
        )
    if hasattr(obj, "__getitem__") and hasattr(obj, "__len__"):
        if not labelled and (isinstance(obj, np.ndarray) or hasattr(obj, "detach")):
            x = np.asarray(obj.detach().cpu() if hasattr(obj, "detach") else obj)
            return TensorDataset(
                torch.from_numpy(np.ascontiguousarray(x, np.float32)),
                torch.full((len(x),), UNLABELLED, dtype=torch.int64),
            )
        return obj if labelled else Unlabelled(obj)
    raise DataError(
        f"{role} data of type {type(obj).__name__}: pass a path, package.module:function, "
        "(inputs, labels) arrays or a torch Dataset"
    )
