"""Types every layer shares, defined once: a feed of named input arrays, a float
precision a runtime can compute in, a model input. numpy only: the runtime-only install
(``bench`` on a target machine) imports these."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy.typing as npt

# One run's inputs: input name → array, the first axis the batch.
Feed = dict[str, npt.NDArray[Any]]
# The float precisions runtimes compute in (bf16 on CPUs with AVX-512 BF16 or AMX,
# fp16 on GPUs).
Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16", "fp16")

# A tensor shape; None for a dimension the model leaves dynamic.
Shape = tuple[int | None, ...]


@dataclass(frozen=True)
class InputSpec:
    """A model input: name, shape (``None`` for a dynamic dimension) and numpy dtype."""

    name: str
    shape: Shape
    dtype: str

    def shape_str(self) -> str:
        return "x".join("?" if d is None else str(d) for d in self.shape)

    def concrete(self, batch: int, example: Sequence[int] | None) -> tuple[int | None, ...]:
        """This input's shape at ``batch``: its fixed dimensions, the batch on a dynamic
        first axis, ``example``'s size on another dynamic one (None if it has none)."""
        dims: list[int | None] = []
        for axis, d in enumerate(self.shape):
            if d is not None:
                dims.append(d)
            elif axis == 0:
                dims.append(batch)
            elif example is not None and axis < len(example):
                dims.append(int(example[axis]))
            else:
                dims.append(None)
        return tuple(dims)
