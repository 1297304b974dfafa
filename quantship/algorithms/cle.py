"""Cross-layer equalization (Nagel et al., "Data-Free Quantization Through Weight
Equalization and Bias Correction", ICCV 2019; AIMET ships it for ONNX models).

For two convolutions in a row, ``y = W2 · f(W1 · x + b1)`` with ``f`` positively
homogeneous (ReLU, LeakyReLU, or nothing), scaling output channel ``i`` of the first
by ``1 / s_i`` and input channel ``i`` of the second by ``s_i`` leaves ``y`` unchanged.
With ``s_i = sqrt(r1_i / r2_i)`` (``r1_i``: the range of the first layer's channel,
``r2_i``: of the second's input channel) both become ``sqrt(r1_i · r2_i)``: channels
whose weights span very different ranges no longer share one badly fitting scale. It
matters most where a scale is shared across channels: the activation between the two
layers (quantized per tensor), and depthwise convolutions whose channels differ by
orders of magnitude (MobileNet's).

ReLU6 is not homogeneous (``6`` does not scale); a pair through ReLU6 is equalized with
ReLU in its place only where the data allows: the calibration data never reached 6 at
that activation's input, so the model's outputs on it are unchanged.

Pairs are equalized in turn until the scales settle (a chain ``conv → conv → conv``
converges over a few rounds), at most ``ROUNDS`` times.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper

from quantship.algorithms.edit import ModelEdit
from quantship.calibration.table import CalibrationTable
from quantship.exporter.load import FloatModel

ROUNDS = 20
TOLERANCE = 1e-3  # stop once no scale moves by more than this (relative)
# Scales are kept within this factor of 1: a channel whose weights are all zero (or
# nearly) must not blow its partner up.
MAX_SCALE = 1e4
_HOMOGENEOUS = frozenset({"Relu", "LeakyRelu", "PRelu"})


@dataclass(frozen=True)
class Pair:
    first: int  # node indices
    second: int
    activation: int | None
    relu6: bool  # the activation is ReLU6, to become ReLU


@dataclass(frozen=True)
class CleReport:
    pairs: int
    relu6_replaced: int
    relu6_kept: int  # pairs through ReLU6 left alone: the data reaches 6 there
    rounds: int

    def to_json(self) -> dict[str, Any]:
        return {
            "pairs": self.pairs,
            "relu6_replaced": self.relu6_replaced,
            "relu6_kept": self.relu6_kept,
            "rounds": self.rounds,
        }


def equalize(fm: FloatModel, table: CalibrationTable | None) -> tuple[FloatModel, CleReport]:
    """The model with every eligible pair equalized, and what was done."""
    edit = ModelEdit(fm)
    pairs, kept = find_pairs(edit, table)
    rounds = 0
    while pairs and rounds < ROUNDS:
        rounds += 1
        if max(_equalize_pair(edit, p) for p in pairs) < TOLERANCE:
            break
    for p in pairs:
        if p.relu6 and p.activation is not None:
            old = edit.node(p.activation)
            edit.replace_node(
                p.activation, helper.make_node("Relu", [old.input[0]], list(old.output), old.name)
            )
    report = CleReport(len(pairs), sum(p.relu6 for p in pairs), kept, rounds)
    note = (
        f"cross-layer equalization: {report.pairs} convolution pair(s), "
        f"{report.relu6_replaced} ReLU6 → ReLU where the data stays below 6"
    )
    return edit.apply(note), report


def find_pairs(edit: ModelEdit, table: CalibrationTable | None) -> tuple[list[Pair], int]:
    """Conv → [ReLU / LeakyReLU / ReLU6] → Conv where the first conv's output (and the
    activation's) feeds only the second, both weights are initializers read only there,
    and each is a plain or depthwise convolution. Also the ReLU6 pairs left alone."""
    view = edit.view
    pairs: list[Pair] = []
    kept = 0
    for i, n in enumerate(view.nodes):
        if n.op_type != "Conv" or _conv_kind(edit, n) is None:
            continue
        t, act = n.output[0], None
        uses = view.consumers(t)
        if len(uses) != 1 or t in view.outputs:
            continue
        nxt = view.nodes[uses[0].node]
        relu6 = False
        if nxt.op_type in _HOMOGENEOUS or _is_relu6(view, nxt):
            if nxt.op_type == "PRelu" and not _scalar_slope(view, nxt):
                continue
            relu6 = nxt.op_type == "Clip"
            if relu6 and not _below_six(table, t):
                kept += 1
                continue
            act = uses[0].node
            t = nxt.output[0]
            uses = view.consumers(t)
            if len(uses) != 1 or t in view.outputs:
                continue
            nxt = view.nodes[uses[0].node]
        if nxt.op_type != "Conv" or uses[0].slot != 0 or _conv_kind(edit, nxt) is None:
            continue
        pairs.append(Pair(i, uses[0].node, act, relu6))
    return pairs, kept


def _conv_kind(edit: ModelEdit, n: onnx.NodeProto) -> str | None:
    """ "plain" (group 1) or "depthwise" (one input channel per group), with weights
    (and bias) that only this node reads; None otherwise."""
    w = edit.weight(n, 1)
    if w is None or (len(n.input) > 2 and n.input[2] and n.input[2] not in edit.view.initializers):
        return None
    group = next((a.i for a in n.attribute if a.name == "group"), 1)
    shape = edit.value(w).shape
    if group == 1:
        return "plain"
    if shape[1] == 1 and shape[0] == group:
        return "depthwise"
    return None


def _is_relu6(view: Any, n: onnx.NodeProto) -> bool:
    if n.op_type != "Clip" or len(n.input) < 3 or not n.input[1] or not n.input[2]:
        return False
    lo, hi = view.constant_value(n.input[1]), view.constant_value(n.input[2])
    return lo is not None and hi is not None and float(lo) == 0.0 and float(hi) == 6.0


def _scalar_slope(view: Any, n: onnx.NodeProto) -> bool:
    slope = view.constant_value(n.input[1]) if len(n.input) > 1 else None
    return slope is not None and np.asarray(slope).size == 1


def _below_six(table: CalibrationTable | None, tensor: str) -> bool:
    return (
        table is not None
        and tensor in table
        and table[tensor].count > 0
        and (table[tensor].max < 6.0)
    )


def _ranges_out(w: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Per output channel, the largest |weight|."""
    out: npt.NDArray[Any] = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
    return out


