"""Does a QDQ ONNX model follow TensorRT's explicit-quantization rules? Pure ONNX: runs
anywhere, with or without TensorRT.

The rules, from NVIDIA's TensorRT Developer Guide, "Working with Quantized Types" →
"Explicit Quantization" (TensorRT 10):

- ``zero-point``: TensorRT's INT8 quantization is symmetric; Q/DQ zero points must be 0
  (the error users of asymmetric tools meet: "zeroPt must be all zeros").
- ``int8``: INT8 Q/DQ is signed int8; uint8 is not a TensorRT quantized type.
- ``per-channel``: per-channel scales apply to weights (constants) only, along the output
  channel axis (Conv: 0, ConvTranspose: 1, MatMul: last, Gemm: 0 with transB, else 1);
  activations are per tensor.
- ``opset``: per-channel Q/DQ (the ``axis`` attribute) needs opset 13 or newer.
- ``constant-params``: scales and zero points must be constants; scales positive.
- ``pairing``: a QuantizeLinear feeds DequantizeLinear nodes only (Q→DQ pairs).
- ``shared-dq``: one DequantizeLinear per consumer: TensorRT fuses a DQ into the op that
  reads it, and a DQ shared by several consumers is not fused into all of them.
- ``weight-unquantized`` (warning): a Conv/MatMul/Gemm whose data input is quantized but
  whose weight is not runs in floating point ("Q/DQ Layer-Placement Recommendations":
  quantize all inputs of weighted operations).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import onnx

from quantship.backends.base import Finding
from quantship.exporter.graph import GraphView, get_attr, opset_version

Severity = Literal["error", "warning"]


def _weight_axis(consumer: onnx.NodeProto, slot: int, rank: int) -> int | None:
    op = consumer.op_type
    if op == "Conv" and slot == 1:
        return 0
    if op == "ConvTranspose" and slot == 1:
        return 1
    if op == "MatMul" and slot == 1:
        return rank - 1
    if op == "Gemm" and slot == 1:
        return 0 if get_attr(consumer, "transB", 0) else 1
    return None


def check_tensorrt(model: onnx.ModelProto) -> list[Finding]:
    """Every rule each Q/DQ node breaks, by node; empty when TensorRT can take it."""
    view = GraphView(model)
    findings: list[Finding] = []
    qdq = [
        i for i, n in enumerate(view.nodes) if n.op_type in ("QuantizeLinear", "DequantizeLinear")
    ]
    if qdq and opset_version(model) < 13:
        findings.append(
            Finding(
                "opset",
                "model",
                f"opset {opset_version(model)}; per-channel Q/DQ needs 13 or newer",
            )
        )
    for idx in qdq:
        node = view.nodes[idx]
        name = view.node_name(idx)
        scale = view.constant_value(node.input[1]) if len(node.input) > 1 else None
        zp = view.constant_value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if scale is None or (len(node.input) > 2 and node.input[2] and zp is None):
            findings.append(
                Finding("constant-params", name, "scale and zero point must be constants")
            )
            continue
        if np.any(scale <= 0):
            findings.append(Finding("constant-params", name, "scales must be positive"))
        if zp is not None:
            if zp.dtype == np.uint8:
                findings.append(
                    Finding("int8", name, "uint8 quantization; TensorRT's INT8 Q/DQ is signed int8")
                )
            if np.any(zp != 0):
                nz = int(np.flatnonzero(np.asarray(zp).reshape(-1) != 0)[0])
                findings.append(
                    Finding(
                        "zero-point",
                        name,
                        f"zero point {int(np.asarray(zp).reshape(-1)[nz])} (TensorRT accepts only "
                        "symmetric INT8, zero point 0)",
                    )
                )
        per_channel = scale.ndim > 0 and scale.size > 1
        src = node.input[0]
        if node.op_type == "QuantizeLinear":
            for u in view.consumers(node.output[0]):
                if view.nodes[u.node].op_type != "DequantizeLinear":
                    findings.append(
                        Finding(
                            "pairing",
                            name,
                            f"feeds {view.nodes[u.node].op_type} "
                            f"{view.node_name(u.node)!r}; a Q must feed DequantizeLinear only",
                        )
                    )
            if per_channel and not view.is_constant(src):
                findings.append(
                    Finding(
                        "per-channel",
                        name,
                        "per-channel quantization of an activation; use one scale",
                    )
                )
            continue
        # DequantizeLinear
        uses = view.consumers(node.output[0])
        if len(uses) > 1:
            findings.append(
                Finding(
                    "shared-dq",
                    name,
                    f"feeds {len(uses)} consumers; give each its own DequantizeLinear",
                )
            )
        from_constant = view.is_constant(src)
        if per_channel and not from_constant:
            prod = view.producer.get(src)
            q_src = view.nodes[prod].input[0] if prod is not None else src
            if not view.is_constant(q_src):
                findings.append(
                    Finding(
                        "per-channel",
                        name,
                        "per-channel quantization of an activation; use one scale",
                    )
                )
        if per_channel:
            axis = int(get_attr(node, "axis", 1))
            q_val = view.constant_value(src)
            rank = q_val.ndim if q_val is not None else 2
            for u in uses:
                want = _weight_axis(view.nodes[u.node], u.slot, rank)
                if want is not None and axis % rank != want:
                    findings.append(
                        Finding(
                            "per-channel",
                            name,
                            f"axis {axis} for the weight of {view.nodes[u.node].op_type} "
                            f"{view.node_name(u.node)!r}; the output-channel axis is {want}",
                        )
                    )
    # Weighted ops whose input is quantized but weight is not run in float.
    for idx, node in enumerate(view.nodes):
        if node.op_type not in ("Conv", "ConvTranspose", "MatMul", "Gemm") or len(node.input) < 2:
            continue
        ins = [view.producer.get(t) for t in node.input[:2]]
        kinds = [view.nodes[p].op_type if p is not None else None for p in ins]
        if (
            kinds[0] == "DequantizeLinear"
            and kinds[1] != "DequantizeLinear"
            and view.is_constant(node.input[1])
        ):
            findings.append(
                Finding(
                    "weight-unquantized",
                    view.node_name(idx),
                    "data input is quantized but the weight is not: runs in floating point",
                    "warning",
                )
            )
    return findings
