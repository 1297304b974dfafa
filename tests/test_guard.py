"""The accuracy guard: sensitivity finds a planted fragile layer, the budget loop
returns no more nodes to float than needed, exclusion patterns and their errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from models import save
from onnx import TensorProto, helper, numpy_helper

from quantship import api
from quantship.errors import QuantshipError


def fragile_model() -> onnx.ModelProto:
    """images → conv1 → Clip(0, 6) → conv2 → Relu → conv3 → GAP → Flatten → Gemm.
    The calibration data has rare huge pixels: only conv1 reads them (the Clip stops
    them), so only conv1's input grid is ruined by its range."""
    rng = np.random.default_rng(0)

    def w(*shape: int) -> np.ndarray:
        out: np.ndarray = (rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))).astype(
            np.float32
        )
        return out

    inits = [
        numpy_helper.from_array(a, n)
        for n, a in [
            ("w1", w(8, 3, 3, 3)),
            ("w2", w(8, 8, 3, 3)),
            ("w3", w(8, 8, 3, 3)),
            ("fc", w(10, 8)),
            ("lo", np.asarray(0.0, np.float32)),
            ("hi", np.asarray(6.0, np.float32)),
        ]
    ]
    nodes = [
        helper.make_node("Conv", ["images", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c1", "lo", "hi"], ["k1"], name="clip1"),
        helper.make_node("Conv", ["k1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3"], ["c3"], name="conv3", pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c3"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc"], ["logits"], name="head", transB=1),
    ]
    g = helper.make_graph(
        nodes,
        "fragile",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.fixture
def fragile(tmp_path: Path) -> tuple[Path, Path, Path]:
    model = save(fragile_model(), tmp_path / "fragile.onnx")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 3, 16, 16)).astype(np.float32)
    x[::16, 0, 3, 3] = 1000.0  # rare outliers in the calibration set
    np.savez(tmp_path / "calib.npz", images=x)
    np.savez(tmp_path / "held.npz", images=rng.standard_normal((16, 3, 16, 16)).astype(np.float32))
    return model, tmp_path / "calib.npz", tmp_path / "held.npz"


def test_sensitivity_ranks_the_planted_region_first(
    tmp_path: Path, fragile: tuple[Path, Path, Path]
) -> None:
    model, calib, held = fragile
    rows = api.sensitivity(model, calib, tmp_path / "sens", held_out=held, method="minmax")
    assert rows[0]["nodes"] == ["conv1"]
    assert rows[0]["error"] > 10 * rows[1]["error"]
    assert rows[0]["gain"] > 10 * max(r["gain"] for r in rows[1:])
    saved = json.loads((tmp_path / "sens/sensitivity.json").read_text())
    assert saved["regions"][0]["node"] == "conv1"
    assert saved["regions"][0]["gain"] > 0.5 * saved["all_int8_error"] > 0
    assert (tmp_path / "sens/sensitivity.png").stat().st_size > 1000


def test_budget_returns_exactly_what_is_needed(
    tmp_path: Path, fragile: tuple[Path, Path, Path]
) -> None:
    model, calib, held = fragile
    plain = api.export(
        model, calib, tmp_path / "plain", held_out=held, method="minmax", bench=False
    )
    before = 1 - plain.manifest["artifacts"][0]["fidelity"]["cosine"]
    res = api.export(
        model,
        calib,
        tmp_path / "guarded",
        held_out=held,
        method="minmax",
        max_drop=0.01,
        bench=False,
    )
    g = res.manifest["artifacts"][0]["accuracy_guard"]
    assert before > 0.01 and g["before"] > 0.01
    assert g["float_nodes"] == ["conv1"] and g["after"] <= 0.01
    assert 1 - res.manifest["artifacts"][0]["fidelity"]["cosine"] <= 0.01
    assert g["evaluations"] <= 1 + 2 * 6


def test_no_fallback_when_the_budget_already_holds(
    tmp_path: Path, fragile: tuple[Path, Path, Path]
) -> None:
    model, _, held = fragile
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "clean.npz", images=rng.standard_normal((32, 3, 16, 16)).astype(np.float32))
    res = api.export(
        model, tmp_path / "clean.npz", tmp_path / "o", held_out=held, max_drop=0.05, bench=False
    )
    g = res.manifest["artifacts"][0]["accuracy_guard"]
    assert g["float_nodes"] == [] and g["evaluations"] == 1


