"""ONNX Runtime's plan rules: which ops get integer kernels from QDQ, and how their
inputs are quantized. Apart from ``onnxruntime.py`` because planning needs onnx and
running an artifact (``bench`` on a runtime-only install) does not."""

from __future__ import annotations

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

_TRANSPARENT = OpRule("transparent")
ORT_OPS: dict[str, OpRule] = {
    "Conv": OpRule("compute", weight=1, weight_axis=0, bias=2, check=conv_check),
    "Gemm": OpRule(
        "compute", weight=1, weight_axis=gemm_axis, bias=2, quantize_output=False, check=gemm_check
    ),
    # Float-output integer MatMul, inputs quantized: the same rule as OpenVINO/TensorRT.
    "MatMul": input_side_ops()["MatMul"],
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
