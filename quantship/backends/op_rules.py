"""Op rules and checks that more than one backend uses: what makes a Gemm, MatMul,
Conv or binary op quantizable, and the ops quantized on their inputs only."""

from __future__ import annotations

import onnx

from quantship.backends.planning import OpRule
from quantship.exporter.graph import GraphView, get_attr


def gemm_check(node: onnx.NodeProto, view: GraphView) -> str | None:
    if get_attr(node, "transA", 0):
        return "Gemm with transA=1"
    if abs(float(get_attr(node, "alpha", 1.0)) - 1.0) > 1e-6:
        return "Gemm with alpha != 1"
    if len(node.input) > 2 and node.input[2]:
        if abs(float(get_attr(node, "beta", 1.0)) - 1.0) > 1e-6:
            return "Gemm with beta != 1"
        c = view.constant_value(node.input[2])
        if c is None or c.ndim != 1:
            return "Gemm whose C is not a 1-D constant bias"
    w = view.constant_value(node.input[1]) if len(node.input) > 1 else None
    if w is None or w.ndim != 2:
        return "Gemm whose B is not a 2-D constant"
    return None


def gemm_axis(node: onnx.NodeProto) -> int:
    """Output-channel axis of Gemm's B: N is axis 0 of B when transB, else axis 1."""
    return 0 if get_attr(node, "transB", 0) else 1


def matmul_check(node: onnx.NodeProto, view: GraphView) -> str | None:
    if len(node.input) > 1 and view.is_constant(node.input[1]):
        w = view.constant_value(node.input[1])
        if w is None or w.ndim != 2:
            return "MatMul with a constant B that is not 2-D"
    return None


def conv_check(node: onnx.NodeProto, view: GraphView) -> str | None:
    w = view.constant_value(node.input[1]) if len(node.input) > 1 else None
    if w is not None and w.ndim < 3:
        return "Conv weight of rank < 3"
    return None


def binary_check(node: onnx.NodeProto, view: GraphView) -> str | None:
    if len(node.input) != 2 or any(view.is_constant(i) for i in node.input):
        return f"{node.op_type} with a constant operand"
    return None


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
        "Add": OpRule("compute", act_inputs=(0, 1), quantize_output=False, check=binary_check),
        "GlobalAveragePool": OpRule("compute", quantize_output=False),
        "AveragePool": OpRule("compute", quantize_output=False),
    }
