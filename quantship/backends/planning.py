"""The planning engine every backend shares; each backend supplies its ``Rules``.

A plan answers: which nodes run in INT8, which tensors get a QuantizeLinear →
DequantizeLinear pair (and which consumers read through it), with what params, and
which nodes stay float and why. Rules differ per runtime: which ops have integer
kernels, the activation dtype, symmetric or not, whether DQ nodes may be shared.

The placement follows how runtimes fuse QDQ into integer kernels:

- a compute op (Conv, MatMul, …) is quantized when each of its activation inputs is
  read through a DQ and its weight is an int8 constant; a bias becomes int32 at scale
  S_x·S_w so an integer kernel adds it to its accumulator directly;
- its output gets a Q when the runtime's fused kernel needs one; that Q moves past a
  following Relu/Clip (the activation's range is what gets quantized, and runtimes
  fold the activation into the Q's saturation);
- data-movement ops (MaxPool, Reshape, …) whose input is quantized are quantized with
  their input's params, so runtimes run them on integers and drop the pair;
- once a tensor's producer is quantized, all its consumers read the DQ: a float
  consumer of the raw tensor would stop the producer's fusion;
- an embedding table (Gather from a float constant) is stored as int8, per tensor or
  per row (OpenVINO, which gathers the rows' scales); where the runtime needs it (ONNX
  Runtime), the lookup's output is quantized with the table's
  own params, so the lookup runs on int8 rows and only the rows read are dequantized.

What is never quantized: tensors that do not carry the model's data (masks, position
ramps, shape arithmetic: ``GraphView.is_data``), tensors that held ±inf/NaN or sentinel
values (the dtype's lowest value, as attention masks use) on the calibration data, and
the elementwise ops between an attention mask and its Softmax.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx

from quantship.backends.base import (
    ActivationQuant,
    ConstantQuant,
    FloatNode,
    PlanOptions,
    QuantPlan,
    Use,
)
from quantship.backends.hoist import hoist, hoist_to_products
from quantship.backends.masks import masked_softmax_region, value_problem
from quantship.calibration.methods import activation_params
from quantship.calibration.qparams import (
    QDType,
    QuantParams,
    bias_params,
    params_from_range,
    weight_params,
)
from quantship.calibration.table import CalibrationTable
from quantship.exporter.graph import GraphView
from quantship.exporter.load import FloatModel

# A rule check returns None when a node can be quantized, else the reason it cannot.
Check = Callable[[onnx.NodeProto, GraphView], "str | None"]


@dataclass(frozen=True)
class OpRule:
    """How one op type is quantized by a backend."""

    kind: Literal["compute", "transparent"]
    act_inputs: tuple[int, ...] | None = (0,)  # None: every input
    weight: int | None = None
    weight_axis: int | Callable[[onnx.NodeProto], int] | None = 0
    weight_may_be_activation: bool = False  # MatMul: B is a weight or a run-time tensor
    bias: int | None = None
    quantize_output: bool = True
    check: Check | None = None
    # The output is quantized with the weight's params (an embedding lookup: the rows
    # it reads are int8 already, so the runtime moves them without requantizing).
    output_like_weight: bool = False
    # uint8: the weight is stored asymmetric per tensor, like activations (a table whose
    # rows become activations in a runtime that runs activations as uint8).
    weight_dtype: QDType = "int8"


@dataclass(frozen=True)
class Rules:
    backend: str
    ops: Mapping[str, OpRule]
    # "auto": uint8 for tensors that are never negative, int8 for the others
    act_dtype: QDType | Literal["auto"] = "uint8"
    symmetric: bool = False
    absorb: frozenset[str] = field(default_factory=lambda: frozenset({"Relu", "Clip"}))
    dedicated_dq: bool = False
    quantize_graph_outputs: bool = False
    # Data-movement ops the quantization of their consumers is moved above, onto their
    # inputs, so the runtime moves int8 data and needs no requantization after them.
    hoist: frozenset[str] = frozenset()
    # Ops the quantization of an activation-by-activation product's input moves above,
    # onto the layer computing it (hoist.hoist_to_products): Reshape, Transpose, Mul.
    product_hoist: frozenset[str] = frozenset()
    # A product's signed inputs int8 symmetric (non-negative ones stay uint8 from 0).
    symmetric_products: bool = False
    # Ops quantized only in the nodes ``PlanOptions.int8_nodes`` names.
    optional: Mapping[str, OpRule] = field(default_factory=dict)

    def rule(self, op_type: str, name: str, options: PlanOptions) -> OpRule | None:
        """How this node is quantized: its op's rule, or an optional one it is named for."""
        rule = self.ops.get(op_type)
        if rule is None and ({"*", name} & options.int8_nodes):
            rule = self.optional.get(op_type)
        return rule


