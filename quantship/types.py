"""Types every layer shares, defined once: a feed of named input arrays, a float
precision a runtime can compute in."""

from __future__ import annotations

from typing import Any, Literal

import numpy.typing as npt

# One run's inputs: input name → array, the first axis the batch.
Feed = dict[str, npt.NDArray[Any]]
# The float precisions runtimes compute in (bf16 on CPUs with AVX-512 BF16 or AMX,
# fp16 on GPUs).
Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16", "fp16")
