"""TensorRT: the validator catches each rule a model breaks, by node; quantship's plan
passes it; the QDQ numbers hold in ONNX Runtime. Engine tests need TensorRT and an
NVIDIA GPU and skip with the reason otherwise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from models import images, run_ort, save, tiny_cnn
from onnx import TensorProto, helper, numpy_helper

from quantship import api
from quantship.backends.tensorrt_check import check_tensorrt
from quantship.backends.tensorrt_engine import engine_unavailable


def qdq_conv(
    *,
    zp: int = 0,
    zp_type: int = TensorProto.INT8,
    w_axis: int = 0,
    act_per_channel: bool = False,
    shared_dq: bool = False,
    q_to_relu: bool = False,
    opset: int = 13,
    quantize_weight: bool = True,
    scale_input: bool = False,
) -> onnx.ModelProto:
    """x → Q → DQ → Conv(W) [→ second Conv sharing the DQ]; each flag breaks one rule."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    inits = [
        numpy_helper.from_array(
            np.asarray(0.02 if not act_per_channel else [0.02] * 3, np.float32), "x_s"
        ),
        helper.make_tensor(
            "x_z", zp_type, [3] if act_per_channel else [], [zp] * (3 if act_per_channel else 1)
        ),
        numpy_helper.from_array(np.clip(np.rint(w / 0.01), -127, 127).astype(np.int8), "w_q"),
        numpy_helper.from_array(np.full(4 if w_axis == 0 else 3, 0.01, np.float32), "w_s"),
        numpy_helper.from_array(np.zeros(4 if w_axis == 0 else 3, np.int8), "w_z"),
        numpy_helper.from_array(w, "w_f"),
    ]

    def qdq(op: str, ins: list[str], out: str, name: str) -> onnx.NodeProto:
        node = helper.make_node(op, ins, [out], name=name)
        if act_per_channel:
            node.attribute.append(helper.make_attribute("axis", 1))
        return node

    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])]
    scale_name = "x_s"
    if scale_input:
        inputs.append(helper.make_tensor_value_info("s_in", TensorProto.FLOAT, []))
        scale_name = "s_in"
    nodes = [
        qdq("QuantizeLinear", ["x", scale_name, "x_z"], "xq", "q_x"),
    ]
    if q_to_relu:
        nodes.append(helper.make_node("Relu", ["xq"], ["bad"], name="relu_on_int"))
    nodes.append(qdq("DequantizeLinear", ["xq", scale_name, "x_z"], "xd", "dq_x"))
    if quantize_weight:
        nodes.append(
            helper.make_node(
                "DequantizeLinear", ["w_q", "w_s", "w_z"], ["wd"], name="dq_w", axis=w_axis
            )
        )
        w_in = "wd"
    else:
        w_in = "w_f"
    nodes.append(helper.make_node("Conv", ["xd", w_in], ["y"], name="conv", pads=[1, 1, 1, 1]))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if shared_dq:
        nodes.append(
            helper.make_node("Conv", ["xd", "w_f"], ["y2"], name="conv2", pads=[1, 1, 1, 1])
        )
        outputs.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, None))
    if q_to_relu:
        outputs.append(helper.make_tensor_value_info("bad", zp_type, None))
    g = helper.make_graph(nodes, "qdq", inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _rules(m: onnx.ModelProto) -> set[tuple[str, str]]:
    return {(f.rule, f.node) for f in check_tensorrt(m)}


def test_a_good_model_passes() -> None:
    assert check_tensorrt(qdq_conv()) == []


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"zp": 3}, {("zero-point", "q_x"), ("zero-point", "dq_x")}),
        (
            {"zp": 128, "zp_type": TensorProto.UINT8},
            {("int8", "q_x"), ("zero-point", "q_x"), ("int8", "dq_x")},
        ),
        ({"w_axis": 1}, {("per-channel", "dq_w")}),
        ({"act_per_channel": True}, {("per-channel", "q_x"), ("per-channel", "dq_x")}),
        ({"shared_dq": True}, {("shared-dq", "dq_x"), ("weight-unquantized", "conv2")}),
        ({"q_to_relu": True}, {("pairing", "q_x")}),
        ({"opset": 12}, {("opset", "model")}),
        ({"quantize_weight": False}, {("weight-unquantized", "conv")}),
        ({"scale_input": True}, {("constant-params", "q_x"), ("constant-params", "dq_x")}),
    ],
)
def test_each_rule_is_named_by_node(
    kwargs: dict[str, object], expected: set[tuple[str, str]]
) -> None:
    got = _rules(qdq_conv(**kwargs))  # type: ignore[arg-type]
    assert expected <= got, got


