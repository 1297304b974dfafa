"""What the planners never quantize, whatever the backend: tensors whose calibrated
values an 8-bit grid cannot hold (attention masks' ±inf and sentinel values), and the
ops between an attention mask and the Softmax it masks.

Attention masks reach the scores in two published forms: ``Where(mask, scores, -inf)``
(PyTorch's SDPA, exported) and ``scores + (1 - mask) · lowest`` with the dtype's lowest
value (Hugging Face's eager attention). Either way the masked scores span the mask's
range, and a grid spanning it resolves nothing of the scores.
"""

from __future__ import annotations

import numpy as np
import onnx

from quantship.calibration.observers import TensorStats
from quantship.calibration.table import CalibrationTable
from quantship.exporter.graph import GraphView

# Magnitudes no trained network computes: attention masks add the dtype's lowest value
# (torch.finfo(dtype).min), and an 8-bit grid spanning it would resolve nothing else.
_SENTINEL: dict[int, float] = {
    onnx.TensorProto.FLOAT: 1e30,
    onnx.TensorProto.BFLOAT16: 1e30,
    onnx.TensorProto.FLOAT16: 32768.0,
}


def value_problem(stats: TensorStats, elem_type: int | None) -> str | None:
    """Why a tensor's calibrated values cannot be quantized, or None."""
    if stats.nonfinite:
        return "held ±inf or NaN on the calibration data (attention masking)"
    limit = _SENTINEL.get(int(elem_type or onnx.TensorProto.FLOAT), 1e30)
    if stats.absmax >= limit:
        return f"reached {stats.absmax:.3g} on the calibration data, a mask's sentinel value"
    return None


# Between an attention mask and its Softmax: arithmetic and data movement.
_MASK_PATH_OPS = frozenset(
    {"Add", "Sub", "Mul", "Div", "Where", "Cast", "Reshape", "Transpose", "Expand",
     "Unsqueeze", "Squeeze", "Slice", "Max", "Min", "Neg", "Identity"}
)  # fmt: skip


# A constant this large scaling or shifting a tensor on the way to a Softmax makes it a
# mask (-10000 in older BERT exports, the dtype's lowest value in newer ones).
_MASK_MAGNITUDE = 1e3


def _scaled_mask(view: GraphView, t: str) -> bool:
    """``t`` is a mask built by arithmetic with a huge constant: ``(1 - m) · -10000``."""
    p = view.producer.get(t)
    if p is None or view.nodes[p].op_type not in ("Mul", "Add", "Sub", "Where"):
        return False
    for i in view.nodes[p].input:
        if i and view.is_constant(i) and view.is_float(i):
            v = view.constant_value(i)
            if v is not None and v.size and float(np.max(np.abs(v))) >= _MASK_MAGNITUDE:
                return True
    return False


def masked_softmax_region(view: GraphView, table: CalibrationTable) -> set[int]:
    """Nodes between an attention mask and the Softmax it masks. Walking back from each
    Softmax through elementwise ops, a region is masked when one of its operands is a
    mask: a float tensor not computed from the model's data, a boolean condition, a
    tensor scaled by a huge constant (``(1 - mask) · -10000`` from a float mask input),
    or a tensor that held ±inf or sentinel values. The whole region then stays float:
    its values span the mask's range, which 8 bits cannot share with the scores'."""
    out: set[int] = set()
    for node in view.nodes:
        if node.op_type not in ("Softmax", "LogSoftmax") or not node.input:
            continue
        region: list[int] = []
        masked = False
        stack = [node.input[0]]
        seen: set[str] = set()
        while stack:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            p = view.producer.get(t)
            if p is None or view.nodes[p].op_type not in _MASK_PATH_OPS:
                continue
            region.append(p)
            for i in view.nodes[p].input:
                if not i or view.is_constant(i):
                    continue
                elem = view.elem_type.get(i)
                if (
                    elem == onnx.TensorProto.BOOL
                    or (view.is_float(i) and not view.is_data(i))
                    or (i in table and value_problem(table[i], elem))
                    or _scaled_mask(view, i)
                ):
                    masked = True
                elif view.is_data(i):
                    stack.append(i)
        if masked:
            out.update(region)
    return out