@dataclass
class _Resolved:
    acts: list[int]
    weight: int | None
    bias: int | None
    rule: OpRule


def _resolve(idx: int, view: GraphView, rule: OpRule, table: CalibrationTable) -> _Resolved | str:
    node = view.nodes[idx]
    if rule.check is not None:
        reason = rule.check(node, view)
        if reason:
            return reason
    slots = list(rule.act_inputs) if rule.act_inputs is not None else list(range(len(node.input)))
    weight = rule.weight
    bias = rule.bias
    if weight is not None:
        w = node.input[weight] if weight < len(node.input) else ""
        if not w:
            return "no weight input"
        if not view.is_constant(w):
            if rule.weight_may_be_activation:
                slots.append(weight)
                weight = None
            else:
                return f"weight {w!r} is computed at run time, not a constant"
        elif not view.is_float(w):
            return f"weight {w!r} is not float"
    if bias is not None:
        b = node.input[bias] if bias < len(node.input) else ""
        if not b:
            bias = None
        elif not view.is_constant(b) or weight is None:
            return f"bias {b!r} is not a constant"
    for s in slots:
        if s >= len(node.input) or not node.input[s]:
            return f"input {s} is missing"
        t = node.input[s]
        if view.is_constant(t):
            return f"input {t!r} is a constant (only run-time tensors are quantized here)"
        if not view.is_float(t):
            return f"input {t!r} is not a float tensor"
        if not view.is_data(t):
            return f"input {t!r} is not computed from the model's data (a mask, position or shape computation)"
        if t not in table or table[t].count == 0:
            return f"no calibration statistics for input {t!r}"
        problem = value_problem(table[t], view.elem_type.get(t))
        if problem:
            return f"input {t!r} {problem}"
    return _Resolved(slots, weight, bias, rule)


def _absorbed(t: str, view: GraphView, absorb: frozenset[str]) -> str:
    """Follow a chain of single-consumer activations (Conv → Relu) to the tensor whose
    range the producer's output Q should cover."""
    while t not in view.outputs:
        uses = view.consumers(t)
        if len(uses) != 1 or uses[0].slot != 0:
            break
        nxt = view.nodes[uses[0].node]
        if nxt.op_type not in absorb or len(nxt.output) != 1:
            break
        t = nxt.output[0]
    return t


def _weight_axis(rule: OpRule, node: onnx.NodeProto) -> int | None:
    ax = rule.weight_axis
    return ax(node) if callable(ax) else ax


def _weight_params(view: GraphView, node: onnx.NodeProto, res: _Resolved) -> QuantParams:
    assert res.weight is not None
    w_val = view.constant_value(node.input[res.weight])
    assert w_val is not None
    if res.rule.weight_dtype == "uint8":
        return params_from_range(float(w_val.min()), float(w_val.max()), "uint8", symmetric=False)
    axis = _weight_axis(res.rule, node)
    return weight_params(w_val, axis if w_val.ndim > 0 else None)


