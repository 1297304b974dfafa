"""TensorRT: an explicit-quantization QDQ ONNX model that TensorRT accepts, and the
engine built from it where TensorRT and an NVIDIA GPU exist.

TensorRT's implicit INT8 calibrators are deprecated since 10.1; explicit quantization
(Q/DQ in the graph) is the supported path. The rules (checked by ``tensorrt_check``,
cited there) shape the plan:

- activations symmetric int8, zero point 0, per tensor; weights int8 per output channel;
- Q/DQ on the inputs of weighted ops (Conv, MatMul, Gemm) and of residual Adds and
  average pooling ("Q/DQ Layer-Placement Recommendations": quantize all inputs of
  weighted operations; quantize the residual input so the Add fuses into the Conv);
  outputs are not quantized: TensorRT fuses Relu and the next layer's Q itself;
- one DequantizeLinear per consumer (a shared DQ is not fused into every consumer);
- biases stay float: TensorRT quantizes them inside the fused kernel.

``compile`` always writes ``tensorrt/model.qdq.onnx`` and validates it; the engine is
built there and then (``tensorrt_engine``) when TensorRT and a GPU are present, else later on the target
machine with ``quantship build-engine OUT``. Without an engine, the QDQ model runs in
ONNX Runtime on the CPU (symmetric INT8), which is how its numbers are checked.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import onnx

from quantship.backends.base import (
    Artifact,
    BaseBackend,
    BaseSession,
    Capabilities,
    Finding,
    PlanOptions,
    QuantPlan,
    SessionSettings,
    ShapeRanges,
)
from quantship.backends.op_rules import activations_note, input_side_ops
from quantship.backends.planning import OpRule, Rules, make_plan
from quantship.backends.tensorrt_check import check_tensorrt
from quantship.backends.tensorrt_engine import (
    FloatEngineSession,
    TensorRTSession,
    build_engine,
    engine_unavailable,
    fastest_float_layers,
)
from quantship.backends.tensorrt_shapes import engine_inputs, engine_profiles
from quantship.calibration.table import CalibrationTable
from quantship.errors import BackendError
from quantship.exporter.load import FloatModel
from quantship.exporter.onnx_file import save_model
from quantship.types import Precision

TRT_OPS: dict[str, OpRule] = {
    **input_side_ops(),
    # ConvTranspose weights are (in, out/groups, k, k): the output channel is axis 1.
    "ConvTranspose": OpRule("compute", weight=1, weight_axis=1, quantize_output=False),
}
RULES = Rules(
    backend="tensorrt",
    ops=TRT_OPS,
    act_dtype="int8",
    symmetric=True,
    absorb=frozenset(),
    dedicated_dq=True,
)


class TensorRTBackend(BaseBackend):
    name = "tensorrt"
    extra = "tensorrt"
    formats: tuple[str, ...] = ("onnx", "onnx-qdq")

    def __init__(self, rules: Rules = RULES) -> None:
        self.rules = rules

    def available(self) -> str | None:
        return None  # the QDQ model is written and validated anywhere; the engine is optional

    def version(self) -> str:
        try:
            import tensorrt as trt
        except ImportError:
            return "not installed"
        return str(trt.__version__)

    def capabilities(self) -> Capabilities:
        here = engine_unavailable() is None
        # Without an engine nothing runs on the GPU here: no float baseline, and the QDQ
        # model's figures are ONNX Runtime's on the CPU (and say so).
        return Capabilities(
            "GPU",
            ("fp32", "fp16") if here else (),
            "fp32",
            runs_here=here,
            device_timing=here,
            profile=True,  # the engine's layer timings; without one, ONNX Runtime's profile
            engine=True,
            validator=True,
        )

    def engine_unavailable(self) -> str | None:
        return engine_unavailable()

    def validate(self, qdq: onnx.ModelProto) -> list[Finding]:
        return check_tensorrt(qdq)

    @property
    def _files(self) -> tuple[str, str]:
        """The QDQ model and the engine, in the backend's folder of an export."""
        return f"{self.name}/model.qdq.onnx", f"{self.name}/model.engine"

    def build(
        self,
        artifact: Artifact,
        max_batch: int,
        float_layers: Precision | None = None,
        shapes: ShapeRanges | None = None,
    ) -> Artifact:
        _, engine_file = self._files
        inputs = artifact.metadata["inputs"]
        engine_profiles(inputs, max_batch, shapes)  # a wrong --shapes fails before any work
        info = build_engine(
            artifact.path, artifact.root / engine_file, inputs, max_batch=max_batch,
            float_layers=float_layers or fastest_float_layers(), shapes=shapes,
        )  # fmt: skip
        engine_files = (engine_file, str(Path(engine_file).with_suffix(".json")))
        files = tuple(f for f in artifact.files if f not in engine_files) + engine_files
        meta = {**artifact.metadata, "engine": {"built": True, "path": engine_file, **info}}
        note = f"engine built for {info['gpu']} with TensorRT {info['tensorrt']}"
        kept = tuple(n for n in artifact.notes if not n.startswith("engine not built here"))
        return replace(artifact, files=files, metadata=meta, notes=(*kept, note))

    def plan(self, model: FloatModel, table: CalibrationTable, options: PlanOptions) -> QuantPlan:
        return make_plan(model, table, options, self.rules)

    def compile(self, qdq: onnx.ModelProto, out_dir: Path, model: FloatModel) -> Artifact:
        errors = [f for f in check_tensorrt(qdq) if f.severity == "error"]
        if errors:
            raise BackendError(
                f"the TensorRT plan broke a TensorRT rule (a quantship bug): {errors[0]}"
            )
        qdq_file, engine_file = self._files
        path = out_dir / qdq_file
        data = save_model(qdq, path, model.weights_dir)
        inputs = engine_inputs(model)
        files = [qdq_file] + ([f"{self.name}/{data.name}"] if data is not None else [])
        reason = engine_unavailable()
        engine: dict[str, Any]
        if reason is None:
            info = build_engine(
                path, out_dir / engine_file, inputs, float_layers=fastest_float_layers()
            )
            engine = {"built": True, "path": engine_file, **info}
            files += [engine_file, str(Path(engine_file).with_suffix(".json"))]
        else:
            engine = {
                "built": False,
                "reason": reason,
                "how": "on the target machine: quantship build-engine <this folder>",
            }
        return Artifact(
            backend=self.name,
            format="onnx-qdq",
            root=out_dir,
            files=tuple(files),
            metadata={
                "activations": activations_note(qdq),
                "weights": "int8 symmetric, per output channel",
                "validator": "passes every TensorRT explicit-quantization rule",
                "inputs": inputs,
                "engine": engine,
            },
            notes=(
                ()
                if engine["built"]
                else (f"engine not built here ({engine['reason']}); {engine['how']}",)
            ),
        )

    def _engine(self, artifact: Artifact) -> Path | None:
        engine = artifact.metadata.get("engine", {})
        if engine.get("built") and engine_unavailable() is None:
            return artifact.root / str(engine["path"])
        return None

    def describe(self, artifact: Artifact, settings: SessionSettings) -> str:
        if artifact.precision == "float":
            return f"{self.name} GPU {settings.precision or 'fp32'} engine"
        if self._engine(artifact) is not None:
            layers = artifact.metadata.get("engine", {}).get("float_layers", "fp32")
            return f"{self.name} GPU int8 engine (float layers {layers})"
        return f"{self.name} QDQ on onnxruntime CPU (no engine)"

    def session(self, artifact: Artifact, settings: SessionSettings) -> BaseSession:
        if artifact.precision == "float":
            reason = engine_unavailable()
            if reason is not None:
                raise BackendError(f"cannot run the float model in TensorRT here: {reason}")
            return FloatEngineSession(artifact.path, settings.precision or "fp32", settings)
        engine = self._engine(artifact)
        if engine is not None:
            return TensorRTSession(engine, settings)
        # No engine here: the same QDQ model, symmetric INT8, in ONNX Runtime on the CPU
        # (``describe`` names it so).
        from quantship.backends.onnxruntime import OrtSession

        return OrtSession(artifact.path, settings)

    def qdq_session(
        self, qdq: onnx.ModelProto, model: FloatModel, settings: SessionSettings
    ) -> BaseSession:
        if engine_unavailable() is None:
            return super().qdq_session(qdq, model, settings)  # type: ignore[return-value]
        from quantship.backends.onnxruntime import OrtSession

        return OrtSession(qdq, settings, model.weights_dir)