def test_onnxruntime_style_model_is_rejected_and_ours_passes(
    tmp_path: Path, cnn_path: Path, calib_npz: Path
) -> None:
    api.export(cnn_path, calib_npz, tmp_path / "o", backends="onnxruntime,tensorrt", bench=False)
    ort_model = onnx.load(str(tmp_path / "o/onnxruntime/model.int8.onnx"))
    rules = {f.rule for f in check_tensorrt(ort_model) if f.severity == "error"}
    assert {"zero-point", "int8"} <= rules  # the asymmetric uint8 other tools write
    trt_model = onnx.load(str(tmp_path / "o/tensorrt/model.qdq.onnx"))
    assert check_tensorrt(trt_model) == []
    zps = [numpy_helper.to_array(t) for t in trt_model.graph.initializer if "zero" in t.name]
    assert zps and all(z.dtype == np.int8 and not z.any() for z in zps)


def test_qdq_model_numbers_hold_in_onnxruntime(tmp_path: Path) -> None:
    model = save(tiny_cnn(), tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", images=images(48))
    res = api.export(model, tmp_path / "c.npz", tmp_path / "o", backends="tensorrt", bench=False)
    (entry,) = res.manifest["artifacts"]
    assert entry["fidelity"]["cosine"] > 0.99
    if engine_unavailable() is not None:
        assert entry["metadata"]["engine"]["built"] is False
        assert "build-engine" in entry["metadata"]["engine"]["how"]
    x = {"images": images(4, seed=9)}
    ref, got = run_ort(model, x)[0], run_ort(tmp_path / "o/tensorrt/model.qdq.onnx", x)[0]
    assert float((ref * got).sum() / np.linalg.norm(ref) / np.linalg.norm(got)) > 0.99


def test_check_command(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    onnx.save_model(qdq_conv(zp=5), str(bad))
    good = tmp_path / "good.onnx"
    onnx.save_model(qdq_conv(), str(good))
    p = subprocess.run(
        [sys.executable, "-m", "quantship", "check", "tensorrt", str(bad)],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 1 and "[zero-point] q_x" in p.stdout
    p = subprocess.run(
        [sys.executable, "-m", "quantship", "check", "tensorrt", str(good)],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0 and "0 error(s)" in p.stdout


def test_build_engine_without_tensorrt_is_one_clear_line(
    tmp_path: Path, cnn_path: Path, calib_npz: Path
) -> None:
    if engine_unavailable() is None:
        pytest.skip("TensorRT and a GPU are present; the engine path is tested below")
    api.export(cnn_path, calib_npz, tmp_path / "o", backends="tensorrt", bench=False)
    before = (tmp_path / "o/manifest.json").read_text()
    p = subprocess.run(
        [sys.executable, "-m", "quantship", "build-engine", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "cannot build a tensorrt engine here" in p.stderr
    assert (tmp_path / "o/manifest.json").read_text() == before


@pytest.mark.gpu
def test_engine_builds_runs_and_agrees(tmp_path: Path, cnn_path: Path, calib_npz: Path) -> None:
    reason = engine_unavailable()
    if reason is not None:
        pytest.skip(f"needs TensorRT and an NVIDIA GPU: {reason}")
    from quantship.backends.base import SessionSettings
    from quantship.backends.tensorrt_engine import TensorRTSession

    res = api.export(cnn_path, calib_npz, tmp_path / "o", backends="tensorrt", bench=False)
    engine = res.manifest["artifacts"][0]["metadata"]["engine"]
    assert engine["built"] and (tmp_path / "o" / engine["path"]).exists()
    meta = json.loads((tmp_path / "o/tensorrt/model.json").read_text())
    assert meta["tensorrt"] and meta["gpu"]
    assert meta["float_layers"] in ("fp16", "fp32")  # the GPU's fastest float
    s = TensorRTSession(tmp_path / "o" / engine["path"], SessionSettings())
    x = {"images": images(4, seed=2)}
    got, ref = s.run(x)[0], run_ort(cnn_path, x)[0]
    assert float((got * ref).sum() / np.linalg.norm(got) / np.linalg.norm(ref)) > 0.99
    times = s.device_latency_ms(x, warmup=5, iterations=20)
    assert len(times) == 20 and min(times) > 0
    layers = s.profile(x, 5)  # the engine's own layer timings and tactics
    assert layers and sum(x.ms for x in layers) > 0 and any(x.kernel for x in layers)


def test_require_engine_fails_up_front_without_tensorrt(
    tmp_path: Path, cnn_path: Path, calib_npz: Path
) -> None:
    if engine_unavailable() is None:
        pytest.skip("TensorRT and a GPU are present")
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "quantship",
            "export",
            str(cnn_path),
            "--calib",
            str(calib_npz),
            "--out",
            str(tmp_path / "o"),
            "--backend",
            "tensorrt",
            "--require-engine",
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "--require-engine: a tensorrt engine cannot be built here" in p.stderr
    assert not (tmp_path / "o").exists()


def test_engine_profile_bounds_every_dynamic_dimension() -> None:
    """TensorRT needs a profile for any input with a dynamic dimension: a dynamic batch
    spans 1 … max_batch; a fixed batch stays fixed; a sequence length is bounded at the
    calibration sample's size."""
    from quantship.backends.tensorrt_shapes import profile_shapes

    seq = {"name": "ids", "shape": [None, None], "profile": [None, 16]}
    assert profile_shapes(seq, 8) == ([1, 16], [1, 16], [8, 16])
    fixed_batch = {"name": "x", "shape": [1, None, 32], "profile": [1, 16, 32]}
    assert profile_shapes(fixed_batch, 8) == ([1, 16, 32], [1, 16, 32], [1, 16, 32])
    assert profile_shapes({"name": "x", "shape": [2, 3]}, 8) is None


def test_engine_profile_reads_layer_times_and_the_inspector() -> None:
    """Stub test (no hardware claim: TensorRT and a GPU are not here): a stand-in for
    TensorRT's documented profiler protocol (``IProfiler.report_layer_time`` once per
    layer and run, the engine inspector's JSON) checks how quantship averages the runs,
    drops the warm-up and reads each layer's tactic and output type."""
    import json
    import types

    from quantship.backends.tensorrt_profile import engine_profile

    class IProfiler:
        def __init__(self) -> None:
            pass

    layers = [("conv1 + relu1", 0.2), ("fc", 0.05)]

    class Context:
        profiler: object = None

    class Inspector:
        execution_context: object = None

        def get_engine_information(self, fmt: object) -> str:
            return json.dumps(
                {
                    "Layers": [
                        {"Name": "conv1 + relu1", "LayerType": "CaskConvolution",
                         "TacticName": "sm80_xmma_fprop_implicit_gemm_interleaved_i8i8",
                         "Outputs": [{"Format/Datatype": "Channel major INT8 format where channel % 32 == 0"}]},
                        {"Name": "fc", "LayerType": "CaskGemm", "TacticName": "gemm_f16",
                         "Outputs": [{"Format/Datatype": "Row major linear FP16 format"}]},
                    ]
                }
            )  # fmt: skip

    class Engine:
        def create_engine_inspector(self) -> Inspector:
            return Inspector()

    class Session:
        trt = types.SimpleNamespace(
            IProfiler=IProfiler, LayerInformationFormat=types.SimpleNamespace(JSON=1)
        )
        context = Context()
        engine = Engine()
        runs = 0

        def run(self, feeds: object) -> None:
            self.runs += 1
            p = self.context.profiler
            for name, ms in layers:
                if p is not None:
                    p.report_layer_time(name, ms * self.runs)  # type: ignore[attr-defined]

    s = Session()
    got = engine_profile(s, {}, runs=2)
    assert s.runs == 3 and s.context.profiler is None  # warm-up + 2; profiler removed
    assert [x.name for x in got] == ["conv1 + relu1", "fc"]
    assert got[0].ms == pytest.approx((0.2 * 2 + 0.2 * 3) / 2)  # runs 2 and 3, not 1
    assert (got[0].op_type, got[0].precision) == ("CaskConvolution", "int8")
    assert got[1].kernel == "gemm_f16" and got[1].precision == "fp16"
    from quantship.backends.tensorrt_profile import data_type

    # the short form the inspector writes without an execution context
    assert [data_type(f) for f in ("Int8 NC/32HW32", "Half", "Float", "")] == [
        "int8",
        "fp16",
        "fp32",
        "",
    ]


def test_engine_profiles_span_the_calibrated_lengths_or_the_given_shapes() -> None:
    """Pure functions: no TensorRT needed. A sequence axis spans the calibration data's
    sizes, widened to the example's; --shapes replaces them, checked."""
    from quantship.backends.tensorrt_shapes import engine_profiles, profile_shapes
    from quantship.errors import BackendError

    ids = {"name": "ids", "shape": [None, None], "profile": [None, 64], "min": [None, 8],
           "max": [None, 40]}  # fmt: skip
    assert profile_shapes(ids, 4) == ([1, 8], [1, 64], [4, 64])  # the example lies above
    static = {"name": "x", "shape": [1, 3], "profile": [1, 3]}
    assert profile_shapes(static, 4) is None
    fixed = {"name": "mask", "shape": [None, 16], "profile": [None, 16]}
    inputs = [ids, fixed]
    assert engine_profiles(inputs, 2, None) == {
        "ids": ([1, 8], [1, 64], [2, 64]), "mask": ([1, 16], [1, 16], [2, 16])
    }  # fmt: skip
    given = {"ids": ([1, 16], [1, 128], [8, 384]), "mask": ([1, 16], [1, 16], [8, 16])}
    assert engine_profiles(inputs, 2, given) == given
    with pytest.raises(BackendError, match="fixed at 16"):
        engine_profiles(inputs, 2, {**given, "mask": ([1, 8], [1, 16], [8, 16])})
    with pytest.raises(BackendError, match="but not for mask"):
        engine_profiles(inputs, 2, {"ids": given["ids"]})
    with pytest.raises(BackendError, match="min <= opt <= max"):
        engine_profiles(inputs, 2, {**given, "ids": ([1, 64], [1, 16], [1, 384])})