def test_exclusions(tmp_path: Path, fragile: tuple[Path, Path, Path]) -> None:
    model, calib, _ = fragile
    res = api.export(
        model, calib, tmp_path / "o", exclude=["conv[12]"], exclude_ops=["Gemm"], bench=False
    )
    kept = {f["node"] for f in res.manifest["artifacts"][0]["plan"]["float_nodes"]}
    assert {"conv1", "conv2", "head"} <= kept and "conv3" not in kept


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (
            ["--keep-float", "re:convv1"],
            "--keep-float re:convv1 matches no node (whole names are matched); did you mean 'conv1'",
        ),
        (["--keep-float", "re:conv["], "is not a regular expression"),
        (
            ["--keep-float", "op:Softmax"],
            "--keep-float op:Softmax: the model has no such op; its ops: Clip, Conv",
        ),
        (
            ["--keep-float", "op:Conw"],
            "--keep-float op:Conw: the model has no such op; did you mean 'Conv'",
        ),
        # the old flags, kept for a release, say what to use instead and still work
        (
            ["--exclude", "convv1"],
            "--exclude is deprecated and goes in the next release: use --keep-float re:",
        ),
        (["--exclude-op", "Softmax"], "--keep-float op:Softmax: the model has no such op"),
        (["--max-drop", "2"], "--max-drop is a budget on 1 - cosine, in (0, 1)"),
    ],
)
def test_exclusion_errors(
    tmp_path: Path, fragile: tuple[Path, Path, Path], args: list[str], fragment: str
) -> None:
    model, calib, _ = fragile
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "quantship",
            "export",
            str(model),
            "--calib",
            str(calib),
            "--out",
            str(tmp_path / "o"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert fragment in p.stderr
    assert not (tmp_path / "o").exists()


def test_latency_cost_of_the_fallback_is_recorded(
    tmp_path: Path, fragile: tuple[Path, Path, Path]
) -> None:
    model, calib, held = fragile
    res = api.export(
        model, calib, tmp_path / "o", held_out=held, method="minmax", max_drop=0.01, threads=1
    )
    g = res.manifest["artifacts"][0]["accuracy_guard"]
    assert g["p50_ms_guarded"] > 0 and g["p50_ms_all_int8"] > 0
    assert g["latency_cost"] == pytest.approx(g["p50_ms_guarded"] / g["p50_ms_all_int8"])
    assert not list((tmp_path / "o").rglob("*unguarded*"))


def test_task_metric_budget(
    tmp_path: Path, fragile: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task metric scored against labels in the held-out data: here regression
    targets (the float model's logits) scored by negative mean squared error."""
    from models import run_ort

    model, calib, _ = fragile
    rng = np.random.default_rng(3)
    x = rng.standard_normal((64, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "held_labeled.npz", images=x, labels=run_ort(model, {"images": x})[0])
    (tmp_path / "qs_metrics.py").write_text(
        "import numpy as np\n"
        "def neg_mse(outputs, labels):\n"
        "    return -float(np.mean((outputs[0] - labels) ** 2))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    res = api.export(
        model,
        calib,
        tmp_path / "o",
        held_out=tmp_path / "held_labeled.npz",
        method="minmax",
        max_drop=0.002,
        metric="qs_metrics:neg_mse",
        bench=False,
    )
    g = res.manifest["artifacts"][0]["accuracy_guard"]
    assert g["before"] > 0.002
    assert g["after"] <= 0.002 and g["float_nodes"] == ["conv1"]
    with pytest.raises(QuantshipError, match="needs labels"):
        api.export(
            model,
            calib,
            tmp_path / "o2",
            held_out=calib,
            max_drop=0.05,
            metric="qs_metrics:neg_mse",
            bench=False,
        )


def test_transformer_defaults_keep_layernorm_softmax_gelu_float(tmp_path: Path) -> None:
    """No backend has an integer rule for LayerNorm, Softmax or GELU (Erf): they stay
    float in every plan, while the weight MatMuls around them are quantized."""
    torch = pytest.importorskip("torch", reason="needs torch to build the encoder")
    from quantship import examples
    from quantship.backends import registry
    from quantship.backends.base import PlanOptions
    from quantship.calibration.runner import calibrate
    from quantship.calibration.sources import open_data
    from quantship.exporter.load import load_model
    from quantship.exporter.torch_export import export_module

    torch.manual_seed(0)
    net = examples.BertLike(layers=1, d=32, heads=2, ffn=64).eval()
    path = tmp_path / "enc.onnx"
    path.write_bytes(export_module(net, {"hidden": (1, 16, 32)}).SerializeToString())
    np.savez(tmp_path / "c.npz", hidden=examples.token_embeddings(24, seq=16, d=32))
    fm = load_model(path, data_shapes={"hidden": (1, 16, 32)})
    table = calibrate(fm, open_data(tmp_path / "c.npz", fm.inputs))
    names = {n.name or f"{n.op_type}_{i}": n.op_type for i, n in enumerate(fm.proto.graph.node)}
    kept_float = {k for k, op in names.items() if op in ("LayerNormalization", "Softmax", "Erf")}
    assert len(kept_float) == 4  # 2 LayerNorm, 1 Softmax, 1 Erf (GELU)
    for backend in ("onnxruntime", "openvino", "tensorrt"):
        plan = registry.get(backend).plan(fm, table, PlanOptions())
        quantized = set(plan.quantized_nodes)
        assert not kept_float & quantized, backend
        weight_matmuls = {c.uses[0].node for c in plan.constants if c.role == "weight"}
        assert len(weight_matmuls) >= 4, backend  # qkv, out, ff1, ff2 (+ the head)


def test_detection_decoding_after_the_last_conv_stays_float(tmp_path: Path) -> None:
    """conv head → Sigmoid → Mul(stride) → Add(grid) and Sigmoid(a)·Sigmoid(b): the
    decoding after the last weighted layer stays float; the convolutions do not."""
    from quantship.backends import registry
    from quantship.backends.base import PlanOptions
    from quantship.calibration.runner import calibrate
    from quantship.calibration.sources import open_data
    from quantship.exporter.load import load_model

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(a, n)
        for n, a in [
            ("w1", rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3),
            ("wh", rng.standard_normal((4, 8, 1, 1)).astype(np.float32) * 0.3),
            ("stride", np.asarray(8.0, np.float32)),
            ("grid", rng.uniform(0, 16, (1, 4, 16, 16)).astype(np.float32)),
        ]
    ]
    nodes = [
        helper.make_node("Conv", ["images", "w1"], ["c1"], name="backbone", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
        helper.make_node("Conv", ["r1", "wh"], ["h"], name="head"),
        helper.make_node("Sigmoid", ["h"], ["s"], name="decode_sigmoid"),
        helper.make_node("Mul", ["s", "stride"], ["m"], name="decode_scale"),
        helper.make_node("Add", ["m", "grid"], ["boxes"], name="decode_offset"),
        helper.make_node("Mul", ["s", "s"], ["conf"], name="decode_conf"),
    ]
    g = helper.make_graph(
        nodes,
        "det",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("conf", TensorProto.FLOAT, None),
        ],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path = save(m, tmp_path / "det.onnx")
    np.savez(tmp_path / "c.npz", images=rng.standard_normal((16, 3, 16, 16)).astype(np.float32))
    fm = load_model(path, data_shapes={"images": (1, 3, 16, 16)})
    table = calibrate(fm, open_data(tmp_path / "c.npz", fm.inputs))
    for backend in ("onnxruntime", "openvino", "tensorrt"):
        plan = registry.get(backend).plan(fm, table, PlanOptions())
        assert {"backbone", "head"} <= set(plan.quantized_nodes), backend
        assert not {"decode_sigmoid", "decode_scale", "decode_offset", "decode_conf"} & set(
            plan.quantized_nodes
        )
    ort_plan = registry.get("onnxruntime").plan(fm, table, PlanOptions())
    reasons = {f.node: f.reason for f in ort_plan.float_nodes}
    assert reasons["decode_conf"] == "output decoding after the last weighted layer"
