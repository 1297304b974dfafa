"""OpenVINO's plan rules: where FakeQuantize goes for the CPU plugin's integer
kernels. Apart from ``openvino.py`` because planning needs onnx and running an IR
(``bench`` on a runtime-only install) does not."""

from __future__ import annotations

from dataclasses import replace

from quantship.backends.attention import not_attention_product
from quantship.backends.op_rules import binary_check, both, embedding_table, input_side_ops
from quantship.backends.planning import OpRule, Rules

OV_OPS: dict[str, OpRule] = {
    **input_side_ops(),
    # An attention block's products stay float: see attention.not_attention_product.
    "MatMul": replace(
        input_side_ops()["MatMul"],
        check=both(input_side_ops()["MatMul"].check, not_attention_product),
    ),
    # One scale per row: OpenVINO gathers the rows' scales with them. One scale for a
    # whole word-embedding table was the largest single error in the MiniLM-shaped
    # encoder (SQNR 38.3 dB, 42.3 with the table float, 40.4 per row; 1 − cosine 4.6e-5
    # per row against NNCF's 5.8e-5, benchmarks/transformer_encoders.py).
    "Gather": embedding_table(quantize_output=False, per_row=True),
}
# Quantization moves above Split, Concat, Resize and MaxPool so OpenVINO moves int8
# data and requantizes nothing after them (as NNCF places it); a Concat's inputs share
# its output's range (hoist.hoist). Above Concat, on the YOLOv8n-sized detector:
# 4% faster, 1 − cosine 3.7e-4 → 3.1e-4 (benchmarks/plan_choices.py).
RULES = Rules(
    backend="openvino",
    ops=OV_OPS,
    act_dtype="uint8",
    symmetric=False,
    absorb=frozenset(),
    hoist=frozenset({"Split", "Concat", "Resize", "MaxPool"}),
    product_hoist=frozenset({"Reshape", "Transpose", "Mul", "Div"}),
    symmetric_products=True,
    # SiLU's Mul in INT8 only where a plan asks (the "silu-int8" variants, or a region of
    # the profile-guided plan): it splits the activation from its convolution's kernel.
    optional={"Mul": OpRule("compute", act_inputs=(0, 1), check=binary_check)},
)
