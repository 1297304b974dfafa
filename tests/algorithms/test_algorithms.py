"""Pre-quantization algorithms: each leaves the float model's function unchanged (CLE)
or corrects what INT8 shifts (bias correction), and what it claims shows in the INT8
model's fidelity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import pytest
from models import images, run_ort, save
from onnx import TensorProto, helper, numpy_helper

from quantship import api
from quantship.algorithms import Algorithms
from quantship.errors import QuantshipError


def _conv(name: str, x: str, w: npt.NDArray[Any], out: str, bias: bool = True,
          group: int = 1) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:  # fmt: skip
    inits = [numpy_helper.from_array(w.astype(np.float32), f"{name}.w")]
    ins = [x, f"{name}.w"]
    if bias:
        b = np.linspace(-0.1, 0.1, w.shape[0]).astype(np.float32)
        inits.append(numpy_helper.from_array(b, f"{name}.b"))
        ins.append(f"{name}.b")
    pad = w.shape[-1] // 2
    node = helper.make_node("Conv", ins, [out], name=name, pads=[pad] * 4, group=group)
    return [node], inits


def unbalanced(relu6_max: float = 6.0, seed: int = 0) -> onnx.ModelProto:
    """conv1 (output channels scaled 1/30 … 30) → Relu → conv2 → Clip(0, relu6_max) →
    depthwise conv3 → GlobalAveragePool → Flatten: a per-tensor activation after conv1
    must cover channels 900× apart in range."""
    rng = np.random.default_rng(seed)
    c = 8
    spread = np.geomspace(1 / 30, 30, c).astype(np.float32)
    w1 = rng.standard_normal((c, 3, 3, 3)).astype(np.float32) * 0.3 * spread[:, None, None, None]
    w2 = rng.standard_normal((c, c, 1, 1)).astype(np.float32) * 0.3 / spread[None, :, None, None]
    w3 = rng.standard_normal((c, 1, 3, 3)).astype(np.float32) * 0.3
    nodes, inits = [], []
    for part in (_conv("conv1", "images", w1, "c1"), _conv("conv2", "r1", w2, "c2", bias=False),
                 _conv("conv3", "r2", w3, "c3", group=c)):  # fmt: skip
        nodes += part[0]
        inits += part[1]
    inits += [numpy_helper.from_array(np.array(0, np.float32), "lo"),
              numpy_helper.from_array(np.array(relu6_max, np.float32), "hi")]  # fmt: skip
    nodes.insert(1, helper.make_node("Relu", ["c1"], ["r1"], name="relu1"))
    nodes.insert(3, helper.make_node("Clip", ["c2", "lo", "hi"], ["r2"], name="clip2"))
    nodes += [helper.make_node("GlobalAveragePool", ["c3"], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["out"], name="flatten")]  # fmt: skip
    graph = helper.make_graph(
        nodes, "unbalanced",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", c])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _load_and_calibrate(tmp_path: Path, model: onnx.ModelProto) -> tuple[Any, Any, Path]:
    from quantship.calibration.runner import calibrate
    from quantship.calibration.sources import open_data
    from quantship.exporter.load import load_model

    path = save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", images=images(32))
    fm = load_model(path)
    return fm, calibrate(fm, open_data(tmp_path / "calib.npz", fm.inputs), samples=32), path


def test_parse_names_presets_and_typos() -> None:
    assert Algorithms.parse("bias-correction,cle").names == ("cle", "bias-correction")
    assert Algorithms.parse("none").names == () and not Algorithms.parse("none").auto
    assert Algorithms.parse(None) == Algorithms.parse("auto") == Algorithms((), auto=True)
    with pytest.raises(QuantshipError, match=r"unknown algorithm 'cel'.*did you mean 'cle'"):
        Algorithms.parse("cel")


def test_equalization_keeps_the_function_and_balances_each_pair(tmp_path: Path) -> None:
    from quantship.algorithms.cle import equalize

    fm, table, _ = _load_and_calibrate(tmp_path, unbalanced(relu6_max=100.0))
    eq, report = equalize(fm, table)
    # conv1→conv2 through Relu; conv2→conv3 through Clip(0, 100), which is not ReLU6
    assert report.pairs == 1 and report.relu6_replaced == 0 and report.rounds >= 1
    feed = {"images": images(4, seed=7)}
    before, after = run_ort(fm.proto, feed)[0], run_ort(eq.proto, feed)[0]
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-5)
    w = {t.name: numpy_helper.to_array(t) for t in eq.proto.graph.initializer}
    r1 = np.abs(w["conv1.w"]).reshape(8, -1).max(axis=1)
    r2 = np.abs(w["conv2.w"]).transpose(1, 0, 2, 3).reshape(8, -1).max(axis=1)
    np.testing.assert_allclose(r1, r2, rtol=1e-3)  # each channel's ranges now meet
    assert fm.proto.graph.initializer[0].raw_data  # the input model is not changed
    assert eq.sha256 != fm.sha256 and "cross-layer equalization" in eq.notes[-1]


def test_relu6_becomes_relu_only_where_the_data_stays_below_six(tmp_path: Path) -> None:
    from quantship.algorithms.cle import equalize

    fm, table, _ = _load_and_calibrate(tmp_path, unbalanced())
    below = table["c2"].max < 6.0
    eq, report = equalize(fm, table)
    ops = [n.op_type for n in eq.proto.graph.node]
    if below:
        assert report.relu6_replaced == 1 and report.pairs == 2 and "Clip" not in ops
    else:
        assert report.relu6_kept == 1 and report.pairs == 1 and "Clip" in ops
    # forced: a table whose range at the ReLU6 input passes 6 keeps it
    from dataclasses import replace

    stats = replace(table["c2"], max=7.5)
    hot = replace(table, tensors={**table.tensors, "c2": stats})
    _, kept = equalize(fm, hot)
    assert kept.relu6_kept == 1 and kept.relu6_replaced == 0


def test_cle_export_is_more_faithful_on_an_unbalanced_model(tmp_path: Path) -> None:
    path = save(unbalanced(relu6_max=100.0), tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", images=images(48))
    cos = {}
    for algos in ("none", "cle"):
        res = api.export(path, tmp_path / "calib.npz", tmp_path / algos, samples=32, bench=False,
                         algorithms=algos)  # fmt: skip
        (a,) = res.manifest["artifacts"]
        cos[algos] = a["fidelity"]["cosine"]
        if algos == "cle":
            assert a["algorithms"]["cle"]["pairs"] == 1
            # the float model written and measured against is the prepared user's model,
            # as without the algorithm, not the equalized one
            f = "float/model.onnx"
            assert (tmp_path / algos / f).read_bytes() == (tmp_path / "none" / f).read_bytes()
    assert 1 - cos["cle"] < 0.5 * (1 - cos["none"]), cos


def biased(seed: int = 0) -> onnx.ModelProto:
    """Two convolutions whose weights sit 0.45 of a step above the int8 grid, so
    rounding pulls every output channel's mean the same way; the second has no bias."""
    rng = np.random.default_rng(seed)

    def on_grid(shape: tuple[int, ...]) -> npt.NDArray[np.float32]:
        q = rng.integers(-60, 60, shape).astype(np.float32) + 0.45
        q.reshape(shape[0], -1)[:, 0] = 127.0  # fixes each channel's scale at 1/127
        return (q / 127.0 * 0.05).astype(np.float32)

    n1, i1 = _conv("conv1", "images", on_grid((8, 3, 3, 3)), "c1")
    n2, i2 = _conv("conv2", "r1", on_grid((8, 8, 3, 3)), "c2", bias=False)
    nodes = [n1[0], helper.make_node("Relu", ["c1"], ["r1"], name="relu1"), n2[0]]
    graph = helper.make_graph(
        nodes, "biased",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("c2", TensorProto.FLOAT, ["N", 8, 16, 16])], i1 + i2,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_bias_correction_removes_the_shift_rounding_leaves(tmp_path: Path) -> None:
    from quantship.algorithms.bias_correction import correct_biases
    from quantship.backends.base import PlanOptions
    from quantship.backends.onnxruntime import OnnxRuntimeBackend
    from quantship.exporter.qdq import write_qdq

    fm, table, _ = _load_and_calibrate(tmp_path, biased())
    b, opts = OnnxRuntimeBackend(), PlanOptions()
    feeds = [{"images": images(4, seed=s)} for s in range(8)]
    fixed, report = correct_biases(fm, table, b, opts, feeds)
    assert report.layers == 2 and report.samples == 8
    assert "conv2.bias" in {t.name for t in fixed.proto.graph.initializer}  # a bias added

    def shift(model: Any) -> float:
        held = {"images": images(16, seed=99)}
        q = run_ort(write_qdq(model, b.plan(model, table, opts)), held)[0]
        f = run_ort(fm.proto, held)[0]  # the user's float model
        return float(np.abs((q - f).mean(axis=(0, 2, 3))).mean())

    assert shift(fixed) < 0.2 * shift(fm), (shift(fixed), shift(fm))
    # the float function is moved only by the corrections, not otherwise touched
    w = {t.name: numpy_helper.to_array(t) for t in fixed.proto.graph.initializer}
    w0 = {t.name: numpy_helper.to_array(t) for t in fm.proto.graph.initializer}
    assert all(np.array_equal(w[k], w0[k]) for k in ("conv1.w", "conv2.w"))


