"""The OpenVINO backend: int8 weights in the IR, INT8 execution in the CPU plugin,
the placement OpenVINO wants, throughput mode, and a clear error without OpenVINO."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip(
    "openvino", reason="OpenVINO is not installed (pip install 'quantship[openvino]')"
)

from quantship import api
from quantship.backends.base import PlanOptions, QuantPlan, SessionSettings
from quantship.backends.openvino import OpenVINOBackend


@pytest.fixture
def exported(tmp_path: Path, cnn_path: Path, calib_npz: Path) -> Path:
    out = tmp_path / "o"
    api.export(cnn_path, calib_npz, out, backends="openvino", bench=False)
    return out


def test_convolution_weights_are_int8_in_the_ir(exported: Path) -> None:
    xml = (exported / "openvino/model.int8.xml").read_text()
    layers = dict(re.findall(r'<layer id="(\d+)"[^>]*type="(\w+)"', xml))
    consts = {i for i, t in layers.items() if t == "Const"}
    i8 = set(re.findall(r'<layer id="(\d+)"[^>]*type="Const"[^>]*>\s*<data element_type="i8"', xml))
    assert i8 and i8 <= consts
    # every Convolution's weight path starts at an i8 constant (Const i8 → Convert → Multiply → Convolution)
    edges = re.findall(
        r'<edge from-layer="(\d+)" from-port="\d+" to-layer="(\d+)" to-port="(\d+)"', xml
    )
    parents: dict[str, list[str]] = {}
    for src, dst, _ in edges:
        parents.setdefault(dst, []).append(src)

    def reaches_i8(node: str, depth: int = 0) -> bool:
        return node in i8 or (
            depth < 6 and any(reaches_i8(p, depth + 1) for p in parents.get(node, []))
        )

    convs = [i for i, t in layers.items() if t == "Convolution"]
    assert len(convs) == 3
    weight_inputs = {dst: [s for s, d, port in edges if d == dst and port == "1"] for dst in convs}
    assert all(reaches_i8(w[0]) for w in weight_inputs.values())
    bin_size = (exported / "openvino/model.int8.bin").stat().st_size
    weights = sum(
        np.prod(t.dims)
        for t in onnx.load(str(exported / "float/model.onnx")).graph.initializer
        if len(t.dims) == 4
    )
    assert bin_size < 0.5 * weights * 4  # int8 weights: well under the float bytes


def test_the_plugin_runs_convolutions_in_int8(exported: Path) -> None:
    import json

    m = json.loads((exported / "manifest.json").read_text())
    (entry,) = m["artifacts"]
    assert entry["metadata"]["integer_kernels"]["Convolution"] == {"total": 3, "integer": 3}
    assert entry["fidelity"]["cosine"] > 0.99


def test_quantization_goes_on_inputs_only(tmp_path: Path, cnn_path: Path, calib_npz: Path) -> None:
    from quantship.calibration.runner import calibrate
    from quantship.calibration.sources import open_data
    from quantship.exporter.load import load_model

    fm = load_model(cnn_path, data_shapes={"images": (1, 3, 16, 16)})
    table = calibrate(fm, open_data(calib_npz, fm.inputs), samples=16)
    plan = OpenVINOBackend().plan(fm, table, PlanOptions())
    quantized_tensors = {a.tensor for a in plan.activations}
    conv_outputs = {n.output[0] for n in fm.proto.graph.node if n.op_type == "Conv"}
    relu_outputs = {n.output[0] for n in fm.proto.graph.node if n.op_type == "Relu"}
    assert "images" in quantized_tensors and relu_outputs & quantized_tensors
    assert not (conv_outputs - {"c3"}) & quantized_tensors  # c3 is a residual Add input
    assert all(a.params.dtype == "uint8" for a in plan.activations)
    # quantization moved above the MaxPool: int8 data goes through it, nothing after it
    assert "r1" in quantized_tensors and "p1" not in quantized_tensors


def test_quantization_moves_above_concat(tmp_path: Path, calib_npz: Path) -> None:
    from models import save, tiny_cnn

    from quantship.calibration.runner import calibrate
    from quantship.calibration.sources import open_data
    from quantship.exporter.load import load_model

    m = tiny_cnn()
    # the pooled p1, concatenated with 3 × p1, feeds conv2
    nodes = list(m.graph.node)
    idx = next(i for i, n in enumerate(nodes) if n.name == "conv2")
    three = onnx.helper.make_node("Mul", ["p1", "three"], ["p3"], name="times3")
    concat = onnx.helper.make_node("Concat", ["p1", "p3"], ["cat"], name="cat", axis=1)
    m.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(3.0, np.float32), "three"))
    w = np.asarray(
        onnx.numpy_helper.to_array(next(i for i in m.graph.initializer if i.name == "conv2.w"))
    )
    m.graph.initializer.remove(next(i for i in m.graph.initializer if i.name == "conv2.w"))
    m.graph.initializer.append(
        onnx.numpy_helper.from_array(np.concatenate([w, w], 1) / 2, "conv2.w")
    )
    nodes[idx].input[0] = "cat"
    nodes[idx:idx] = [three, concat]
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    fm = load_model(save(m, tmp_path / "cat.onnx"), data_shapes={"images": (1, 3, 16, 16)})
    table = calibrate(fm, open_data(calib_npz, fm.inputs), samples=16)
    plan = OpenVINOBackend().plan(fm, table, PlanOptions())
    quantized = {a.tensor for a in plan.activations}
    # int8 data goes through the Concat (and the MaxPool above it): nothing after them
    assert {"r1", "p3"} <= quantized and not {"p1", "cat"} & quantized
    # one range for all of the Concat's data: that of its output, three times r1's
    from quantship.calibration.methods import MethodSpec, activation_params

    def own(t: str) -> float:
        return float(
            activation_params(table[t], MethodSpec(), dtype="uint8", symmetric=False).scale
        )

    scales = {a.tensor: float(a.params.scale) for a in plan.activations}
    assert scales["r1"] == scales["p3"] == own("cat") > 2 * own("r1")


def test_offline_scenario_on_openvinos_async_queue(exported: Path) -> None:
    """The offline scenario keeps OpenVINO's own infer requests (THROUGHPUT hint) full;
    ``--streams`` sets the plugin's streams (at most one per thread: no thread limit here)."""
    from quantship.exporter.manifest import artifacts_in, read_manifest
    from quantship.measure.scenarios import offline

    (art,) = artifacts_in(exported, read_manifest(exported))
    x = {"images": np.zeros((1, 3, 16, 16), np.float32)}
    with OpenVINOBackend().session(art, SessionSettings()) as s:
        for streams in (None, 2):
            q = s.queue(x, streams)
            try:
                runs, secs = offline(q, 0.3)
            finally:
                q.close()
            assert runs > 0 and secs >= 0.3
            assert "OpenVINO infer requests" in q.what and q.size >= 1
            if streams is not None:
                assert q.what.endswith(f"{streams} streams"), q.what


