"""ONNX Runtime's plan rules: which ops get integer kernels from QDQ, and how their
inputs are quantized. Apart from ``onnxruntime.py`` because planning needs onnx and
running an artifact (``bench`` on a runtime-only install) does not."""

from __future__ import annotations

from dataclasses import replace

import onnx

from quantship.backends.attention import product_kind
from quantship.backends.op_rules import (
    binary_check,
    both,
    conv_check,
    embedding_table,
    gemm_axis,
    gemm_check,
    input_side_ops,
    not_gelu_part,
    not_into_norm,
)
from quantship.backends.planning import OpRule, Rules
from quantship.exporter.graph import GraphView


def not_attention_product_ort(node: onnx.NodeProto, view: GraphView) -> str | None:
    """An attention block's score and context products stay float. Quantized, each
    needs its two activation inputs quantized per tensor at run time (query, key, value
    and the Softmax's output), and at transformer head sizes that costs ONNX Runtime
    more than the integer product saves. MiniLM-shaped encoder (6 × 384, 12 heads), batch
    1, 2 threads, interleaved (Intel Xeon with AMX, benchmarks/transformer_plans.py):
    products float 1.52 / 7.83 / 24.93 ms at 16 / 128 / 384 tokens, quantized 1.55 /
    7.92 / 25.68, the same fidelity; on AMD EPYC (AVX-512 VNNI) earlier runs had about
    0.90× against 0.93× ``quantize_dynamic``'s time.
    The plan search's "attention-int8" variant measures the other way on the target."""
    kind = product_kind(view, node)
    if kind is None:
        return None
    return f"an attention block's {kind} product (float: quantizing its inputs costs more)"


_TRANSPARENT = OpRule("transparent")
ORT_OPS: dict[str, OpRule] = {
    "Conv": OpRule("compute", weight=1, weight_axis=0, bias=2, check=conv_check),
    "Gemm": OpRule(
        "compute", weight=1, weight_axis=gemm_axis, bias=2, quantize_output=False, check=gemm_check
    ),
    # Float-output integer MatMul, inputs quantized: the same rule as OpenVINO/TensorRT;
    # attention's activation-by-activation products float (not_attention_product_ort).
    "MatMul": replace(
        input_side_ops()["MatMul"],
        check=both(input_side_ops()["MatMul"].check, not_attention_product_ort),
    ),
    "Add": OpRule("compute", act_inputs=(0, 1), check=both(binary_check, not_into_norm)),
    "Mul": OpRule("compute", act_inputs=(0, 1), check=both(binary_check, not_gelu_part)),
    "GlobalAveragePool": OpRule("compute"),
    "AveragePool": OpRule("compute"),
    "Concat": OpRule("compute", act_inputs=None),
    "Sigmoid": OpRule("compute"),
    "LeakyRelu": OpRule("compute"),
    # uint8 like every activation here: with an int8 table ORT converts the Q after the
    # lookup to uint8 and can no longer drop the pair, and dequantizes the whole table on
    # every run; with uint8 it gathers uint8 rows.
    "Gather": embedding_table(quantize_output=True, dtype="uint8"),
    "MaxPool": _TRANSPARENT,
    "Reshape": _TRANSPARENT,
    "Flatten": _TRANSPARENT,
    "Transpose": _TRANSPARENT,
    "Squeeze": _TRANSPARENT,
    "Unsqueeze": _TRANSPARENT,
    "Resize": _TRANSPARENT,
    "Slice": _TRANSPARENT,
    "Split": _TRANSPARENT,
    "DepthToSpace": _TRANSPARENT,
    "SpaceToDepth": _TRANSPARENT,
}
RULES = Rules(
    backend="onnxruntime",
    ops=ORT_OPS,
    act_dtype="uint8",
    symmetric=False,
    quantize_graph_outputs=True,
)
