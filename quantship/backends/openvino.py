"""OpenVINO (CPU plugin): an INT8 IR (``.xml`` + ``.bin``) whose convolutions and
matrix multiplications OpenVINO's low-precision transformations run in INT8.

Plan, in OpenVINO's terms (docs: "Low Precision IR (INT8 Inference)": an operation
runs in INT8 when FakeQuantize ops sit on its *inputs*, data and weights alike;
activation dequantization must be per tensor):

- Q/DQ pairs (each becomes one FakeQuantize) go on the inputs of Conv, MatMul/Gemm,
  Add and average pooling, never on outputs: LPT propagates the dequantization through
  data movement and activations itself. A QDQ model laid out for ONNX Runtime (Q after
  each op) leaves OpenVINO requantizing in float between layers.
- Activations are asymmetric uint8 (NNCF's "mixed" preset), which is zero point 0 for
  never-negative tensors such as ReLU outputs. Weights: int8 symmetric per output
  channel, stored as int8 in the .bin. Symmetric activations, measured
  (``benchmarks/plan_choices.py``, 2 threads, AVX-512 VNNI without AMX): 11-15% slower
  on the ResNet-18- and MobileNetV2-like CNNs, and 3.5× the error (1 − cosine) at the
  same speed on a YOLOv8n-sized detector, whose SiLU outputs dip to −0.28, so that a
  symmetric grid wastes half its codes. Which kernel wins depends on the CPU (on AMX
  parts symmetric activations pick a faster convolution kernel): ``plan_variants`` and
  ``export --plan search`` measure it on the target.
- Mul stays float: quantizing both inputs of SiLU's x·sigmoid(x) made that detector
  26-52% slower, for no gain in fidelity (same script). The CNNs are unchanged within
  noise either way.
  Leaving Add float made them 5-9% slower during development, so Add is quantized.
- An attention block's two activation-by-activation products (scores ``Q·Kᵀ`` and
  context ``P·V`` around a Softmax) stay float: OpenVINO fuses the block into one
  ScaledDotProductAttention kernel only when no FakeQuantize sits inside it. On the
  PP-OCR-style recogniser (``benchmarks/ocr_ctc.py``) that took the INT8 model from
  0.99-1.00x to 1.06-1.16x the bf16 float model's speed, at the same fidelity
  (``attention.not_attention_product``). Where OpenVINO does not fuse the model's
  attention (Hugging Face BERT with its mask), there is nothing to keep whole and the
  products are quantized as NNCF does (``fuses_attention``). Their signed inputs
  (query, key, value) are int8 symmetric and the Softmax's output uint8 from 0: with a
  zero point OpenVINO runs the products as bf16 MatMuls, and a uint8 zero point of
  128 on one, or a scaling Mul folded into its FakeQuantize, failed the CPU plugin's
  compile ("Check 'convert->constant_fold(…)' failed", OpenVINO 2025/2026). Their
  quantization moves above the reshapes, transposes and scaling between them and the
  projections that compute them, onto the projection's output, which OpenVINO fuses
  into the projection's kernel as an int8 output (``hoist.hoist_to_products``). On the
  MiniLM-shaped encoder at 128 tokens (2 threads, AVX-512 VNNI, no AMX, interleaved):
  8.59 ms with the products asymmetric and bf16, 7.99 now, NNCF 8.14.
- Biases stay float: OpenVINO adds them after dequantization.
- Sessions compile as a user would: ``compile_model(model, "CPU")`` with the latency
  (or throughput) hint and a thread count, so float layers run in the plugin's default
  precision (bf16 on CPUs with AVX-512 BF16 or AMX), unless the artifact records that
  its fidelity needs fp32 (measured at export); the float baselines are timed at each
  precision the plugin has here.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from quantship.backends.base import (
    Artifact,
    BaseBackend,
    Capabilities,
    PlanOptions,
    QuantPlan,
    SessionSettings,
)
from quantship.backends.openvino_session import (
    OVSession,
    compile_config,
    openvino_module,
    precision_name,
)
from quantship.backends.variants import ALL, PlanVariant
from quantship.errors import BackendError
from quantship.types import Feed, Precision

if TYPE_CHECKING:  # the export side; bench on a runtime-only install needs none of it
    import onnx

    from quantship.backends.planning import Rules
    from quantship.calibration.table import CalibrationTable
    from quantship.exporter.load import FloatModel

# What to turn off when a static-shape compile disagrees with the dynamic one. Seen with
# OpenVINO 2026.4 on AVX-512 CPUs: at a static batch of 4 or more, the CPU plugin fuses
# a chain of INT8 fully connected layers into one snippets Subgraph that computes wrong
# values (cosine 0 to the float model); the same IR compiled with dynamic shapes, or
# with snippets disabled, is right.
_FALLBACKS: tuple[dict[str, str], ...] = ({"SNIPPETS_MODE": "DISABLE"},)


def static_shape_check(xml: Path, model: FloatModel) -> tuple[dict[str, str], str | None]:
    """Compile the IR at static shapes (batch 1 and 8) and compare its outputs with the
    dynamic-shape compile on the same random inputs. Returns the plugin settings under
    which they agree (none needed, normally) and, if any were needed, why."""
    ov = openvino_module()
    rng = np.random.default_rng(0)
    batches = (1, 8) if model.dynamic_batch else (None,)
    for fallback in ({}, *_FALLBACKS):
        agree = True
        for b in batches:
            feeds: Feed = {}
            for spec in model.inputs:
                shape = model.example_shape(spec, b or 1)
                dtype = np.dtype(spec.dtype)
                feeds[spec.name] = (
                    rng.standard_normal(shape).astype(dtype)
                    if np.issubdtype(dtype, np.floating)
                    else np.ones(shape, dtype)
                )
            ref = OVSession(xml, SessionSettings(), fallback, static=False).run(feeds)
            got = OVSession(xml, SessionSettings(), fallback).run(feeds)
            for r, g in zip(ref, got, strict=True):
                scale = float(np.nanmax(np.abs(r))) if r.size and np.isfinite(r).any() else 1.0
                if not np.allclose(g, r, rtol=0.05, atol=0.05 * scale + 1e-6, equal_nan=True):
                    agree = False
        if agree:
            if not fallback:
                return {}, None
            return dict(fallback), (
                f"OpenVINO {ov.get_version()} computed this model wrongly at static shapes "
                f"(not at dynamic ones); runs with {fallback} to compute it right"
            )
    raise BackendError(
        "OpenVINO computes this model differently at static and dynamic shapes, whatever "
        "the plugin settings; this is an OpenVINO bug: try another OpenVINO version"
    )


def int8_layers(compiled: Any) -> dict[str, dict[str, int]]:
    """From the plugin's runtime graph: how many Convolution / FullyConnected /
    MatMul layers run with 8-bit inputs."""
    counts: dict[str, dict[str, int]] = {}
    for node in compiled.get_runtime_model().get_ordered_ops():
        info = node.get_rt_info()
        layer = info["layerType"].astype(str) if "layerType" in info else node.get_type_name()
        if layer not in (
            "Convolution",
            "FullyConnected",
            "MatMul",
            "GroupConvolution",
            "Deconvolution",
        ):
            continue
        prec = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else ""
        c = counts.setdefault(layer, {"total": 0, "integer": 0})
        c["total"] += 1
        if prec.lower() in ("i8", "u8"):
            c["integer"] += 1
    return counts


class OpenVINOBackend(BaseBackend):
    name = "openvino"
    extra = "openvino"
    formats: tuple[str, ...] = ("onnx", "onnx-qdq", "openvino-ir")

    def __init__(self, rules: Rules | None = None) -> None:
        self._rules = rules
        self._caps: Capabilities | None = None

    @property
    def rules(self) -> Rules:
        """The plan rules (``openvino_rules.RULES`` unless given), imported on first use:
        planning needs onnx, running an artifact does not."""
        if self._rules is None:
            from quantship.backends.openvino_rules import RULES

            self._rules = RULES
        return self._rules

    def available(self) -> str | None:
        try:
            import openvino  # noqa: F401
        except ImportError:
            return "OpenVINO is not installed"
        return None

    def version(self) -> str:
        return str(openvino_module().get_version())

    def capabilities(self) -> Capabilities:
        """The CPU plugin's float precisions on this CPU and its default: bf16 where the
        CPU has AVX-512 BF16 or AMX (OPTIMIZATION_CAPABILITIES), else f32."""
        if self._caps is None:
            core = openvino_module().Core()
            found = set(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
            precisions: list[Precision] = ["fp32"]
            if "BF16" in found:
                precisions.append("bf16")
            if "FP16" in found:
                precisions.append("fp16")
            hint = str(core.get_property("CPU", "INFERENCE_PRECISION_HINT"))
            default = precision_name(hint)
            self._caps = Capabilities(
                "CPU",
                tuple(precisions),
                default if default in precisions else "fp32",
                profile=True,
            )
        return self._caps

    def plan_variants(self) -> tuple[PlanVariant, ...]:
        """Choices the CPU plugin's kernels tell apart: which convolution kernel an INT8
        layer lands on depends on the activations' signedness, and whether SiLU stays a
        fused post-op depends on where its FakeQuantize sits."""
        from quantship.backends.op_rules import input_side_ops

        r = self.rules
        return (
            PlanVariant("symmetric", "int8 symmetric activations (NNCF's default)", self,
                        symmetric_inputs=ALL),
            PlanVariant("silu-int8", "SiLU's Mul in INT8 too", self, int8_nodes=ALL),
            PlanVariant("symmetric-silu-int8", "int8 symmetric activations and SiLU's Mul in "
                        "INT8", self, symmetric_inputs=ALL, int8_nodes=ALL),
            PlanVariant("concat-requantized", "quantization not moved above Concat",
                        type(self)(replace(r, hoist=r.hoist - {"Concat"}))),
            # Attention products in INT8 even where OpenVINO fuses the float block into
            # ScaledDotProductAttention (where it does not, the rule plan quantizes them
            # already: openvino_graph.fuses_attention), for the search to measure: the
            # fused kernel won on the PP-OCR-style recogniser, but that is one model.
            PlanVariant("attention-int8", "attention's score and context products in INT8",
                        type(self)(replace(r, ops={**r.ops, "MatMul": input_side_ops()["MatMul"]}))),
        )  # fmt: skip

    def plan(self, model: FloatModel, table: CalibrationTable, options: PlanOptions) -> QuantPlan:
        from quantship.backends.op_rules import input_side_ops
        from quantship.backends.openvino_graph import fuses_attention
        from quantship.backends.openvino_rules import OV_OPS
        from quantship.backends.planning import make_plan

        rules = self.rules
        if rules.ops.get("MatMul") is OV_OPS["MatMul"] and not fuses_attention(model):
            # Nothing to keep whole: the products run as plain MatMuls either way.
            rules = replace(rules, ops={**rules.ops, "MatMul": input_side_ops()["MatMul"]})
        return make_plan(model, table, options, rules)

    def compile(self, qdq: onnx.ModelProto, out_dir: Path, model: FloatModel) -> Artifact:
        from quantship.backends.op_rules import activations_note, kernels_note
        from quantship.backends.openvino_graph import convert_model

        ov = openvino_module()
        rel = f"{self.name}/model.int8.xml"
        xml = out_dir / rel
        xml.parent.mkdir(parents=True, exist_ok=True)
        ov_model = convert_model(qdq, model)
        ov.save_model(ov_model, str(xml), compress_to_fp16=False)
        del ov_model  # the IR on disk is what is checked and compiled from here on
        text = xml.read_text(encoding="utf-8")
        consts = Counter(re.findall(r'type="Const"[^>]*>\s*<data element_type="(\w+)"', text))
        overrides, why = static_shape_check(xml, model)
        compiled = ov.Core().compile_model(
            str(xml), "CPU", compile_config(SessionSettings(), overrides)
        )
        kernels = int8_layers(compiled)
        del compiled
        notes = [kernels_note(kernels, "OpenVINO's CPU plugin's fusion")] + ([why] if why else [])
        return Artifact(
            backend=self.name,
            format="openvino-ir",
            root=out_dir,
            files=(rel, f"{self.name}/model.int8.bin"),
            metadata={
                "runtime": f"openvino {self.version()}",
                "device": "CPU",
                "activations": activations_note(qdq) + ", on the inputs of integer ops",
                "weights": "int8 symmetric, per output channel",
                "constants_by_type": dict(sorted(consts.items())),
                "fake_quantize_ops": text.count('type="FakeQuantize"'),
                "integer_kernels": kernels,
                **({"runtime_config": overrides, "runtime_config_reason": why} if why else {}),
            },
            notes=tuple(notes),
        )

    def _float_precision(self, artifact: Artifact, settings: SessionSettings) -> Precision:
        """The precision float layers run in: asked for, else what the artifact needs
        (measured), else the plugin's default."""
        needed = artifact.metadata.get("float_precision")
        return settings.precision or needed or self.capabilities().default_precision

    def describe(self, artifact: Artifact, settings: SessionSettings) -> str:
        prec = self._float_precision(artifact, settings)
        if artifact.precision == "float":
            return f"{self.name} CPU {prec}"
        return f"{self.name} CPU int8 (float layers {prec})"

    def session(self, artifact: Artifact, settings: SessionSettings) -> OVSession:
        if artifact.format not in self.formats:
            raise BackendError(
                f"backend 'openvino' runs {', '.join(self.formats)} artifacts, not {artifact.format!r}"
            )
        prec = settings.precision or artifact.metadata.get("float_precision")
        if prec is not None and prec not in self.capabilities().float_precisions:
            raise BackendError(
                f"OpenVINO's CPU plugin cannot run {prec} on this CPU; it runs "
                f"{', '.join(self.capabilities().float_precisions)}"
            )
        settings = replace(settings, precision=prec)
        return OVSession(artifact.path, settings, artifact.metadata.get("runtime_config"))

    def qdq_session(
        self, qdq: onnx.ModelProto, model: FloatModel, settings: SessionSettings
    ) -> OVSession:
        """The QDQ model converted as ``compile`` converts it, compiled in memory."""
        from quantship.backends.openvino_graph import convert_model

        ov_model = convert_model(qdq, model)
        # Dynamic shapes: the guard runs batches of varying size, and a static batch
        # can meet OpenVINO 2026.4's snippets bug (see static_shape_check).
        return OVSession(ov_model, settings, static=False)