def test_without_openvino_the_error_names_the_extra_and_others_complete(
    tmp_path: Path, cnn_path: Path, calib_npz: Path
) -> None:
    block = (
        "import sys, importlib.abc\n"
        "class B(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, n, p=None, t=None):\n"
        "        if n.split('.')[0] == 'openvino': raise ImportError(n)\n"
        "sys.meta_path.insert(0, B())\n"
        "from quantship.cli import main\n"
        f"raise SystemExit(main(['export', {str(cnn_path)!r}, '--calib', {str(calib_npz)!r}, '--out', "
        f"{str(tmp_path / 'o')!r}, '--backend', 'onnxruntime,openvino', '--no-bench', '-q']))\n"
    )
    p = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "quantship[openvino]" in p.stderr
    assert (tmp_path / "o/onnxruntime/model.int8.onnx").exists()


def test_float_baselines_are_what_openvino_runs_by_default(
    tmp_path: Path, cnn_path: Path, calib_npz: Path
) -> None:
    """The float model is timed at OpenVINO's own default precision (bf16 on CPUs with
    AVX-512 BF16 or AMX), at every other float precision it has here, and the INT8
    artifact is compiled with the plain defaults a user would pass."""
    import openvino as ov

    from quantship import api
    from quantship.backends.base import SessionSettings
    from quantship.backends.openvino import OpenVINOBackend
    from quantship.backends.openvino_session import compile_config

    res = api.export(cnn_path, calib_npz, tmp_path / "o", backends="openvino", bench=True,
                     threads=1)  # fmt: skip
    hint = str(ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")).lower()
    caps = OpenVINOBackend().capabilities()
    assert (caps.default_precision == "bf16") == ("bf16" in hint or "bfloat16" in hint)
    # ... and what the CPU's ISA predicts: bf16 where the CPU computes in bf16.
    from quantship.measure.machine import cpu_info

    isa = set(cpu_info()["isa"])
    assert (caps.default_precision == "bf16") == bool(isa & {"avx512_bf16", "amx_bf16"})
    ov_floats = {b["precision"]: b for b in res.manifest["baselines"] if b["backend"] == "openvino"}
    assert set(ov_floats) == set(caps.float_precisions)
    assert ov_floats[caps.default_precision]["default"] is True
    assert all(b["p50_ms"] > 0 and b["cosine"] > 0.99 for b in ov_floats.values())
    assert "INFERENCE_PRECISION_HINT" not in compile_config(SessionSettings(threads=1))
    v = res.manifest["verdict"]
    assert v["choice"] is not None and v["fastest_float"] is not None
    chosen = [
        e for e in [*res.manifest["baselines"], *res.manifest["artifacts"]] if e["recommended"]
    ]
    assert [e["key"] for e in chosen] == [v["choice"]]


def test_attention_products_stay_float_so_openvino_fuses_the_block(tmp_path: Path) -> None:
    """Multi-head attention as PyTorch exports it: the projections are INT8, the scores
    and context products stay float (with a reason), and OpenVINO then fuses the block
    into one ScaledDotProductAttention; with those products quantized, it does not."""
    pytest.importorskip("torch")
    from dataclasses import replace

    import torch

    from quantship.backends.openvino_graph import convert_model as _convert
    from quantship.calibration.runner import calibrate
    from quantship.calibration.sources import open_data
    from quantship.exporter.load import load_model
    from quantship.exporter.qdq import write_qdq

    class Attention(torch.nn.Module):
        def __init__(self, d: int = 32, heads: int = 4) -> None:
            super().__init__()
            self.heads = heads
            self.qkv, self.proj = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n, t, d = x.shape
            h = self.heads
            q, k, v = self.qkv(x).reshape(n, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
            a = torch.softmax((q * (d // h) ** -0.5) @ k.transpose(-1, -2), dim=-1)
            out: torch.Tensor = self.proj((a @ v).transpose(1, 2).reshape(n, t, d))
            return out

    torch.manual_seed(0)
    path = tmp_path / "attn.onnx"
    torch.onnx.export(Attention().eval(), (torch.randn(1, 12, 32),), str(path),
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}},
                      opset_version=17, dynamo=False)  # fmt: skip
    fm = load_model(path)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "c.npz", x=rng.standard_normal((16, 12, 32)).astype(np.float32))
    table = calibrate(fm, open_data(tmp_path / "c.npz", fm.inputs), samples=16)
    backend = OpenVINOBackend()
    plan = backend.plan(fm, table, PlanOptions())
    kept = {f.node: f.reason for f in plan.float_nodes if f.op_type == "MatMul"}
    assert len(kept) == 2 and all("attention" in r for r in kept.values())
    assert sum(n.endswith("MatMul") for n in plan.compute_nodes) == 2  # qkv and proj

    def ops(p: QuantPlan) -> set[str]:
        return {o.get_type_name() for o in _convert(write_qdq(fm, p), fm).get_ordered_ops()}

    assert "ScaledDotProductAttention" in ops(plan)
    # The same plan with the products quantized (the rule relaxed): no fusion.
    from quantship.backends import openvino_rules as ov_backend
    from quantship.backends.op_rules import input_side_ops
    from quantship.backends.planning import make_plan

    relaxed = {**ov_backend.RULES.ops, "MatMul": input_side_ops()["MatMul"]}
    rules = replace(ov_backend.RULES, ops=relaxed)
    assert "ScaledDotProductAttention" not in ops(make_plan(fm, table, PlanOptions(), rules))
    # The plan search's "attention-int8" variant is that relaxed plan: for attention
    # graphs OpenVINO does not fuse, where the products would otherwise run in float.
    variant = next(v for v in backend.plan_variants() if v.name == "attention-int8")
    int8 = variant.backend.plan(fm, table, PlanOptions())
    assert set(int8.compute_nodes) == set(make_plan(fm, table, PlanOptions(), rules).compute_nodes)
    assert sum(n.endswith("MatMul") for n in int8.compute_nodes) > 2


def test_attention_products_are_quantized_where_openvino_does_not_fuse_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hugging Face BERT with the NaN guard torch.onnx writes after its Softmax (kept
    here by switching off the rewrite that removes it, exporter/softmax_guard.py):
    OpenVINO converts that attention into plain MatMuls, not ScaledDotProductAttention,
    so the products are quantized, and
    run on OpenVINO's integer MatMul kernel: their signed inputs (query, key, value)
    int8 symmetric and quantized where the projections compute them, above the
    reshapes, transposes and scaling between; the Softmax's output uint8 from 0."""
    pytest.importorskip("transformers")
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "corpus"))
    import families

    import quantship.exporter.prepare
    from quantship.backends.openvino_graph import fuses_attention
    from quantship.calibration.runner import calibrate
    from quantship.calibration.sources import open_data
    from quantship.exporter.load import load_model

    monkeypatch.setattr(quantship.exporter.prepare, "rewrite_softmax_guards", lambda m: 0)
    fam = families.bert(tmp_path, "test", dynamo=False)
    fm = load_model(fam.model)
    assert not fuses_attention(fm)
    table = calibrate(fm, open_data(fam.calib, fm.inputs), samples=8)
    plan = OpenVINOBackend().plan(fm, table, PlanOptions())
    assert not any("product" in f.reason for f in plan.float_nodes)
    products = [n for n in plan.quantized_nodes if "/self/MatMul" in n]
    assert len(products) == 2 * 2  # scores and context, in both layers
    view = fm.view()
    ops = {view.nodes[u.node].op_type for a in plan.activations for u in a.uses}
    moved = [a for a in plan.activations
             if {view.nodes[u.node].op_type for u in a.uses} <= {"Reshape", "Transpose"}]  # fmt: skip
    # Query, key and value of both layers, each on its projection's output.
    assert len(moved) == 3 * 2, ops
    for a in moved:
        assert view.nodes[view.producer[a.tensor]].op_type in ("Add", "MatMul")
        assert a.params.dtype == "int8" and int(a.params.zero_point) == 0
    soft = [a for a in plan.activations
            if any(view.nodes[u.node].name.endswith("self/MatMul_1") and u.slot == 0
                   for u in a.uses)]  # fmt: skip
    assert len(soft) == 2
    assert all(a.params.dtype == "uint8" and int(a.params.zero_point) == 0 for a in soft)
    res = api.export(fam.model, fam.calib, tmp_path / "o", backends="openvino", bench=False,
                     samples=16)  # fmt: skip
    (entry,) = res.manifest["artifacts"]
    assert entry["metadata"]["integer_kernels"]["MatMul"] == {"total": 4, "integer": 4}


