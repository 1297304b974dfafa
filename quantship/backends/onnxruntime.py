"""ONNX Runtime (CPU execution provider): a QDQ ONNX model that ORT fuses into integer
kernels at load time.

Plan, in ORT's terms:

- Activations are asymmetric **uint8**, weights symmetric int8 per output channel
  (U8S8). Measured on this project's machines (AMD EPYC, AVX-512 VNNI), a ResNet-18-
  like model at 224×224 with 2 threads (benchmarks/vs_onnxruntime.py): U8S8 2.65 ms,
  S8S8 (ORT ``quantize_static``'s default) 7.51 ms, float 7.87 ms: with int8
  activations only 9 of 20 Convs became QLinearConv (``fused_kernels`` on ORT's own
  output). U8S8 is also what ORT's docs recommend for x86 CPUs.
- With uint8 and zero-point 0 on a ReLU's output range, ORT's ReluQuantFusion deletes
  the Relu, and Clip likewise, so Q goes after the activation.
- Ops with an integer kernel (QLinearConv, QGemm, QLinearMatMul / MatMulIntegerToFloat,
  QLinearAdd/Mul, QLinearGlobalAveragePool, QLinearAveragePool, QLinearConcat,
  QLinearSigmoid, QLinearLeakyRelu) are quantized; data-movement ops run on uint8 when
  their in and out params are equal (ORT drops the pair); everything else stays float.
- Gemm and MatMul keep a float output unless a consumer needs it quantized: ORT has
  integer kernels with float output for them, so logits are not requantized.
- A Conv whose output is a graph output (a detector's heads) is quantized on its
  output too, since ORT fuses QLinearConv only with a Q after it: on the
  YOLOv8n-sized detector 2% faster, 1 − cosine 5.4e-4 → 5.7e-4
  (``benchmarks/plan_choices.py``). The accuracy guard can return such a head to float.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from quantship.backends.base import (
    Artifact,
    BaseBackend,
    BaseSession,
    Capabilities,
    LayerTime,
    PlanOptions,
    QuantPlan,
    SessionSettings,
)
from quantship.backends.variants import ALL, PlanVariant
from quantship.errors import BackendError
from quantship.types import Feed

if TYPE_CHECKING:  # the export side; bench on a runtime-only install needs none of it
    import onnx

    from quantship.backends.planning import Rules
    from quantship.calibration.table import CalibrationTable
    from quantship.exporter.load import FloatModel

# What ORT's optimizer turns a quantized compute op into, to check that fusion happened.
INTEGER_KERNELS = {
    "Conv": ("QLinearConv",),
    "Gemm": ("QGemm",),
    "MatMul": ("QLinearMatMul", "MatMulIntegerToFloat", "MatMulInteger", "DynamicQuantizeMatMul"),
    "Add": ("QLinearAdd",),
    "Mul": ("QLinearMul",),
    "GlobalAveragePool": ("QLinearGlobalAveragePool",),
    "AveragePool": ("QLinearAveragePool",),
    "Concat": ("QLinearConcat",),
    "Sigmoid": ("QLinearSigmoid",),
    "LeakyRelu": ("QLinearLeakyRelu",),
}


def _ort() -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendError(
            "backend 'onnxruntime' needs ONNX Runtime: pip install onnxruntime"
        ) from None
    return ort


def session_options(settings: SessionSettings, optimized_path: str | None = None) -> Any:
    ort = _ort()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if settings.threads:
        so.intra_op_num_threads = settings.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Worker threads spin between runs, as ONNX Runtime's defaults have them: turning
    # spinning off made float MobileNetV2 15 % slower, alone on 2 AMD EPYC cores (p50
    # 4.73 vs 4.09 ms): a baseline slower than the user's. The spinning goes on for
    # about 46 ms after a run; the timing harness waits it out between candidates.
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    return so


def fused_kernels(model_path: Path, threads: int | None = None) -> dict[str, Any]:
    """Load the model in ORT and read back the optimized graph: how many of each compute
    op became an integer kernel. This is what decides whether INT8 is faster."""
    import onnx

    ort = _ort()
    with tempfile.TemporaryDirectory() as tmp:
        opt = str(Path(tmp) / "optimized.onnx")
        so = session_options(SessionSettings(threads=threads), opt)
        # The layout transform writes NCHWc-specific ops; harmless for counting.
        ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
        optimized = onnx.load(opt, load_external_data=False)
    before = Counter(
        n.op_type for n in onnx.load(str(model_path), load_external_data=False).graph.node
    )
    after = Counter(n.op_type for n in optimized.graph.node)
    report: dict[str, Any] = {}
    for op, kernels in INTEGER_KERNELS.items():
        total = before.get(op, 0)
        if not total:
            continue
        fused = sum(after.get(k, 0) for k in kernels)
        report[op] = {"total": total, "integer": min(fused, total)}
    report["remaining_float_ops"] = {
        op: c
        for op, c in sorted(after.items())
        if op in ("Conv", "Gemm", "MatMul", "FusedConv", "FusedMatMul", "FusedGemm")
    }
    report["quantize_dequantize_ops"] = after.get("QuantizeLinear", 0) + after.get(
        "DequantizeLinear", 0
    )
    return report


# Kernels that compute in integers (their inputs are 8-bit, accumulation 32-bit).
_INTEGER_OPS = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
                "MatMulIntegerToFloat", "QGemm", "DynamicQuantizeMatMul", "QAttention",
                "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu",
                "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearConcat",
                "QLinearSoftmax", "QLinearWhere", "MaxPool_int8"}  # fmt: skip


def _node_times(events: list[dict[str, Any]], runs: int) -> list[LayerTime]:
    """Per-node mean times from ORT's profile (its ``Node`` events, one per node and
    run, ``<node>_kernel_time``); the first ``run`` of the warm-up is not in ``runs``."""
    per_node: dict[str, list[float]] = {}
    args: dict[str, dict[str, Any]] = {}
    for e in events:
        name = str(e.get("name", ""))
        if e.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        node = name[: -len("_kernel_time")]
        per_node.setdefault(node, []).append(float(e.get("dur", 0)) / 1e3)
        args[node] = dict(e.get("args") or {})
    out = []
    for node, ms in per_node.items():
        a = args[node]
        op = str(a.get("op_name", ""))
        kept = ms[-runs:]  # the warm-up run's events come first
        out.append(
            LayerTime(
                name=node,
                op_type=op,
                kernel=f"{op} ({str(a.get('provider', '')).replace('ExecutionProvider', '')})",
                precision="int8" if op in _INTEGER_OPS else _data_type(_output_type(a)),
                ms=sum(kept) / len(kept),
            )
        )
    return out


def _data_type(t: str) -> str:
    """A non-integer kernel's output type; 8-bit data it only moves (Transpose, MaxPool,
    QuantizeLinear's output) is named as data, so it does not count as integer compute."""
    return f"{t} data" if t in ("int8", "uint8") else t