def test_bias_correction_leaves_channels_whose_shift_is_within_its_noise() -> None:
    from quantship.algorithms.bias_correction import significant

    noise = np.tile([1.0, -1.0], 16)  # 32 samples, mean 0, standard error ~0.18
    per_sample = np.stack([noise + 5.0, noise, noise + 0.3], axis=1)
    got = significant(per_sample)
    assert got[0] == pytest.approx(5.0)  # a shift far beyond its noise
    assert got[1] == got[2] == 0.0  # within two standard errors of 0: not corrected
    assert significant(per_sample[:1])[1] == per_sample[0, 1]  # one sample: taken as it is


def test_bias_correction_in_export_is_recorded_and_deterministic(tmp_path: Path) -> None:
    path = save(biased(), tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", images=images(48))
    runs = []
    for k in range(2):
        res = api.export(path, tmp_path / "calib.npz", tmp_path / f"o{k}", samples=32,
                         bench=False, algorithms="bias-correction")  # fmt: skip
        (a,) = res.manifest["artifacts"]
        assert a["algorithms"]["bias_correction"]["layers"] == 2
        runs.append([f["sha256"] for f in a["files"]])
    assert runs[0] == runs[1]
    plain = api.export(path, tmp_path / "calib.npz", tmp_path / "p", samples=32, bench=False)
    (p,) = plain.manifest["artifacts"]
    assert a["fidelity"]["cosine"] > p["fidelity"]["cosine"]


def outliers(seed: int = 0, residual: bool = False) -> onnx.ModelProto:
    """x → LayerNorm (two channels scaled ×40: activation outliers) → two MatMuls (the
    Q and K projections of an attention block) → Add; with ``residual``, the
    LayerNorm's output is also added to the output (through a third product of the
    same width) as a residual path reads it."""
    rng = np.random.default_rng(seed)
    d, h = 32, 48
    gamma = np.ones(d, np.float32)
    gamma[[3, 17]] = 40.0
    inits = [
        numpy_helper.from_array(gamma, "ln.g"),
        numpy_helper.from_array(rng.uniform(-0.1, 0.1, d).astype(np.float32), "ln.b"),
        numpy_helper.from_array((rng.standard_normal((d, h)) * 0.2).astype(np.float32), "wq"),
        numpy_helper.from_array((rng.standard_normal((d, h)) * 0.2).astype(np.float32), "wk"),
    ]
    nodes = [
        helper.make_node("LayerNormalization", ["x", "ln.g", "ln.b"], ["n"], name="ln", axis=-1),
        helper.make_node("MatMul", ["n", "wq"], ["q"], name="proj_q"),
        helper.make_node("MatMul", ["n", "wk"], ["k"], name="proj_k"),
        helper.make_node("Add", ["q", "k"], ["y"], name="add"),
    ]
    if residual:
        h = d
        inits[2:] = [
            numpy_helper.from_array((rng.standard_normal((d, h)) * 0.2).astype(np.float32), w)
            for w in ("wq", "wk")
        ]
        nodes[-1] = helper.make_node("Add", ["q", "k"], ["qk"], name="add")
        nodes.append(helper.make_node("Add", ["qk", "n"], ["y"], name="residual"))
    graph = helper.make_graph(
        nodes, "outliers",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16, d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16, h])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _smooth(tmp_path: Path, model: onnx.ModelProto) -> tuple[Path, Any, Any, Any, Any]:
    """The model saved, its calibration data, and SmoothQuant's result on it."""
    from quantship.algorithms.smoothquant import smooth
    from quantship.calibration.sources import open_data
    from quantship.exporter.load import load_model

    path = save(model, tmp_path / "m.onnx")
    x = np.random.default_rng(1).standard_normal((64, 16, 32)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    fm = load_model(path)
    smoothed, report = smooth(fm, open_data(tmp_path / "calib.npz", fm.inputs), 48)
    feed = {"x": x[:4]}
    np.testing.assert_allclose(run_ort(smoothed.proto, feed)[0], run_ort(fm.proto, feed)[0],
                               rtol=1e-3, atol=1e-4)  # fmt: skip
    return path, x, fm, smoothed, report


def _errors(path: Path, tmp_path: Path, backends: str) -> dict[str, list[float]]:
    """1 − cosine of each backend's INT8 model, without and with SmoothQuant."""
    err = {}
    for algos in ("none", "smoothquant"):
        res = api.export(path, tmp_path / "calib.npz", tmp_path / algos, samples=48,
                         bench=False, algorithms=algos, backends=backends)  # fmt: skip
        err[algos] = [1 - a["fidelity"]["cosine"] for a in res.manifest["artifacts"]]
    return err


def test_smoothquant_folds_into_the_layernorm_and_pays(tmp_path: Path) -> None:
    path, _, fm, smoothed, report = _smooth(tmp_path, outliers())
    assert report.groups == 1 and report.smoothed == 1 and report.error_ratio < 0.5
    assert [n.op_type for n in smoothed.proto.graph.node] == [
        n.op_type for n in fm.proto.graph.node
    ]
    err = _errors(path, tmp_path, "onnxruntime")
    assert err["smoothquant"][0] < 0.5 * err["none"][0], err


def test_smoothquant_inserts_a_mul_where_a_residual_reads_the_layernorm(tmp_path: Path) -> None:
    """A LayerNorm the residual path also reads (post-LN BERT) cannot take the
    smoothing: one Mul by 1/s goes before the products, the residual reads the
    LayerNorm's output unchanged, the model computes the same, and INT8 is closer."""
    path, _, fm, smoothed, report = _smooth(tmp_path, outliers(residual=True))
    assert report.smoothed == 1 and report.error_ratio < 0.5, report
    g = smoothed.proto.graph
    (mul,) = [n for n in g.node if n.op_type == "Mul"]
    assert mul.input[0] == "n"
    readers = {n.name: list(n.input) for n in g.node}
    assert readers["proj_q"][0] == readers["proj_k"][0] == mul.output[0]
    assert "n" in readers["residual"]
    ln = {t.name: t for t in g.initializer}["ln.g"]
    assert np.array_equal(numpy_helper.to_array(ln), numpy_helper.to_array(
        {t.name: t for t in fm.proto.graph.initializer}["ln.g"]))  # fmt: skip
    err = _errors(path, tmp_path, "onnxruntime,openvino")
    assert all(s < 0.5 * n for s, n in zip(err["smoothquant"], err["none"], strict=True)), err


def test_adaround_learns_roundings_that_the_plan_reproduces(tmp_path: Path) -> None:
    """Weights come back on the plan's own grid (rounding them gives the learned
    integers, scales unchanged), each layer's output error is below nearest rounding's,
    and the INT8 model is at least as faithful."""
    pytest.importorskip("torch")
    from models import silu_cnn

    from quantship.algorithms.adaround import adaround
    from quantship.backends.base import PlanOptions
    from quantship.backends.onnxruntime import OnnxRuntimeBackend
    from quantship.calibration.qparams import quantize, weight_params

    fm, table, _ = _load_and_calibrate(tmp_path, silu_cnn())
    b, opts = OnnxRuntimeBackend(), PlanOptions()
    feeds = [{"images": images(2, seed=s)} for s in range(4)]
    out, report = adaround(fm, table, b, opts, feeds)
    assert report.layers == report.done == 4 and report.mse_ratio < 1.0
    before = {c.tensor: c.params for c in b.plan(fm, table, opts).constants if c.role == "weight"}
    after = {c.tensor: c.params for c in b.plan(out, table, opts).constants if c.role == "weight"}
    w = {t.name: numpy_helper.to_array(t) for t in out.proto.graph.initializer}
    for name, p in before.items():
        np.testing.assert_allclose(after[name].scale, p.scale, rtol=1e-6)
        q = quantize(w[name], weight_params(w[name], p.axis))
        np.testing.assert_allclose(q * np.asarray(p.scale).reshape(
            [-1 if i == p.axis else 1 for i in range(q.ndim)]), w[name], rtol=1e-5)  # fmt: skip
    w0 = {t.name: numpy_helper.to_array(t) for t in fm.proto.graph.initializer}
    moved = sum(int((quantize(w[n], weight_params(w[n], p.axis)) !=
                     quantize(w0[n], p)).sum()) for n, p in before.items())  # fmt: skip
    assert moved > 0  # some weights were rounded the other way


def test_adaround_export_is_deterministic(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from models import silu_cnn

    path = save(silu_cnn(), tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", images=images(40))
    files = []
    for k in range(2):
        res = api.export(path, tmp_path / "calib.npz", tmp_path / f"o{k}", samples=32,
                         bench=False, algorithms="adaround,bias-correction")  # fmt: skip
        (a,) = res.manifest["artifacts"]
        assert a["algorithms"]["adaround"]["done"] == 4
        assert a["algorithms"]["names"] == ["adaround", "bias-correction"]
        files.append([f["sha256"] for f in a["files"]])
    assert files[0] == files[1]


def test_adaround_learns_once_for_backends_that_share_a_weight_grid(tmp_path: Path) -> None:
    """ONNX Runtime and OpenVINO store the same int8 symmetric per-channel weights: the
    second backend reuses every layer the first learned, and gets the same weights."""
    pytest.importorskip("torch")
    from models import silu_cnn

    from quantship.algorithms.adaround import adaround
    from quantship.backends.base import PlanOptions
    from quantship.backends.onnxruntime import OnnxRuntimeBackend
    from quantship.backends.openvino import OpenVINOBackend

    fm, table, _ = _load_and_calibrate(tmp_path, silu_cnn())
    feeds = [{"images": images(2, seed=s)} for s in range(4)]
    learned: dict[str, Any] = {}
    ort_fm, first = adaround(fm, table, OnnxRuntimeBackend(), PlanOptions(), feeds,
                             learned=learned)  # fmt: skip
    ov_fm, second = adaround(fm, table, OpenVINOBackend(), PlanOptions(), feeds, learned=learned)
    assert first.reused == 0 and first.done == 4 and len(learned) == 4
    assert second.reused == second.done == 4
    w1 = {t.name: numpy_helper.to_array(t) for t in ort_fm.proto.graph.initializer}
    w2 = {t.name: numpy_helper.to_array(t) for t in ov_fm.proto.graph.initializer}
    for name, w in w1.items():
        np.testing.assert_array_equal(w2[name], w)
    # What is reused is what the backend would have learned alone, and a layer's result
    # does not depend on which other layers are learned with it (conv0 float here).
    ov_alone, _ = adaround(fm, table, OpenVINOBackend(), PlanOptions(), feeds, learned={})
    fewer, report = adaround(fm, table, OpenVINOBackend(),
                             PlanOptions(float_nodes=frozenset({"conv0"})), feeds, learned={})  # fmt: skip
    assert report.done == 3
    w3 = {t.name: numpy_helper.to_array(t) for t in ov_alone.proto.graph.initializer}
    w4 = {t.name: numpy_helper.to_array(t) for t in fewer.proto.graph.initializer}
    w0 = {t.name: numpy_helper.to_array(t) for t in fm.proto.graph.initializer}
    changed = [n for n, w in w0.items() if not np.array_equal(w, w4[n])]
    assert len(changed) == 3  # conv1, conv2 and fc learned, conv0 left as it was
    for name, w in w2.items():
        np.testing.assert_array_equal(w3[name], w)
        if name in changed:
            np.testing.assert_array_equal(w4[name], w)


def test_tensorrt_plans_get_the_algorithms_and_stay_valid(tmp_path: Path) -> None:
    """The TensorRT plan (symmetric int8) takes every algorithm; its QDQ model still
    passes TensorRT's rules, and its fidelity is measured in ONNX Runtime."""
    pytest.importorskip("torch")
    from models import silu_cnn

    from quantship.backends.tensorrt_check import check_tensorrt

    path = save(silu_cnn(), tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", images=images(40))
    res = api.export(path, tmp_path / "calib.npz", tmp_path / "o", backends="tensorrt",
                     samples=32, bench=False, algorithms="cle,adaround,bias-correction")  # fmt: skip
    (a,) = res.manifest["artifacts"]
    assert a["algorithms"]["adaround"]["done"] == 4
    assert a["algorithms"]["bias_correction"]["layers"] == 4
    assert a["fidelity"]["cosine"] > 0.99
    qdq = onnx.load(str(tmp_path / "o" / a["path"]))
    assert check_tensorrt(qdq) == []
