"""Op rules and checks that more than one backend uses: what makes a Gemm, MatMul,
Conv, binary op or embedding lookup quantizable, and the ops quantized on their inputs
only. Checks read shapes, not weights: a weight is loaded once, when it is quantized."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx

from quantship.backends.planning import Check, OpRule
from quantship.calibration.qparams import QDType
from quantship.exporter.graph import GraphView, get_attr

# Embedding tables smaller than this stay float: a few KB saved, one more DQ to run.
MIN_TABLE_VALUES = 4096


def gemm_check(node: onnx.NodeProto, view: GraphView) -> str | None:
    if get_attr(node, "transA", 0):
        return "Gemm with transA=1"
    if abs(float(get_attr(node, "alpha", 1.0)) - 1.0) > 1e-6:
        return "Gemm with alpha != 1"
    if len(node.input) > 2 and node.input[2]:
        if abs(float(get_attr(node, "beta", 1.0)) - 1.0) > 1e-6:
            return "Gemm with beta != 1"
        if not view.is_constant(node.input[2]) or view.rank(node.input[2]) != 1:
            return "Gemm whose C is not a 1-D constant bias"
    if len(node.input) < 2 or not view.is_constant(node.input[1]):
        return "Gemm whose B is not a 2-D constant"
    if view.rank(node.input[1]) != 2:
        return "Gemm whose B is not a 2-D constant"
    return None


def gemm_axis(node: onnx.NodeProto) -> int:
    """Output-channel axis of Gemm's B: N is axis 0 of B when transB, else axis 1."""
    return 0 if get_attr(node, "transB", 0) else 1


def matmul_check(node: onnx.NodeProto, view: GraphView) -> str | None:
    if len(node.input) > 1 and view.is_constant(node.input[1]) and view.rank(node.input[1]) != 2:
        return "MatMul with a constant B that is not 2-D"
    return None


def both(*checks: Check | None) -> Check:
    """A check that passes where every one of ``checks`` does (the first reason else);
    None: no check."""

    def check(node: onnx.NodeProto, view: GraphView) -> str | None:
        for c in checks:
            reason = c(node, view) if c is not None else None
            if reason:
                return reason
        return None

    return check


def conv_check(node: onnx.NodeProto, view: GraphView) -> str | None:
    rank = view.rank(node.input[1]) if len(node.input) > 1 else None
    if rank is not None and rank < 3:
        return "Conv weight of rank < 3"
    return None


def binary_check(node: onnx.NodeProto, view: GraphView) -> str | None:
    if len(node.input) != 2 or any(view.is_constant(i) for i in node.input):
        return f"{node.op_type} with a constant operand"
    return None


# A GELU as exporters write it: x · 0.5 · (1 + erf(x / √2)), or with tanh of a cubic.
_GELU_CORE = frozenset({"Erf", "Tanh"})


def not_gelu_part(node: onnx.NodeProto, view: GraphView) -> str | None:
    """A rule check: None, or why a Mul stays float because it is a decomposed GELU's
    product with ``1 + erf(…)`` (or ``1 + tanh(…)``). A GELU stays float in every
    backend (its input's range is resolved badly in 8 bits, and no runtime has an
    integer kernel for it); quantizing this Mul also gives the matrix product before the
    GELU a quantized consumer beside its float ones (the Div or Pow into erf/tanh), and
    ONNX Runtime then fuses that product into no integer kernel at all: it ran float,
    dequantizing its int8 weight on every run (a MiniLM-shaped encoder, 6 FFN products,
    2.1-2.4 ms each of weight dequantization at 128 tokens;
    benchmarks/transformer_encoders.py)."""
    for x in node.input:
        p = view.producer.get(x)
        if p is None or view.nodes[p].op_type != "Add":
            continue
        for y in view.nodes[p].input:
            q = view.producer.get(y)
            if q is not None and view.nodes[q].op_type in _GELU_CORE:
                return "part of a GELU (x · (1 + erf(…))), which stays float"
    return None


def _is_norm(node: onnx.NodeProto, view: GraphView) -> bool:
    """A LayerNormalization, or the ReduceMean over the last axis that begins a
    decomposed one."""
    if node.op_type == "LayerNormalization":
        return True
    if node.op_type != "ReduceMean":
        return False
    axes = get_attr(node, "axes")
    if axes is None and len(node.input) > 1:
        v = view.constant_value(node.input[1])
        axes = None if v is None else [int(a) for a in np.ravel(v)]
    shape = view.shape.get(node.input[0]) if node.input else None
    last = {-1} | ({len(shape) - 1} if shape else set())
    return axes is not None and len(axes) == 1 and int(axes[0]) in last


