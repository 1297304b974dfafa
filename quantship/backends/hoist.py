"""Moving quantization above data-movement ops (Split, Concat, …) so a runtime moves
int8 data and needs no requantization after them (``Rules.hoist``)."""

from __future__ import annotations

import numpy as np
import onnx

from quantship.backends.attention import is_runtime_product
from quantship.backends.plan_types import PlanOptions, Use
from quantship.calibration.table import CalibrationTable
from quantship.exporter.graph import GraphView


def hoist(
    through: dict[str, set[Use]],
    view: GraphView,
    table: CalibrationTable,
    ops: frozenset[str],
    options: PlanOptions,
) -> dict[str, str]:
    """Move quantization from the outputs of ``ops`` (Split, Concat, …) to their
    inputs, repeatedly: consumers then read the dequantized data through the op.

    Returns the tensors that must share their quantization with another (tensor →
    the tensor whose calibrated range they take): the inputs of one Concat get the
    range of its output, the union of theirs. A runtime that concatenates int8 data
    needs one scale for all of it; OpenVINO otherwise requantizes the inputs to a
    common one after the fact, an error a QDQ simulation does not show."""
    share: dict[str, str] = {}
    changed = True
    while changed:
        changed = False
        for t in sorted(through):
            p = view.producer.get(t)
            if p is None or not through[t]:
                continue
            node = view.nodes[p]
            if node.op_type not in ops or view.node_name(p) in options.float_nodes:
                continue
            slots = range(len(node.input)) if node.op_type == "Concat" else (0,)
            data = [(s, node.input[s]) for s in slots if s < len(node.input) and node.input[s]]
            if not data or any(
                view.is_constant(x) or not view.is_float(x) or x not in table or not table[x].count
                for _, x in data
            ):
                continue
            del through[t]
            root = share.get(t, t)
            for s, x in data:
                through.setdefault(x, set()).add(Use(p, s))
                unify = node.op_type == "Concat" and t in table and table[t].count > 0
                if (unify or t in share) and x not in share:
                    share[x] = root
            changed = True
            break
    return share


def _movable_slot(view: GraphView, node: onnx.NodeProto, ops: frozenset[str]) -> int | None:
    """The data input quantization can move above ``node`` through, or None: Reshape
    and Transpose move values; a Mul or Div by a positive scalar constant scales the
    grid, and a grid above it scaled by the constant is the same grid."""
    if node.op_type not in ops or not node.input:
        return None
    if node.op_type in ("Mul", "Div"):
        if len(node.input) != 2:
            return None
        slots = [s for s in (0, 1) if not view.is_constant(node.input[s])]
        if len(slots) != 1 or (node.op_type == "Div" and slots[0] != 0):
            return None
        c = view.constant_value(node.input[1 - slots[0]])
        if c is None or c.size != 1 or not np.isfinite(c).all() or float(c.reshape(())) <= 0:
            return None
        return slots[0]
    return 0


def hoist_to_products(
    through: dict[str, set[Use]],
    view: GraphView,
    table: CalibrationTable,
    ops: frozenset[str],
    options: PlanOptions,
) -> set[str]:
    """Move the quantization of an activation-by-activation product's input (an
    attention block's query, key or value) above the data movement and scaling between
    it and the layer that computes it (``ops``: Reshape, Transpose, Mul by a scalar),
    onto that layer's output, where a runtime fuses it into the layer as an int8
    output. Only where every consumer of what it moves through reads the quantized
    value (shape queries aside), so no float reader gets int8 data.

    Returns the tensors that now carry a product input's quantization: the moved ones,
    and the inputs that stayed where they were."""
    roots: set[str] = set()
    for t in sorted(through):
        uses = through.get(t)
        if not uses or not all(is_runtime_product(view, view.nodes[u.node]) for u in uses):
            continue
        cur = t
        while True:
            p = view.producer.get(cur)
            if p is None or view.node_name(p) in options.float_nodes:
                break
            slot = _movable_slot(view, view.nodes[p], ops)
            if slot is None:
                break
            x = view.nodes[p].input[slot]
            if not view.is_float(x) or x not in table or not table[x].count:
                break
            readers = {(u.node, u.slot) for u in view.consumers(cur)
                       if view.nodes[u.node].op_type != "Shape"}  # fmt: skip
            if readers != {(u.node, u.slot) for u in through[cur]}:
                break
            del through[cur]
            through.setdefault(x, set()).add(Use(p, slot))
            cur = x
        roots.add(cur)
    return roots