def test_bert_attention_fuses_once_its_nan_guard_is_rewritten(tmp_path: Path) -> None:
    """The same BERT as prepared by default (its Softmax NaN guards rewritten): OpenVINO
    fuses each attention block into ScaledDotProductAttention, so the plan keeps the
    products float for it and still quantizes every weighted product."""
    pytest.importorskip("transformers")
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "corpus"))
    import families

    from quantship.backends.openvino_graph import fuses_attention
    from quantship.calibration.runner import calibrate
    from quantship.calibration.sources import open_data
    from quantship.exporter.load import load_model

    fam = families.bert(tmp_path, "test", dynamo=False)
    fm = load_model(fam.model)
    assert fuses_attention(fm)
    table = calibrate(fm, open_data(fam.calib, fm.inputs), samples=8)
    plan = OpenVINOBackend().plan(fm, table, PlanOptions())
    why = {f.node: f.reason for f in plan.float_nodes}
    view = fm.view()
    op = {view.node_name(i): n.op_type for i, n in enumerate(view.nodes)}
    products = [n for n in why if op.get(n) == "MatMul"]
    assert len(products) == 2 * 2 and all("attention fusion" in why[n] for n in products)
    weighted = [n for n in plan.quantized_nodes if n.endswith("/MatMul")]
    assert len(weighted) == 2 * 6  # q, k, v, output, and the FFN's two, in both layers


