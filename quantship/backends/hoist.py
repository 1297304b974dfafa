"""Moving quantization above data-movement ops (Split, Concat, …) so a runtime moves
int8 data and needs no requantization after them (``Rules.hoist``)."""

from __future__ import annotations

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
