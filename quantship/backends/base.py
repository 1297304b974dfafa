"""The backend contract and the objects passed to and from backends.

A backend is one module implementing ``Backend``: it decides *where* and *how* to
quantize (``plan``), turns the QDQ model into its runtime's artifact (``compile``) and
runs that artifact (``session``). The calibration table it plans from is shared.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy.typing as npt
import onnx

from quantship.calibration.methods import MethodSpec
from quantship.calibration.qparams import QuantParams
from quantship.calibration.table import CalibrationTable
from quantship.exporter.load import FloatModel

Feed = dict[str, npt.NDArray[Any]]


@dataclass(frozen=True)
class Use:
    """Input ``slot`` of node number ``node`` (its index in the FloatModel's graph)."""

    node: int
    slot: int


@dataclass(frozen=True)
class ActivationQuant:
    """A QuantizeLinear→DequantizeLinear pair on a run-time tensor; ``uses`` read the
    dequantized value, every other consumer keeps reading the float tensor."""

    tensor: str
    params: QuantParams
    uses: tuple[Use, ...]
    graph_output: bool = False  # the model output itself becomes the dequantized value

    def __post_init__(self) -> None:
        if self.params.axis is not None:
            raise ValueError(
                f"activation {self.tensor!r}: per-channel activations are not supported"
            )
        if not self.uses and not self.graph_output:
            raise ValueError(f"activation {self.tensor!r} is quantized for no consumer")


@dataclass(frozen=True)
class ConstantQuant:
    """A constant (weight or bias) stored as integers and dequantized for ``uses``."""

    tensor: str
    params: QuantParams
    uses: tuple[Use, ...]
    role: Literal["weight", "bias"] = "weight"


@dataclass(frozen=True)
class FloatNode:
    """A node left in float, and why: shown to the user, recorded in the manifest."""

    node: str
    op_type: str
    reason: str


@dataclass(frozen=True)
class PlanOptions:
    """What the user asked of planning: the calibration method, and nodes to keep float."""

    method: MethodSpec = field(default_factory=MethodSpec)
    float_nodes: frozenset[str] = frozenset()

    def to_json(self) -> dict[str, Any]:
        return {**self.method.to_json(), "float_nodes": sorted(self.float_nodes)}


@dataclass(frozen=True)
class QuantPlan:
    """Where the QDQ pairs go, with which params, and which nodes stay float."""

    backend: str
    activations: tuple[ActivationQuant, ...]
    constants: tuple[ConstantQuant, ...]
    float_nodes: tuple[FloatNode, ...]
    quantized_nodes: tuple[str, ...]
    compute_nodes: tuple[str, ...] = ()  # the quantized_nodes that compute (not data movement)
    dedicated_dq: bool = False  # one DequantizeLinear per consumer (TensorRT's rule)

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for a in self.activations:
            if a.tensor in seen:
                raise ValueError(f"tensor {a.tensor!r} is quantized twice in one plan")
            seen.add(a.tensor)
        uses: set[tuple[int, int]] = set()
        for c in self.constants:
            for u in c.uses:
                if (u.node, u.slot) in uses:
                    raise ValueError(f"input {u} is given two quantizations")
                uses.add((u.node, u.slot))

    def summary(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "quantized_nodes": len(self.quantized_nodes),
            "quantized_activations": len(self.activations),
            "quantized_constants": len(self.constants),
            "float_nodes": [
                {"node": f.node, "op_type": f.op_type, "reason": f.reason} for f in self.float_nodes
            ],
        }


@dataclass(frozen=True)
class Artifact:
    """Files a runtime loads, relative to ``root``, with what made them."""

    backend: str
    format: str
    root: Path
    files: tuple[str, ...]
    precision: Literal["int8", "float"] = "int8"
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.files:
            raise ValueError("an artifact has at least one file")

    @property
    def path(self) -> Path:
        """The file a runtime opens."""
        return self.root / self.files[0]

    def size_bytes(self) -> int:
        return sum((self.root / f).stat().st_size for f in self.files if (self.root / f).exists())


@dataclass(frozen=True)
class SessionSettings:
    """How to run: CPU threads (None: the runtime's default) and the optimisation goal."""

    threads: int | None = None
    mode: Literal["latency", "throughput"] = "latency"
    streams: int | None = None  # parallel infer requests in throughput mode

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.mode not in ("latency", "throughput"):
            raise ValueError(f"mode must be latency or throughput, got {self.mode!r}")


@runtime_checkable
class Session(Protocol):
    """A loaded artifact, ready to run feeds of the model's inputs."""

    def run(self, feeds: Feed) -> list[npt.NDArray[Any]]: ...


class Backend(Protocol):
    """What every backend implements. ``available()`` returns None when its runtime can
    be used, else the reason and how to fix it."""

    name: str
    extra: str
    formats: tuple[str, ...]

    def available(self) -> str | None: ...

    def plan(
        self, model: FloatModel, table: CalibrationTable, options: PlanOptions
    ) -> QuantPlan: ...

    def compile(self, qdq: onnx.ModelProto, out_dir: Path, model: FloatModel) -> Artifact: ...

    def session(self, artifact: Artifact, settings: SessionSettings) -> Session: ...