def not_into_norm(node: onnx.NodeProto, view: GraphView) -> str | None:
    """A rule check: None, or why an Add stays float because its sum goes into a
    LayerNorm (directly, or through further Adds): a transformer's residual stream and
    embedding sums. Their range is set by the largest channels of the stream, so 8 bits
    resolve the rest badly, and the sum is normalised in float anyway. Measured on a
    MiniLM-shaped encoder (random weights, 128 tokens, benchmarks/transformer_encoders.py):
    each of its 14 such Adds alone in INT8 cost about 4e-5 of 1 - cosine, together
    nearly all of the model's 6.1e-4 (OpenVINO) / 8.2e-4 (ONNX Runtime); with them float,
    8.3e-5 / 7.8e-5, and ONNX Runtime then fuses all 48 products into integer kernels
    (0.92-0.96x quantize_dynamic's latency, timed interleaved, where it had been 1.4x)."""
    seen, frontier = 0, [node]
    while frontier and seen < 8:
        n = frontier.pop()
        seen += 1
        for y in n.output:
            for use in view.consumers(y):
                nxt = view.nodes[use.node]
                if _is_norm(nxt, view):
                    return "a sum that goes into a LayerNorm (a residual stream), which stays float"
                if nxt.op_type == "Add":
                    frontier.append(nxt)
    return None


def table_check(node: onnx.NodeProto, view: GraphView) -> str | None:
    if int(get_attr(node, "axis", 0)) != 0:
        return "Gather along an axis other than 0"
    if len(node.input) < 2 or view.is_constant(node.input[1]):
        return "Gather with constant indices"
    shape = view.shape.get(node.input[0])
    if shape is None or len(shape) < 2 or any(d is None for d in shape):
        return "Gather from a table that is not a constant matrix"
    if int(np.prod([int(d or 0) for d in shape], dtype=np.int64)) < MIN_TABLE_VALUES:
        return "embedding table too small to be worth quantizing"
    return None


def embedding_table(quantize_output: bool, dtype: QDType = "int8", per_row: bool = False) -> OpRule:
    """An embedding lookup (Gather from a float table at run-time indices): the table
    is stored in 8 bits, int8 symmetric or, with ``dtype="uint8"``, asymmetric; per
    tensor, or with ``per_row`` one scale per row (per token), for a runtime that
    gathers the rows' scales with them (OpenVINO). ``quantize_output``: quantize the
    rows read with the table's own params, so a runtime that drops a Q/DQ pair around
    data movement (ONNX Runtime) gathers int8 rows and dequantizes only those, instead
    of the whole table on every run; that needs one scale for the table."""
    return OpRule(
        "compute",
        act_inputs=(),
        weight=0,
        weight_axis=0 if per_row else None,
        quantize_output=quantize_output,
        output_like_weight=quantize_output,
        weight_dtype=dtype,
        check=table_check,
    )


def input_side_ops() -> dict[str, OpRule]:
    """Ops quantized on their inputs only, for runtimes whose kernels absorb the DQ in
    front of them and requantize on their own (OpenVINO's LPT, TensorRT): weighted
    ops, residual Adds and average pooling."""
    return {
        "Conv": OpRule("compute", weight=1, weight_axis=0, quantize_output=False, check=conv_check),
        "Gemm": OpRule(
            "compute", weight=1, weight_axis=gemm_axis, quantize_output=False, check=gemm_check
        ),
        "MatMul": OpRule(
            "compute",
            weight=1,
            weight_axis=1,
            weight_may_be_activation=True,
            quantize_output=False,
            check=matmul_check,
        ),
        "Add": OpRule(
            "compute",
            act_inputs=(0, 1),
            quantize_output=False,
            check=both(binary_check, not_into_norm),
        ),
        "GlobalAveragePool": OpRule("compute", quantize_output=False),
        "AveragePool": OpRule("compute", quantize_output=False),
        "Gather": embedding_table(quantize_output=False),
    }


def kernels_note(counts: Mapping[str, Any], fusion: str) -> str:
    """One line of how many of each op became an integer kernel after ``fusion``."""
    parts = [
        f"{op} {v['integer']}/{v['total']}"
        for op, v in counts.items()
        if isinstance(v, dict) and "total" in v
    ]
    return f"integer kernels after {fusion}: " + (", ".join(parts) or "none")


def activations_note(qdq: onnx.ModelProto) -> str:
    """How a QDQ model quantizes its activations, read from its QuantizeLinear nodes
    (a plan variant or per-node options can differ from the backend's rule table):
    e.g. "uint8 asymmetric, per tensor", or a count of each kind where they mix."""
    inits = {t.name: t for t in qdq.graph.initializer}
    kinds: dict[str, int] = {}
    for n in qdq.graph.node:
        if n.op_type != "QuantizeLinear" or len(n.input) < 3 or n.input[2] not in inits:
            continue
        zp = inits[n.input[2]]
        dtype = "int8" if zp.data_type == onnx.TensorProto.INT8 else "uint8"
        symmetric = dtype == "int8" and bool(np.all(onnx.numpy_helper.to_array(zp) == 0))
        kind = f"{dtype} {'symmetric' if symmetric else 'asymmetric'}"
        kinds[kind] = kinds.get(kind, 0) + 1
    if not kinds:
        return "none quantized"
    if len(kinds) == 1:
        return f"{next(iter(kinds))}, per tensor"
    return ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) + " tensors, per tensor"