def make_plan(
    model: FloatModel, table: CalibrationTable, options: PlanOptions, rules: Rules
) -> QuantPlan:
    view = model.view()
    float_nodes: list[FloatNode] = []
    compute: dict[int, _Resolved] = {}
    tail = output_tail(view)
    masked = masked_softmax_region(view, table)

    for idx, node in enumerate(view.nodes):
        name = view.node_name(idx)
        rule = rules.rule(node.op_type, name, options)
        if rule is None or rule.kind != "compute":
            continue
        if idx in tail:
            float_nodes.append(
                FloatNode(name, node.op_type, "output decoding after the last weighted layer")
            )
            continue
        if name in options.float_nodes:
            float_nodes.append(FloatNode(name, node.op_type, "kept in float as asked"))
            continue
        if idx in masked:
            float_nodes.append(FloatNode(name, node.op_type, "attention masking before Softmax"))
            continue
        res = _resolve(idx, view, rule, table)
        if isinstance(res, str):
            float_nodes.append(FloatNode(name, node.op_type, res))
        else:
            compute[idx] = res

    # Tensors read through a DQ, by which uses; tensors whose producer is quantized.
    through: dict[str, set[Use]] = {}
    produced: set[str] = set()
    outputs_q: set[str] = set()
    weight_params_of: dict[int, QuantParams] = {}
    fixed: dict[str, QuantParams] = {}
    for idx, res in compute.items():
        node = view.nodes[idx]
        for s in res.acts:
            through.setdefault(node.input[s], set()).add(Use(idx, s))
        if res.rule.quantize_output:
            out = _absorbed(node.output[0], view, rules.absorb)
            if out in view.outputs and not rules.quantize_graph_outputs:
                continue
            if res.rule.output_like_weight and res.weight is not None and out == node.output[0]:
                weight_params_of[idx] = _weight_params(view, node, res)
                fixed[out] = weight_params_of[idx]
                produced.add(out)
                through.setdefault(out, set())
                continue
            if (
                out in table
                and table[out].count
                and view.is_data(out)
                and not value_problem(table[out], view.elem_type.get(out))
            ):
                produced.add(out)
                through.setdefault(out, set())
                if out in view.outputs:
                    outputs_q.add(out)

    tie: dict[str, str] = {}
    if rules.hoist:
        tie.update(hoist(through, view, table, rules.hoist, options))
    product_roots: set[str] = set()
    if rules.product_hoist or rules.symmetric_products:
        product_roots = hoist_to_products(through, view, table, rules.product_hoist, options)

    transparent: list[int] = []
    for idx, node in enumerate(view.nodes):  # ONNX graphs are topologically sorted
        rule = rules.rule(node.op_type, view.node_name(idx), options)
        if rule is None or rule.kind != "transparent" or not node.input:
            continue
        x = node.input[0]
        if x not in through or view.node_name(idx) in options.float_nodes:
            continue
        outs = [o for o in node.output if o and view.is_float(o)]
        if not outs or any(o in view.outputs and not rules.quantize_graph_outputs for o in outs):
            continue
        if rule.check is not None and rule.check(node, view):
            continue
        through[x].add(Use(idx, 0))
        root = tie.get(x, x)
        for o in outs:
            tie[o] = root
            produced.add(o)
            through.setdefault(o, set())
        transparent.append(idx)

    for t in produced:
        for u in view.consumers(t):
            if u.slot >= 0:
                through[t].add(Use(u.node, u.slot))

    params: dict[str, QuantParams] = {}
    sym = options.symmetric_inputs  # int8 symmetric for what these nodes read
    sym_roots = {tie.get(t, t) for t, uses in through.items()
                 if "*" in sym or any(view.node_name(u.node) in sym for u in uses)}  # fmt: skip

    def params_of(t: str) -> QuantParams:
        root = tie.get(t, t)
        if root in fixed:
            return fixed[root]
        if root not in params:
            dtype: QDType
            symmetric = rules.symmetric
            if root in sym_roots or (
                rules.symmetric_products and root in product_roots and table[root].min < 0
            ):
                dtype, symmetric = "int8", True
            elif rules.act_dtype == "auto":
                dtype = "uint8" if table[root].min >= 0 else "int8"
            else:
                dtype = rules.act_dtype
            params[root] = activation_params(
                table[root], options.method, dtype=dtype, symmetric=symmetric
            )
        return params[root]

    activations = [
        ActivationQuant(
            t, params_of(t), tuple(sorted(uses, key=lambda u: (u.node, u.slot))), t in outputs_q
        )
        for t, uses in sorted(through.items())
        if uses or t in outputs_q
    ]

    constants: list[ConstantQuant] = []
    for idx, res in sorted(compute.items()):
        if res.weight is None:
            continue
        node = view.nodes[idx]
        w_name = node.input[res.weight]
        wp = weight_params_of.get(idx) or _weight_params(view, node, res)
        if res.bias is not None:
            b_name = node.input[res.bias]
            b_val = view.constant_value(b_name)
            assert b_val is not None
            x_scale = float(params_of(node.input[res.acts[0]]).scale)
            wp, bp = bias_params(np.asarray(b_val), x_scale, wp)
            constants.append(ConstantQuant(b_name, bp, (Use(idx, res.bias),), "bias"))
        constants.append(ConstantQuant(w_name, wp, (Use(idx, res.weight),), "weight"))

    quantized = sorted(set(compute) | set(transparent))
    return QuantPlan(
        backend=rules.backend,
        activations=tuple(activations),
        constants=tuple(constants),
        float_nodes=tuple(float_nodes),
        quantized_nodes=tuple(view.node_name(i) for i in quantized),
        compute_nodes=tuple(view.node_name(i) for i in sorted(compute)),
        dedicated_dq=rules.dedicated_dq,
    )


WEIGHTED = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})


def output_tail(view: GraphView) -> set[int]:
    """Nodes after the last weighted layer: no Conv/MatMul/Gemm is reachable from them.
    A detector's box decoding (sigmoid, grid offsets, stride scaling, concatenation)
    lives here; it is cheap, precision-sensitive arithmetic, so it stays float."""
    reaches: set[int] = set()
    for idx in range(len(view.nodes) - 1, -1, -1):  # ONNX node order is topological
        node = view.nodes[idx]
        if node.op_type in WEIGHTED:
            reaches.add(idx)
            continue
        for o in node.output:
            if any(u.node in reaches for u in view.consumers(o)):
                reaches.add(idx)
                break
    return {i for i, n in enumerate(view.nodes) if i not in reaches and n.op_type not in WEIGHTED}
