"""The ONNX Runtime plan: where QDQ goes, what is stored as integers, and that ORT
actually fuses it into integer kernels."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from models import images, run_ort, save, tiny_cnn, wide_mlp
from onnx import numpy_helper

from quantship.backends.base import PlanOptions
from quantship.backends.onnxruntime import OnnxRuntimeBackend, fused_kernels
from quantship.calibration.methods import MethodSpec
from quantship.calibration.runner import calibrate
from quantship.calibration.sources import open_data
from quantship.exporter.load import FloatModel, load_model
from quantship.exporter.qdq import write_qdq


def _prepare(
    tmp_path: Path, model: onnx.ModelProto, shape: tuple[int, ...], data: np.ndarray
) -> tuple[FloatModel, object]:
    path = save(model, tmp_path / "m.onnx")
    name = model.graph.input[0].name
    fm = load_model(path, data_shapes={name: shape})
    np.savez(tmp_path / "d.npz", **{name: data})  # type: ignore[arg-type]
    table = calibrate(fm, open_data(tmp_path / "d.npz", fm.inputs))
    return fm, table


@pytest.fixture
def cnn_qdq(tmp_path: Path) -> tuple[FloatModel, onnx.ModelProto, Path]:
    fm, table = _prepare(tmp_path, tiny_cnn(), (1, 3, 16, 16), images(32))
    plan = OnnxRuntimeBackend().plan(fm, table, PlanOptions())  # type: ignore[arg-type]
    qdq = write_qdq(fm, plan)
    path = tmp_path / "q.onnx"
    onnx.save_model(qdq, str(path))
    return fm, qdq, path


def _inits(m: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


def _producer(m: onnx.ModelProto, tensor: str) -> onnx.NodeProto | None:
    return next((n for n in m.graph.node if tensor in n.output), None)


def test_every_compute_op_becomes_an_integer_kernel(
    cnn_qdq: tuple[FloatModel, onnx.ModelProto, Path],
) -> None:
    _, _, path = cnn_qdq
    report = fused_kernels(path)
    assert report["Conv"] == {"total": 3, "integer": 3}
    assert report["Gemm"] == {"total": 1, "integer": 1}
    assert report["Add"] == {"total": 1, "integer": 1}
    assert report["remaining_float_ops"] == {}


def test_weights_are_int8_per_channel_and_biases_int32(
    cnn_qdq: tuple[FloatModel, onnx.ModelProto, Path],
) -> None:
    _, qdq, _ = cnn_qdq
    inits = _inits(qdq)
    convs = [n for n in qdq.graph.node if n.op_type == "Conv"]
    for conv in convs:
        w_dq = _producer(qdq, conv.input[1])
        b_dq = _producer(qdq, conv.input[2])
        assert w_dq is not None and w_dq.op_type == "DequantizeLinear"
        assert b_dq is not None and b_dq.op_type == "DequantizeLinear"
        w_q, w_s, w_z = (inits[i] for i in w_dq.input)
        assert w_q.dtype == np.int8 and w_z.dtype == np.int8 and not w_z.any()
        assert w_s.shape == (w_q.shape[0],)  # one scale per output channel
        assert {a.name: a.i for a in w_dq.attribute} == {"axis": 0}
        assert np.abs(w_q).max() == 127  # symmetric, full range
        b_q, b_s, _ = (inits[i] for i in b_dq.input)
        assert b_q.dtype == np.int32
        x_dq = _producer(qdq, conv.input[0])
        assert x_dq is not None and x_dq.op_type == "DequantizeLinear"
        x_s = inits[x_dq.input[1]]
        np.testing.assert_allclose(b_s, x_s * w_s, rtol=1e-6)
    assert not any(
        t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 4 for t in qdq.graph.initializer
    )


def test_q_goes_after_relu_with_zero_point_zero(
    cnn_qdq: tuple[FloatModel, onnx.ModelProto, Path],
) -> None:
    _, qdq, _ = cnn_qdq
    inits = _inits(qdq)
    relu_out = {n.output[0] for n in qdq.graph.node if n.op_type == "Relu"}
    q_nodes = [n for n in qdq.graph.node if n.op_type == "QuantizeLinear"]
    q_inputs = {n.input[0] for n in q_nodes}
    assert relu_out <= q_inputs
    for q in q_nodes:
        zp = inits[q.input[2]]
        assert zp.dtype == np.uint8
        if q.input[0] in relu_out:
            assert int(zp) == 0
    # the Conv outputs that feed a Relu are not quantized themselves
    conv_out = {n.output[0] for n in qdq.graph.node if n.op_type == "Conv"}
    relu_in = {n.input[0] for n in qdq.graph.node if n.op_type == "Relu"}
    assert not (conv_out & relu_in & q_inputs)


def test_maxpool_shares_its_input_params(cnn_qdq: tuple[FloatModel, onnx.ModelProto, Path]) -> None:
    _, qdq, _ = cnn_qdq
    inits = _inits(qdq)
    pool = next(n for n in qdq.graph.node if n.op_type == "MaxPool")
    dq_in = _producer(qdq, pool.input[0])
    q_out = next(
        n for n in qdq.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == pool.output[0]
    )
    assert dq_in is not None
    assert inits[dq_in.input[1]] == inits[q_out.input[1]]
    assert inits[dq_in.input[2]] == inits[q_out.input[2]]


def test_logits_stay_float_and_close(cnn_qdq: tuple[FloatModel, onnx.ModelProto, Path]) -> None:
    fm, qdq, _ = cnn_qdq
    assert _producer(qdq, "logits").op_type == "Gemm"  # type: ignore[union-attr]
    x = {"images": images(16, seed=7)}
    ref, got = run_ort(fm.proto, x)[0], run_ort(qdq, x)[0]
    cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    assert cos.min() > 0.99
    assert (ref.argmax(1) == got.argmax(1)).mean() >= 0.8


def test_keep_float_is_honoured(tmp_path: Path) -> None:
    fm, table = _prepare(tmp_path, tiny_cnn(), (1, 3, 16, 16), images(16))
    plan = OnnxRuntimeBackend().plan(fm, table, PlanOptions(float_nodes=frozenset({"conv2"})))  # type: ignore[arg-type]
    assert "conv2" not in plan.quantized_nodes
    assert any(f.node == "conv2" and "as asked" in f.reason for f in plan.float_nodes)
    qdq = write_qdq(fm, plan)
    conv2 = next(n for n in qdq.graph.node if n.name == "conv2")
    assert conv2.input[1] in {t.name for t in qdq.graph.initializer}  # float weight kept


def test_int8_file_is_about_a_quarter(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    fm, table = _prepare(
        tmp_path, wide_mlp(hidden=1024), (1, 256), rng.standard_normal((32, 256)).astype(np.float32)
    )
    plan = OnnxRuntimeBackend().plan(fm, table, PlanOptions())  # type: ignore[arg-type]
    qdq = write_qdq(fm, plan)
    ratio = qdq.ByteSize() / fm.proto.ByteSize()
    assert ratio < 0.27
    x = {"x": rng.standard_normal((8, 256)).astype(np.float32)}
    ref, got = run_ort(fm.proto, x)[0], run_ort(qdq, x)[0]
    assert np.abs(ref - got).max() < 0.05 * np.abs(ref).max()
    kinds = Counter(n.op_type for n in qdq.graph.node)
    assert kinds["DequantizeLinear"] >= 3


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy", "mse"])
def test_every_method_gives_a_valid_close_model(tmp_path: Path, method: str) -> None:
    fm, table = _prepare(tmp_path, tiny_cnn(), (1, 3, 16, 16), images(16))
    opts = PlanOptions(method=MethodSpec(method))  # type: ignore[arg-type]
    qdq = write_qdq(fm, OnnxRuntimeBackend().plan(fm, table, opts))  # type: ignore[arg-type]
    onnx.checker.check_model(qdq, full_check=True)
    x = {"images": images(8, seed=3)}
    ref, got = run_ort(fm.proto, x)[0], run_ort(qdq, x)[0]
    assert float((ref * got).sum() / np.linalg.norm(ref) / np.linalg.norm(got)) > 0.98


def test_a_conv_graph_output_is_quantized_keeping_its_name(tmp_path: Path) -> None:
    # ORT fuses QLinearConv only with a Q after the Conv, so a detector's heads get one
    m = tiny_cnn()
    # end the model on a Conv whose output is the graph output
    m.graph.node[-1].CopyFrom(
        onnx.helper.make_node("Conv", ["r3", "head.w"], ["logits"], name="head")
    )
    m.graph.initializer.append(
        numpy_helper.from_array(
            np.random.default_rng(0).standard_normal((10, 8, 1, 1)).astype(np.float32), "head.w"
        )
    )
    del m.graph.output[:]
    m.graph.output.append(
        onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 10, 8, 8])
    )
    fm, table = _prepare(tmp_path, m, (1, 3, 16, 16), images(16))
    qdq = write_qdq(fm, OnnxRuntimeBackend().plan(fm, table, PlanOptions()))  # type: ignore[arg-type]
    assert [o.name for o in qdq.graph.output] == ["logits"]
    assert _producer(qdq, "logits").op_type == "DequantizeLinear"  # type: ignore[union-attr]
    path = tmp_path / "q.onnx"
    onnx.save_model(qdq, str(path))
    assert fused_kernels(path)["Conv"]["integer"] == 4
    x = {"images": images(4, seed=5)}
    ref, got = run_ort(fm.proto, x)[0], run_ort(qdq, x)[0]
    assert float((ref * got).sum() / np.linalg.norm(ref) / np.linalg.norm(got)) > 0.98


def test_split_runs_on_uint8(tmp_path: Path) -> None:
    m = tiny_cnn()
    # r2 -> Split into two halves -> Concat back, feeding conv3
    nodes = list(m.graph.node)
    idx = next(i for i, n in enumerate(nodes) if n.name == "conv3")
    split = onnx.helper.make_node(
        "Split", ["r2", "split_sizes"], ["h1", "h2"], name="split", axis=1
    )
    concat = onnx.helper.make_node("Concat", ["h2", "h1"], ["r2s"], name="concat", axis=1)
    nodes[idx].input[0] = "r2s"
    nodes[idx:idx] = [split, concat]
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    m.graph.initializer.append(numpy_helper.from_array(np.asarray([4, 4], np.int64), "split_sizes"))
    fm, table = _prepare(tmp_path, m, (1, 3, 16, 16), images(16))
    qdq = write_qdq(fm, OnnxRuntimeBackend().plan(fm, table, PlanOptions()))  # type: ignore[arg-type]
    path = tmp_path / "q.onnx"
    onnx.save_model(qdq, str(path))
    report = fused_kernels(path)
    assert report["Conv"]["integer"] == 3 and report["Concat"]["integer"] == 1
    # only the model input's Q (and the logits' path) remain outside integer kernels
    assert report["quantize_dequantize_ops"] <= 3


def _gelu_ffn() -> onnx.ModelProto:
    """A transformer's feed-forward block as exporters write it: MatMul + bias, GELU
    decomposed into Div → Erf → Add → Mul → Mul, MatMul + bias."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)

    def init(name: str, arr: Any) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(arr, np.float32), name)

    inits = [init("w1", rng.standard_normal((16, 64)) * 0.3), init("b1", rng.standard_normal(64) * 0.1),
             init("w2", rng.standard_normal((64, 16)) * 0.2), init("b2", np.zeros(16)),
             init("sqrt2", np.sqrt(2.0)), init("one", 1.0), init("half", 0.5)]  # fmt: skip
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"], name="ff1"),
        helper.make_node("Add", ["h0", "b1"], ["h"], name="ff1_bias"),
        helper.make_node("Div", ["h", "sqrt2"], ["d"], name="gelu_div"),
        helper.make_node("Erf", ["d"], ["e"], name="gelu_erf"),
        helper.make_node("Add", ["e", "one"], ["e1"], name="gelu_add"),
        helper.make_node("Mul", ["h", "e1"], ["m"], name="gelu_mul"),
        helper.make_node("Mul", ["m", "half"], ["g"], name="gelu_half"),
        helper.make_node("MatMul", ["g", "w2"], ["y0"], name="ff2"),
        helper.make_node("Add", ["y0", "b2"], ["y"], name="ff2_bias"),
    ]
    graph = helper.make_graph(
        nodes, "ffn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 16])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_decomposed_gelu_stays_float_so_the_product_before_it_fuses(tmp_path: Path) -> None:
    """Quantizing the GELU's Mul gave the first product a quantized consumer beside the
    float Div, and ORT then fused that product into nothing: a float MatMul that
    dequantized its weight on every run."""
    x = np.random.default_rng(1).standard_normal((32, 8, 16)).astype(np.float32)
    fm, table = _prepare(tmp_path, _gelu_ffn(), (1, 8, 16), x)
    plan = OnnxRuntimeBackend().plan(fm, table, PlanOptions())  # type: ignore[arg-type]
    why = {f.node: f.reason for f in plan.float_nodes}
    assert "GELU" in why["gelu_mul"]
    path = tmp_path / "q.onnx"
    onnx.save_model(write_qdq(fm, plan), str(path))
    assert fused_kernels(path)["MatMul"] == {"total": 2, "integer": 2}
    out = run_ort(path, {"x": x[:4]})[0]
    ref = run_ort(tmp_path / "m.onnx", {"x": x[:4]})[0]
    cos = float(np.sum(out * ref) / (np.linalg.norm(out) * np.linalg.norm(ref)))
    assert cos > 0.99


def test_a_residual_sum_into_a_layernorm_stays_float_in_every_backend(tmp_path: Path) -> None:
    """A transformer's residual stream (an Add whose sum a LayerNorm reads) stays float;
    a CNN's residual Add (test_every_compute_op_becomes_an_integer_kernel) does not."""
    from onnx import TensorProto, helper

    from quantship.backends.openvino import OpenVINOBackend

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((16, 16)) * 0.3).astype(np.float32), n)
             for n in ("w1", "w2")]  # fmt: skip
    inits += [numpy_helper.from_array(np.ones(16, np.float32), "g"),
              numpy_helper.from_array(np.zeros(16, np.float32), "b")]  # fmt: skip
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="proj"),
        helper.make_node("Add", ["x", "h"], ["r"], name="residual"),
        helper.make_node("LayerNormalization", ["r", "g", "b"], ["n"], name="ln", axis=-1),
        helper.make_node("MatMul", ["n", "w2"], ["y"], name="head"),
    ]
    graph = helper.make_graph(
        nodes, "postln", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 16])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((32, 8, 16)).astype(np.float32)
    fm, table = _prepare(tmp_path, model, (1, 8, 16), x)
    for backend in (OnnxRuntimeBackend(), OpenVINOBackend()):
        plan = backend.plan(fm, table, PlanOptions())  # type: ignore[arg-type]
        why = {f.node: f.reason for f in plan.float_nodes}
        assert "LayerNorm" in why["residual"], backend.name
        assert {"proj", "head"} <= set(plan.compute_nodes), backend.name


