"""Quantization-aware distillation: the torch interpreter of a QDQ model computes what
ONNX Runtime computes, writes back the same bytes when nothing trained, learns its
scales only when asked, and ``distill --qat`` writes an INT8 QDQ model that recovers
accuracy post-training quantization lost, deterministically and resumably."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0)")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")

from quantship import api  # noqa: E402
from quantship.distill.qdq_torch import QDQNet  # noqa: E402
from quantship.errors import QuantshipError  # noqa: E402
from quantship.ui import SILENT  # noqa: E402

NETS = """
import torch
from torch import nn

def teacher():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))

def student():
    torch.manual_seed(2)
    return nn.Sequential(nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 4))

def outlier_student():
    # Hidden unit 0 scaled up 300x and its outgoing weights down as much: the same
    # function in float, but a per-tensor range set by that unit leaves the other units
    # a few of the uint8 steps (the activation outliers of real models, in miniature).
    net = student()
    with torch.no_grad():
        net[0].weight[0] *= 300
        net[0].bias[0] *= 300
        net[2].weight[:, 0] /= 300
    return net
"""


def _qdq(net: object, shape: tuple[int, ...], backend: str = "onnxruntime") -> onnx.ModelProto:
    from quantship.backends import registry
    from quantship.backends.base import PlanOptions
    from quantship.calibration.data import arrays_data
    from quantship.calibration.methods import MethodSpec
    from quantship.calibration.runner import calibrate
    from quantship.exporter import load as loader
    from quantship.exporter.onnx_file import Source
    from quantship.exporter.qdq import write_qdq
    from quantship.exporter.torch_export import export_module

    proto = export_module(net, {"input": shape})
    fm = loader.prepare_source(Source(proto, "net", "0" * 64, 0), None, {"input": shape})
    x = np.random.default_rng(0).random((64, *shape[1:]), dtype=np.float32)
    table = calibrate(fm, arrays_data({"input": x}, fm.inputs, "x", "calibration"), samples=64,
                      histograms=True)  # fmt: skip
    b = registry.get(backend)
    return write_qdq(fm, b.plan(fm, table, PlanOptions(method=MethodSpec("percentile", 99.99))))


def _cnn() -> object:
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1, groups=6), nn.ReLU6(), nn.MaxPool2d(2),
        nn.Conv2d(6, 12, 1), nn.ReLU(), nn.AvgPool2d(2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5),
    )  # fmt: skip
    bn: Any = net[1]
    with torch.no_grad():  # BN statistics that are not the identity, folded on export
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_interpreter_matches_onnx_runtime_and_writes_back_the_same_bytes(backend: str) -> None:
    if backend == "openvino":
        pytest.importorskip("openvino", reason="openvino is not installed")
    qdq = _qdq(_cnn(), (1, 1, 12, 12), backend)
    ops = {n.op_type for n in qdq.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "MaxPool", "Gemm"} <= ops
    net = QDQNet.build(qdq, learn_scales=True)
    x = np.random.default_rng(1).random((8, 1, 12, 12), dtype=np.float32)
    with torch.no_grad():
        got = net(torch.from_numpy(x)).numpy()
    s = ort.InferenceSession(qdq.SerializeToString(), providers=["CPUExecutionProvider"])
    want = np.concatenate([s.run(None, {"input": x[i : i + 1]})[0] for i in range(8)])
    # ORT runs integer kernels (int32 accumulation, requantized outputs): equal to fake
    # quantization up to a step of the output's own rounding.
    assert np.abs(got - want).max() < 1e-3 * max(1.0, float(np.abs(want).max())), (got, want)
    back = net.to_onnx()
    assert back.SerializeToString() == qdq.SerializeToString()


def test_qat_starts_from_what_export_writes_with_its_algorithms(tmp_path: Path) -> None:
    from torch.utils.data import TensorDataset

    from quantship.distill.qad import QatOptions, ptq_model
    from quantship.exporter.torch_export import export_module

    net: Any = _cnn()
    with torch.no_grad():  # channels of unequal range, which CLE evens out
        net[3].weight[:3] *= 8.0
        net[3].bias[:3] *= 8.0
        net[6].weight[:, :3] /= 8.0
    path = tmp_path / "student.onnx"
    path.write_bytes(export_module(net, {"input": (1, 1, 12, 12)}).SerializeToString())
    x = torch.from_numpy(np.random.default_rng(0).random((64, 1, 12, 12), dtype=np.float32))
    data = TensorDataset(x, torch.zeros(64, dtype=torch.int64))
    got = {}
    for algos in ("none", "cle"):
        _, _, qdq, info = ptq_model(path, (1, 12, 12), data, QatOptions(algorithms=algos), SILENT)
        got[algos] = (qdq, info)
    qdq, info = got["cle"]
    assert info["algorithms"]["names"] == ["cle"] and info["algorithms"]["cle"]["pairs"] >= 1
    assert got["none"][1]["algorithms"]["names"] == []
    weights = {t.name: t.raw_data for t in got["none"][0].graph.initializer}
    assert any(weights.get(t.name) != t.raw_data for t in qdq.graph.initializer)
    # The equalized model is one the interpreter trains: it still matches ONNX Runtime.
    qnet = QDQNet.build(qdq, learn_scales=True)
    with torch.no_grad():
        mine = qnet(x[:8]).numpy()
    s = ort.InferenceSession(qdq.SerializeToString(), providers=["CPUExecutionProvider"])
    want = np.concatenate([s.run(None, {"input": x[i : i + 1].numpy()})[0] for i in range(8)])
    assert np.abs(mine - want).max() < 1e-3 * max(1.0, float(np.abs(want).max()))


def test_fake_quantization_is_onnx_arithmetic_and_scales_learn_only_when_asked() -> None:
    from torch import nn

    torch.manual_seed(0)
    qdq = _qdq(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval(), (1, 4))
    frozen, learned = QDQNet.build(qdq, False), QDQNet.build(qdq, True)
    scales = {n.input[1] for n in qdq.graph.node if n.op_type == "QuantizeLinear"}
    assert scales
    for name in scales:
        assert not frozen.trained(name) and frozen.scale_parameter(name) is None
        assert learned.trained(name) and learned.scale_parameter(name) is not None
        # untrained, a learned scale is exactly the calibrated one
        assert torch.equal(learned.tensor(name), frozen.tensor(name))
    # The input's Q/DQ pair, by hand: uint8, round half to even, saturate.
    q = next(n for n in qdq.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input")
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in qdq.graph.initializer}
    sc, zp = float(inits[q.input[1]]), int(inits[q.input[2]])
    x = torch.tensor([[0.5 * sc, 1.5 * sc, -1000.0, 1000.0]])
    env_q = frozen._run(q, lambda n: x if n == "input" else frozen.tensor(n))
    expected = np.clip(np.round(x.numpy() / sc) + zp, 0, 255)
    assert np.array_equal(env_q.numpy(), expected)
    # Learned: the scales get gradients (LSQ), the frozen ones none.
    out = learned(torch.randn(16, 4)).sum()
    out.backward()
    grads = [learned.scale_parameter(n).grad for n in scales]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_an_op_it_cannot_train_through_is_named() -> None:
    from onnx import TensorProto, helper

    from quantship.errors import ModelError

    g = helper.make_graph(
        [helper.make_node("Erf", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )  # fmt: skip
    with pytest.raises(ModelError, match="cannot run op\\(s\\) Erf"):
        QDQNet.build(helper.make_model(g), True)


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    code = tmp_path / "code"
    code.mkdir()
    (code / "qs_qad_nets.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(code))
    sys.modules.pop("qs_qad_nets", None)
    import importlib

    teacher = importlib.import_module("qs_qad_nets").teacher().eval()
    rng = np.random.default_rng(0)
    for name, n in (("train", 768), ("val", 256)):
        x = rng.standard_normal((n, 16)).astype(np.float32)
        with torch.no_grad():
            y = teacher(torch.from_numpy(x)).argmax(1).numpy()
        np.savez(tmp_path / f"{name}.npz", x=x, y=y)
    return tmp_path


def _accuracy(path: Path, work: Path) -> float:
    v = np.load(work / "val.npz")
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    preds = [int(np.argmax(s.run(None, {name: v["x"][i : i + 1]})[0])) for i in range(len(v["x"]))]
    return float(np.mean(np.asarray(preds) == v["y"]))


def test_qat_writes_an_int8_model_better_than_ptq_and_the_same_bytes_twice(work: Path) -> None:
    kw = dict(val=work / "val.npz", epochs=8, lr=3e-3, batch_size=32, qat=True, qat_epochs=4,
              method="minmax", qat_lr=1e-3)  # fmt: skip
    args = ("qs_qad_nets:teacher", "qs_qad_nets:outlier_student", work / "train.npz")
    m = api.distill(*args, work / "a", **kw)  # type: ignore[arg-type]
    out = work / "a"
    q = onnx.load(str(out / "student.int8.onnx"))
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("QuantizeLinear") >= 2
    int8 = {t.name for t in q.graph.initializer if t.data_type == onnx.TensorProto.INT8}
    assert {"0.weight.int8", "2.weight.int8"} <= int8  # both Gemm weights
    saved = json.loads((out / "metrics.json").read_text())["qat"]
    assert saved["backend"] == "onnxruntime" and saved["scales"] == "learned"
    acc = saved["val_accuracy"]
    # The figures in metrics.json are what ONNX Runtime gives on the files written.
    assert acc["qad"] == pytest.approx(_accuracy(out / "student.int8.onnx", work))
    assert acc["ptq"] == pytest.approx(_accuracy(out / "student.ptq.onnx", work))
    assert acc["float"] == pytest.approx(_accuracy(out / "student.onnx", work))
    assert m["qat"]["exported_epoch"] == saved["exported_epoch"]
    # minmax ranges on this student cost accuracy, and training the INT8 model wins some back.
    assert acc["ptq"] < acc["float"] - 0.02 and acc["qad"] > acc["ptq"] + 0.02, acc
    api.distill(*args, work / "b", **kw)  # type: ignore[arg-type]
    for f in ("student.ptq.onnx", "student.int8.onnx"):
        assert (work / "a" / f).read_bytes() == (work / "b" / f).read_bytes(), f


def test_qat_resumes_to_the_same_bytes(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kw = dict(epochs=2, lr=3e-3, batch_size=32, qat=True, qat_epochs=3, qat_lr=1e-3)
    args = ("qs_qad_nets:teacher", "qs_qad_nets:student", work / "train.npz")
    api.distill(*args, work / "full", **kw)  # type: ignore[arg-type]
    from quantship.distill import qad
    from quantship.distill import train as tr

    real = tr._save_atomic
    calls = {"n": 0}

    def interrupt_after_first_qat_epoch(obj: object, path: Path) -> None:
        real(obj, path)
        if path.name == qad.QAT_CHECKPOINT:
            calls["n"] += 1
            if calls["n"] == 1:
                raise KeyboardInterrupt

    monkeypatch.setattr(tr, "_save_atomic", interrupt_after_first_qat_epoch)
    with pytest.raises(KeyboardInterrupt):
        api.distill(*args, work / "part", **kw)  # type: ignore[arg-type]
    assert not (work / "part/student.int8.onnx").exists()
    monkeypatch.setattr(tr, "_save_atomic", real)
    api.distill(*args, work / "part", resume=True, **kw)  # type: ignore[arg-type]
    for f in ("student.onnx", "student.int8.onnx"):
        assert (work / "full" / f).read_bytes() == (work / "part" / f).read_bytes(), f
    # the checkpoint belongs to its quantization setup: another one does not resume it
    with pytest.raises(QuantshipError, match="made for another quantization setup"):
        api.distill(*args, work / "part", resume=True, **{**kw, "qat_scales": "frozen"})  # type: ignore[arg-type]


def test_qat_of_a_trained_student_without_float_distillation(work: Path) -> None:
    args = ("qs_qad_nets:teacher", "qs_qad_nets:student", work / "train.npz")
    api.distill(*args, work / "f", epochs=2, lr=3e-3, batch_size=32)
    m = api.distill(*args, work / "q", epochs=0, student_weights=work / "f/student.pt",
                    batch_size=32, qat=True, qat_epochs=2, qat_lr=1e-3)  # fmt: skip
    # The float student written is the one given, and its INT8 model is trained.
    assert (work / "q/student.onnx").read_bytes() == (work / "f/student.onnx").read_bytes()
    assert m["config"]["epochs"] == 0 and m["student_weights"] == str(work / "f/student.pt")
    saved = json.loads((work / "q/metrics.json").read_text())
    assert len(saved["qat"]["epochs"]) == 2 and (work / "q/student.int8.onnx").exists()
    with pytest.raises(QuantshipError, match="--epochs 0 skips float distillation"):
        api.distill(*args, work / "n", epochs=0, qat=True)
    assert not (work / "n").exists()


def test_qat_bad_input_is_one_line(work: Path) -> None:
    base = [sys.executable, "-m", "quantship", "distill", "--teacher", "qs_qad_nets:teacher",
            "--student", "qs_qad_nets:student", "--train", str(work / "train.npz"), "--epochs",
            "1", "--qat", "--out", str(work / "o")]  # fmt: skip
    p = subprocess.run([*base, "--backend", "onnxruntme"], capture_output=True, text=True,
                       cwd=work / "code", timeout=300)  # fmt: skip
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert "unknown backend 'onnxruntme'" in p.stderr and not (work / "o").exists()
    p = subprocess.run([*base, "--qat-scales", "sometimes"], capture_output=True, text=True,
                       cwd=work / "code", timeout=300)  # fmt: skip
    assert p.returncode == 2 and "invalid choice: 'sometimes'" in p.stderr


def test_bench_labels_a_qdq_model_as_int8(tmp_path: Path) -> None:
    from torch import nn

    from quantship.exporter.torch_export import export_module
    from quantship.measure.targets import _has_qdq

    net = nn.Sequential(nn.Linear(4, 3)).eval()
    onnx.save(_qdq(net, (1, 4)), str(tmp_path / "q.onnx"))
    onnx.save(export_module(net, {"input": (1, 4)}), str(tmp_path / "f.onnx"))
    assert _has_qdq(tmp_path / "q.onnx") and not _has_qdq(tmp_path / "f.onnx")
