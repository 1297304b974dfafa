"""What a plan is made of: the objects a backend's ``plan`` returns (where the QDQ
pairs go, with which params, which nodes stay float and why) and the options it is
asked to plan with. ``quantship.backends.base`` re-exports them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from quantship.calibration.methods import MethodSpec
from quantship.calibration.qparams import QuantParams


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
    """What the user (or the plan search) asked of planning: the calibration method,
    nodes to keep float, nodes whose activation inputs are int8 symmetric whatever the
    rules say, and nodes quantized by the rules' optional ops (SiLU's Mul where the
    runtime has an integer kernel for it, but it pays only in some regions). ``"*"``:
    every node."""

    method: MethodSpec = field(default_factory=MethodSpec)
    float_nodes: frozenset[str] = frozenset()
    symmetric_inputs: frozenset[str] = frozenset()
    int8_nodes: frozenset[str] = frozenset()

    def to_json(self) -> dict[str, Any]:
        out = {**self.method.to_json(), "float_nodes": sorted(self.float_nodes)}
        if self.symmetric_inputs:
            out["symmetric_inputs"] = sorted(self.symmetric_inputs)
        if self.int8_nodes:
            out["int8_nodes"] = sorted(self.int8_nodes)
        return out


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
