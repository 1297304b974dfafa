"""The plan search's own plan, decided region by region from the runtime's per-layer
profiles (``profile-guided``).

A region is a weighted node (convolution, matrix product) and the activation after it
(Relu, Clip, HardSwish…, or a gate such as SiLU's ``Sigmoid`` → ``Mul``). Its time in
a plan is the time of every runtime layer that is one of its nodes or moves one of its
tensors: the fused kernel, an unfused activation, the FakeQuantize / Q / DQ of its
output, a layout reorder into one of its layers. Each variant that the rule table's
own backend expresses through plan options (symmetric inputs, SiLU's Mul in INT8, the
activation left float) is profiled once as a whole; each region then keeps the rule
plan, takes the variant whose layers are fastest there (by more than ``margin``), or
stays float where the default float model's layers are no slower. The result is one
more plan, measured like every other.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import onnx

from quantship.backends.base import LayerTime
from quantship.backends.variants import ALL, RULES, PlanVariant

WEIGHTED = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
FLOAT = "float"
# One-input activations a runtime fuses into the weighted layer before them.
_ACTIVATIONS = frozenset({"Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid",
                          "HardSwish", "Elu", "Selu", "Gelu"})  # fmt: skip
_GATES = frozenset({"Sigmoid", "HardSigmoid"})  # x · gate(x): SiLU, HardSwish
# ONNX Runtime's graph transformations and OpenVINO's bias split add to node names.
_RUNTIME_SUFFIX = re.compile(r"(_token_\d+|_nchwc|_nhwc|/duplicated|/\w+Fusion/?|/WithoutBiases)+$")
# Names the QDQ writer gives a tensor's Q and DQ nodes (OpenVINO names FakeQuantize so).
_QDQ_SUFFIX = re.compile(r"\.(QuantizeLinear|DequantizeLinear)(_\d+)?$")
# OpenVINO's reorders: "<from>[_<precision>]_<layout>[_<precision>]_<layout>_<to>".
_P = r"(?:(?:f32|bf16|f16|I8|U8|i8|u8|I32|i32)_)?"
_REORDER = re.compile(rf"^(.+?)_{_P}[a-fA-F0-9]+_{_P}[a-fA-F0-9]+_(.+)$")


@dataclass(frozen=True)
class Region:
    weighted: str  # the weighted node's name
    activations: tuple[str, ...]  # the activation's node names (a gate: gate, then Mul)
    ops: tuple[str, ...]  # their op types, in the same order


def regions_of(model: onnx.ModelProto) -> dict[str, Region]:
    """Every named weighted node's region, by the node's name."""
    nodes = list(model.graph.node)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in nodes:
        for x in n.input:
            readers.setdefault(x, []).append(n)
    out: dict[str, Region] = {}
    for n in nodes:
        if n.op_type not in WEIGHTED or not n.name or not n.output:
            continue
        acts = _activation(n.output[0], readers)
        out[n.name] = Region(n.name, tuple(a.name for a in acts), tuple(a.op_type for a in acts))
    return out


def _activation(y: str, readers: Mapping[str, list[onnx.NodeProto]]) -> list[onnx.NodeProto]:
    use = readers.get(y, [])
    if len(use) == 1 and use[0].op_type in _ACTIVATIONS and use[0].name:
        return [use[0]]
    if len(use) == 2:
        gate = next((u for u in use if u.op_type in _GATES), None)
        mul = next((u for u in use if u.op_type == "Mul"), None)
        if gate and mul and gate.name and mul.name and set(mul.input) == {y, gate.output[0]}:
            return [gate, mul]
    return []


def region_names(
    model: onnx.ModelProto, groups: Mapping[str, Sequence[str]] | None = None
) -> dict[str, str]:
    """Every name a runtime may give a region's layer → the region: its nodes' names,
    the tensors they write, and those tensors' Q and DQ nodes. ``groups``: region →
    its node names (default: the weighted regions, by their weighted node)."""
    if groups is None:
        groups = {k: (k, *r.activations) for k, r in regions_of(model).items()}
    # Unnamed nodes go by the name GraphView gives them.
    by_name = {n.name or f"{n.op_type}_{i}": n for i, n in enumerate(model.graph.node)}
    out: dict[str, str] = {}
    for key, names in groups.items():
        for name in names:
            out[name] = key
            for t in by_name[name].output if name in by_name else ():
                if t:
                    out.setdefault(t, key)
    return out


def region_ms(layers: list[LayerTime], names: Mapping[str, str]) -> dict[str, float]:
    """Per region, the time of the runtime layers that are it: a layer counts for a
    region when every name it goes by that is known (its own, less the runtime's
    suffixes; the names it fused in; for a reorder, the layer it feeds) is one region's."""
    out: dict[str, float] = {}
    for layer in layers:
        hit = {names[c] for c in _names(layer) if c in names}
        if len(hit) == 1:
            (key,) = hit
            out[key] = out.get(key, 0.0) + layer.ms
    return out


