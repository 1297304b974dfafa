"""OpenVINO's view of an ONNX model: converting it as ``ov.convert_model`` would, and
what the conversion shows about a float model (whether its attention becomes one
fused kernel)."""

from __future__ import annotations

import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import onnx

from quantship.backends.attention import attention_products
from quantship.errors import BackendError
from quantship.exporter.load import FloatModel
from quantship.exporter.onnx_file import save_model


def convert_onnx(src: Path, proto: onnx.ModelProto) -> Any:
    """An ONNX file as an OpenVINO model: the ONNX frontend and the transformations
    ``ov.convert_model`` applies to ONNX input (openvino.tools.ovc's ``moc_emit_ir``;
    the weights come out byte-identical), without two things it also does. It sends
    telemetry to Intel's analytics, forking this process once per event (33 forks in one
    export, measured), which a tool run on users' models must not do. And it names the
    ops it creates from a process-wide counter, so a second export in one process wrote
    a different IR: those names are replaced by ones numbered in graph order."""
    from openvino._offline_transformations import (
        apply_moc_transformations,
        compress_quantize_weights_transformation,
    )
    from openvino.frontend import FrontEndManager

    fe = FrontEndManager().load_by_framework("onnx")
    model = fe.convert(fe.load(str(src)))
    apply_moc_transformations(model, cf=False, smart_reshape=True)
    compress_quantize_weights_transformation(model)
    given = {n.name for n in proto.graph.node} | {
        t for n in proto.graph.node for t in (*n.input, *n.output)
    }
    given |= {t.name for t in proto.graph.initializer} | {i.name for i in proto.graph.input}
    counts: Counter[str] = Counter()
    for op in model.get_ordered_ops():
        name = op.get_friendly_name()
        auto = re.fullmatch(r"([A-Za-z][A-Za-z0-9]*)_\d+", name)
        if auto and name not in given:
            prefix = auto.group(1)
            while f"{prefix}_{counts[prefix]}" in given:
                counts[prefix] += 1
            op.set_friendly_name(f"{prefix}_{counts[prefix]}")
            counts[prefix] += 1
    return model


_FUSES: dict[str, bool] = {}


def fuses_attention(model: FloatModel) -> bool:
    """Whether keeping attention products float buys a fused kernel: True where the
    model has no attention products, or where OpenVINO's conversion turns its float
    attention blocks into ScaledDotProductAttention. It does for the PP-OCR-style
    recogniser's blocks; it does not for Hugging Face BERT as exported with its mask
    (MiniLM- and BERT-base-shaped, OpenVINO 2025), and its CPU plugin then runs the
    products as plain bf16 MatMuls: on the MiniLM-shaped encoder at 384 tokens the
    rule plan took 34.1 ms against NNCF's 26.5, NNCF quantizing them
    (benchmarks/transformer_encoders.py). Converting costs about a second for MiniLM;
    it is done once per model."""
    if not attention_products(model.view()):
        return True
    if model.sha256 not in _FUSES:
        try:
            ops = {o.get_type_name() for o in convert_model(model.proto, model).get_ordered_ops()}
        except BackendError:
            ops = {"ScaledDotProductAttention"}  # cannot tell: keep the blocks whole
        _FUSES[model.sha256] = "ScaledDotProductAttention" in ops
    return _FUSES[model.sha256]


def convert_model(qdq: onnx.ModelProto, model: FloatModel) -> Any:
    """The QDQ model as an OpenVINO model, through a file (external weights beside it)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "model.qdq.onnx"
        save_model(qdq, src, model.weights_dir)
        try:
            return convert_onnx(src, qdq)
        except Exception as e:
            raise BackendError(
                f"OpenVINO cannot convert the QDQ model: {str(e).splitlines()[0]}"
            ) from None