def test_attention_products_float_by_rule_and_int8_as_a_variant(tmp_path: Path) -> None:
    """The rule plan leaves an attention block's score and context products float, and
    every weighted product runs on an integer kernel; the "attention-int8" variant (for
    the plan search to measure) quantizes exactly those products besides."""
    pytest.importorskip("transformers")
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "corpus"))
    import families

    fam = families.bert(tmp_path, "test", dynamo=False)
    fm = load_model(fam.model)
    table = calibrate(fm, open_data(fam.calib, fm.inputs), samples=8)
    backend = OnnxRuntimeBackend()
    (variant,) = [v for v in backend.plan_variants() if v.name == "attention-int8"]
    rules = backend.plan(fm, table, PlanOptions())
    plan = variant.backend.plan(fm, table, variant.options(PlanOptions(), fm))
    products = {n for n in plan.quantized_nodes if "/self/MatMul" in n}
    assert len(products) == 2 * 2  # scores and context, in both layers
    assert set(plan.quantized_nodes) - set(rules.quantized_nodes) == products
    why = {f.node: f.reason for f in rules.float_nodes}
    assert all("attention block's" in why[n] for n in products)
    for p, n_float in ((rules, len(products)), (plan, 0)):
        path = tmp_path / "q.onnx"
        onnx.save_model(write_qdq(fm, p), str(path))
        mm = fused_kernels(path)["MatMul"]
        assert mm["integer"] == mm["total"] - n_float > 0, mm