def _names(layer: LayerTime) -> set[str]:
    got = {layer.name, *layer.fused}
    m = _REORDER.match(layer.name) if layer.op_type == "Reorder" else None
    if m is not None:
        got = {m.group(2)}  # the layer it feeds
    for g in list(got):
        bare = _RUNTIME_SUFFIX.sub("", g)
        got |= {bare, _QDQ_SUFFIX.sub("", bare)}
    return got


def decide(
    rules: Mapping[str, float],
    flt: Mapping[str, float],
    alternatives: Mapping[str, Mapping[str, float]],
    margin: float,
) -> dict[str, str]:
    """Per region (timed in the rule plan): ``RULES``, the name of the alternative whose
    layers there are fastest by more than ``margin``, or ``FLOAT`` where the float
    model's layers are no slower than the choice."""
    out: dict[str, str] = {}
    for key, t in rules.items():
        best, choice = t, RULES
        timed = [(alt[key], name) for name, alt in alternatives.items() if key in alt]
        if timed:
            fastest, name = min(timed)
            if fastest < (1 - margin) * t:
                best, choice = fastest, name
        out[key] = FLOAT if key in flt and flt[key] <= best else choice
    return out


def guided_variant(
    name: str,
    base: PlanVariant,
    regions: Mapping[str, Region],
    choices: Mapping[str, str],
    variants: Mapping[str, PlanVariant],
) -> PlanVariant | None:
    """The rule plan with each region's choice applied to that region's nodes alone;
    None where every region keeps the rule plan."""
    float_nodes: set[str] = set()
    symmetric: set[str] = set()
    int8: set[str] = set()
    for key, choice in choices.items():
        r = regions[key]
        if choice == FLOAT:
            float_nodes |= {key, *r.activations}
            continue
        v = variants.get(choice)
        if v is None:
            continue
        if v.symmetric_inputs == ALL:
            symmetric.add(key)
        if v.int8_nodes == ALL:
            int8 |= set(r.activations)
        float_nodes |= {a for a, op in zip(r.activations, r.ops, strict=True) if op in v.float_ops}
    if not (float_nodes or symmetric or int8):
        return None
    return make_guided(name, base, frozenset(float_nodes), frozenset(symmetric), frozenset(int8))


def make_guided(
    name: str,
    base: PlanVariant,
    float_nodes: frozenset[str],
    symmetric: frozenset[str],
    int8: frozenset[str],
) -> PlanVariant:
    what = (
        f"rule plan, region by region from the profiles: {len(float_nodes)} node(s) float "
        f"(INT8 no faster), {len(symmetric)} layer(s) with int8 symmetric inputs, "
        f"{len(int8)} activation node(s) in INT8"
    )
    return PlanVariant(name, what, base.backend, float_nodes, symmetric, int8)


def regional(variants: list[PlanVariant], base: PlanVariant) -> dict[str, PlanVariant]:
    """The variants a region can take alone: on the rule table's own backend, differing
    from it only in options that name every node or an op type."""
    return {
        v.name: v
        for v in variants
        if v.name != RULES
        and v.backend is base.backend
        and not v.float_nodes
        and v.symmetric_inputs in (frozenset(), ALL)
        and v.int8_nodes in (frozenset(), ALL)
        and (v.symmetric_inputs or v.int8_nodes or v.float_ops)
    }