def test_matmul_and_gemm_weights_of_one_width_both_run_int8(tmp_path: Path) -> None:
    """A MatMul's weights (channels on axis 1) and a transposed Gemm's (axis 0) of the
    same width, as a BERT classifier's layers and its pooler: each axis gets its own
    all-zero zero point. One shared zero point left a Subtract on the weights in
    OpenVINO's IR, and those layers ran in bf16/fp32 instead of INT8."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    c = 32
    w1 = numpy_helper.from_array(rng.standard_normal((c, c)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((c, c)).astype(np.float32), "w2")
    b2 = numpy_helper.from_array(np.zeros(c, np.float32), "b2")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm"),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="gemm", transB=1),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, c])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, c])],
        [w1, w2, b2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=rng.standard_normal((64, c)).astype(np.float32))
    res = api.export(tmp_path / "m.onnx", tmp_path / "c.npz", tmp_path / "o",
                     backends="openvino", bench=False, samples=32)  # fmt: skip
    (entry,) = res.manifest["artifacts"]
    assert entry["metadata"]["integer_kernels"]["FullyConnected"] == {"total": 2, "integer": 2}


def test_an_embedding_table_gets_one_scale_per_row(tmp_path: Path) -> None:
    """A word-embedding table whose rows differ in size by 10^4, normalised after the
    lookup (as a transformer's embedding LayerNorm does): with one scale for the table
    the small rows round to zero; per row, OpenVINO gathers each row's scale with it
    and the small rows' outputs come back close."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from quantship.backends.base import Artifact

    rng = np.random.default_rng(0)
    vocab, width = 512, 32
    rows = rng.standard_normal((vocab, width)) * np.logspace(-2, 2, vocab)[:, None]
    inits = [
        numpy_helper.from_array(rows.astype(np.float32), "table"),
        numpy_helper.from_array(np.ones(width, np.float32), "g"),
        numpy_helper.from_array(np.zeros(width, np.float32), "b"),
        numpy_helper.from_array(
            (rng.standard_normal((width, width)) * 0.2).astype(np.float32), "w"
        ),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["e"], name="lookup"),
            helper.make_node("LayerNormalization", ["e", "g", "b"], ["n"], name="ln", axis=-1),
            helper.make_node("MatMul", ["n", "w"], ["y"], name="proj"),
        ],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, width])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "m.onnx")
    ids = rng.integers(0, vocab, (64, 8)).astype(np.int64)
    np.savez(tmp_path / "c.npz", ids=ids)
    res = api.export(tmp_path / "m.onnx", tmp_path / "c.npz", tmp_path / "o",
                     backends="openvino", bench=False, samples=32)  # fmt: skip
    (entry,) = res.manifest["artifacts"]
    assert "lookup" not in {f["node"] for f in entry["plan"]["float_nodes"]}
    art = Artifact("openvino", "openvino-ir", tmp_path / "o",
                   tuple(f["path"] for f in entry["files"]), "int8")  # fmt: skip
    small = {"ids": np.arange(8, dtype=np.int64)[None, :]}  # rows of size ~0.01
    want = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, small)[0]
    with OpenVINOBackend().session(art, SessionSettings(precision="fp32")) as s:
        (got,) = s.run(small)
    cos = float(np.sum(got * want) / (np.linalg.norm(got) * np.linalg.norm(want)))
    assert cos > 0.99, cos