def _equalize_pair(edit: ModelEdit, p: Pair) -> float:
    """Equalize one pair in place in ``edit``; the largest relative scale change."""
    a, b = edit.node(p.first), edit.node(p.second)
    w1_name, w2_name = a.input[1], b.input[1]
    w1, w2 = edit.value(w1_name), edit.value(w2_name)
    r1 = _ranges_out(w1)
    if _conv_kind(edit, b) == "depthwise":
        r2 = _ranges_out(w2)
    else:
        r2 = np.abs(np.moveaxis(w2, 1, 0).reshape(w2.shape[1], -1)).max(axis=1)
    if r1.shape != r2.shape:
        return 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.sqrt(r1 / r2)
    s = np.where(np.isfinite(s) & (s > 0), s, 1.0)
    s = np.clip(s, 1.0 / MAX_SCALE, MAX_SCALE).astype(np.float32)
    edit.set(w1_name, w1 / s.reshape(-1, *([1] * (w1.ndim - 1))))
    bias = edit.own(p.first, 2)
    if bias is not None:
        edit.set(bias, edit.value(bias) / s)
    if _conv_kind(edit, b) == "depthwise":
        edit.set(w2_name, w2 * s.reshape(-1, *([1] * (w2.ndim - 1))))
    else:
        edit.set(w2_name, w2 * s.reshape(1, -1, *([1] * (w2.ndim - 2))))
    return float(np.abs(s - 1.0).max())