def _output_type(args: Mapping[str, Any]) -> str:
    """The element type of a node's first output, as ORT's profile records it."""
    shapes = args.get("output_type_shape") or []
    if shapes and isinstance(shapes[0], dict) and shapes[0]:
        return str(next(iter(shapes[0])))
    return ""


class OrtSession(BaseSession):
    """An ONNX Runtime CPU session on a model file, or on a model in memory (its
    external tensors read from ``weights_dir``)."""

    def __init__(
        self,
        source: Path | onnx.ModelProto,
        settings: SessionSettings,
        weights_dir: Path | None = None,
    ) -> None:
        self.name = source.name if isinstance(source, Path) else "the QDQ model"
        # What profile() reloads: the path, or the caller's proto (not its serialized
        # bytes, which would double a large model in memory for the session's life).
        self._load = (source, settings, weights_dir)
        self._s: Any = self._open(session_options(settings))
        self.output_names = [o.name for o in self._s.get_outputs()]

    def _open(self, so: Any) -> Any:
        source, _, weights_dir = self._load
        if weights_dir is not None:
            so.add_session_config_entry(
                "session.model_external_initializers_file_folder_path", str(weights_dir)
            )
        src = str(source) if isinstance(source, Path) else source.SerializeToString()
        try:
            return _ort().InferenceSession(src, so, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise BackendError(
                f"ONNX Runtime cannot load {self.name}: {str(e).splitlines()[0]}"
            ) from None

    def run(self, feeds: Feed) -> list[npt.NDArray[Any]]:
        if self._s is None:
            raise BackendError(f"the ONNX Runtime session on {self.name} is closed")
        try:
            outs = self._s.run(self.output_names, feeds)
        except Exception as e:
            shapes = ", ".join(f"{k} {'x'.join(map(str, v.shape))}" for k, v in feeds.items())
            raise BackendError(
                f"ONNX Runtime failed to run {self.name} on inputs {shapes}: "
                f"{str(e).splitlines()[0]}"
            ) from None
        return [np.asarray(o) for o in outs]

    def close(self) -> None:
        self._s = None

    def profile(self, feeds: Feed, runs: int) -> list[LayerTime]:
        """ONNX Runtime's own profiler over ``runs`` runs, from a second session on the
        same model with the same options and profiling on: each node's kernel (the op
        the optimized graph runs it as: ``QLinearConv``, ``QGemm``, ``Conv`` (its NCHWc and
        fused forms included)…,
        and the provider), its precision (integer for quantized kernels, else the
        output's element type) and its mean time."""
        with tempfile.TemporaryDirectory() as tmp:
            so = session_options(self._load[1])
            so.enable_profiling = True
            so.profile_file_prefix = str(Path(tmp) / "profile")
            s = self._open(so)
            runs = max(runs, 1)
            try:
                for _ in range(runs + 1):  # the first is a warm-up, left out below
                    s.run(self.output_names, feeds)
            except Exception as e:
                raise BackendError(
                    f"ONNX Runtime failed to profile {self.name}: {str(e).splitlines()[0]}"
                ) from None
            events = json.loads(Path(s.end_profiling()).read_text())
        return _node_times(events, runs)


class OnnxRuntimeBackend(BaseBackend):
    name = "onnxruntime"
    extra = "onnxruntime"
    formats: tuple[str, ...] = ("onnx", "onnx-qdq")

    def __init__(self, rules: Rules | None = None) -> None:
        self._rules = rules

    @property
    def rules(self) -> Rules:
        """The plan rules (``onnxruntime_rules.RULES`` unless given), imported on first
        use: planning needs onnx, running an artifact does not."""
        if self._rules is None:
            from quantship.backends.onnxruntime_rules import RULES

            self._rules = RULES
        return self._rules

    def available(self) -> str | None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "ONNX Runtime is not installed: pip install onnxruntime"
        return None

    def version(self) -> str:
        return str(_ort().__version__)

    def capabilities(self) -> Capabilities:
        # The CPU execution provider computes float models in float32 (its bf16/fp16
        # kernels cover a few ops only; it has no bf16 mode for a float32 model).
        return Capabilities("CPU", ("fp32",), "fp32", profile=True)

    def plan_variants(self) -> tuple[PlanVariant, ...]:
        """Choices ONNX Runtime's kernels tell apart: U8S8 vs S8S8 integer kernels, SiLU
        as QLinearSigmoid+QLinearMul or float, a quantized head's last requantization,
        attention's activation-by-activation products in INT8 or float."""
        from quantship.backends.op_rules import input_side_ops

        r = self.rules
        return (
            PlanVariant("s8s8", "int8 symmetric activations (S8S8 kernels)", self,
                        symmetric_inputs=ALL),
            PlanVariant("silu-float", "Sigmoid and Mul left float", self,
                        float_ops=frozenset({"Sigmoid", "Mul"})),
            PlanVariant("outputs-float", "graph outputs left float (no Q after the heads)",
                        type(self)(replace(r, quantize_graph_outputs=False))),
            # The rules leave attention's products float (onnxruntime_rules.
            # not_attention_product_ort); at long sequences or other CPUs the integer product
            # may pay for quantizing its inputs: measured on the target.
            PlanVariant("attention-int8", "attention's score and context products in INT8",
                        type(self)(replace(r, ops={**r.ops, "MatMul": input_side_ops()["MatMul"]}))),
        )  # fmt: skip

    def plan(self, model: FloatModel, table: CalibrationTable, options: PlanOptions) -> QuantPlan:
        from quantship.backends.planning import make_plan

        return make_plan(model, table, options, self.rules)

    def compile(self, qdq: onnx.ModelProto, out_dir: Path, model: FloatModel) -> Artifact:
        from quantship.backends.op_rules import activations_note, kernels_note
        from quantship.exporter.onnx_file import save_model

        rel = f"{self.name}/model.int8.onnx"
        path = out_dir / rel
        data = save_model(qdq, path, model.weights_dir)
        files = [rel] + ([f"{self.name}/{data.name}"] if data is not None else [])
        kernels = fused_kernels(path)
        return Artifact(
            backend=self.name,
            format="onnx-qdq",
            root=out_dir,
            files=tuple(files),
            metadata={
                "runtime": f"onnxruntime {self.version()}",
                "device": "CPU",
                "activations": activations_note(qdq),
                "weights": "int8 symmetric, per output channel",
                "integer_kernels": kernels,
            },
            notes=(kernels_note(kernels, "ONNX Runtime's fusion"),),
        )

    def describe(self, artifact: Artifact, settings: SessionSettings) -> str:
        if artifact.precision == "float":
            return f"{self.name} CPU fp32"
        return f"{self.name} CPU int8"

    def session(self, artifact: Artifact, settings: SessionSettings) -> OrtSession:
        if artifact.format not in self.formats:
            raise BackendError(
                f"backend 'onnxruntime' runs {', '.join(self.formats)} artifacts, not {artifact.format!r}"
            )
        if artifact.precision == "float" and settings.precision not in (None, "fp32"):
            raise BackendError(
                f"ONNX Runtime's CPU provider runs float models in fp32, not {settings.precision}"
            )
        return OrtSession(artifact.path, settings)

    def qdq_session(
        self, qdq: onnx.ModelProto, model: FloatModel, settings: SessionSettings
    ) -> OrtSession:
        return OrtSession(qdq, settings, model.weights_dir)
