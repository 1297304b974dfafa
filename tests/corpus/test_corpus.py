"""Every graph family as published models are written (``families.py``) exports to INT8
on every CPU backend, runs at the shapes its dynamic axes allow, stays close to the
float model, and is no larger than it should be."""

from __future__ import annotations

import importlib.util
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import families
import numpy as np
import numpy.typing as npt
import onnx
import pytest

from quantship import api
from quantship.backends import registry
from quantship.backends.base import SessionSettings
from quantship.backends.onnxruntime import OrtSession
from quantship.exporter.manifest import artifacts_in, float_artifact

BACKENDS = ("onnxruntime", "openvino", "tensorrt")
NEEDS = {
    "torch": ("torch_legacy_cnn", "torch_dynamo_cnn", "bert_legacy", "bert_dynamo", "vit"),
    "transformers": ("bert_legacy", "bert_dynamo", "vit"),
}


def _skip_reason(name: str) -> str | None:
    for module, names in NEEDS.items():
        if name in names and importlib.util.find_spec(module) is None:
            return f"{module} is not installed"
    if importlib.util.find_spec("openvino") is None:
        return "openvino is not installed"
    return None


def _cosine(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> float:
    x, y = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-30))


def _artifact_inputs(path: Path) -> dict[str, list[int | None]]:
    """An artifact's inputs as its runtime reads them: name → dimensions (None:
    dynamic)."""
    if path.suffix == ".xml":
        import openvino as ov

        model = ov.Core().read_model(str(path))
        return {
            i.get_any_name(): [
                None if d.is_dynamic else d.get_length() for d in i.get_partial_shape()
            ]
            for i in model.inputs
        }
    proto = onnx.load(str(path), load_external_data=False)
    return {
        i.name: [
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in i.type.tensor_type.shape.dim
        ]
        for i in proto.graph.input
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("corpus")


@pytest.mark.parametrize("name", sorted(families.BUILDERS))
def test_family_exports_on_every_backend(name: str, corpus: Path) -> None:
    reason = _skip_reason(name)
    if reason:
        pytest.skip(reason)
    fam = families.build(name, corpus)
    out = corpus / name / "out"
    res = api.export(
        fam.model, fam.calib, out, backends=",".join(BACKENDS), held_out=fam.held_out, bench=False
    )
    m = res.manifest
    assert not res.failures
    assert sorted(a["backend"] for a in m["artifacts"]) == sorted(BACKENDS)

    # The prepared float model: never larger than the user's file, same outputs.
    assert m["float_model"]["size_bytes"] <= m["input_model"]["size_bytes"]
    drift = m["float_model"]["max_abs_diff_vs_input"]
    assert drift and all(d is not None and d <= 1e-4 for d in drift.values()), drift

    # Something is INT8, and it stays close to float on the held-out data, in each
    # backend's own runtime.
    for a in m["artifacts"]:
        assert a["plan"]["quantized_nodes"] > 0, a["backend"]
        assert a["fidelity"]["cosine"] >= 1 - fam.max_error, (a["backend"], a["fidelity"])

    # The user's inputs, all of them, and every dimension they leave dynamic stays
    # dynamic in every artifact.
    src = onnx.load(str(fam.model), load_external_data=False)
    inits = {t.name for t in src.graph.initializer}
    declared = [i for i in src.graph.input if i.name not in inits]
    ours = {i["name"]: i["shape"] for i in m["float_model"]["inputs"]}
    assert list(ours) == [i.name for i in declared]
    for vi in declared:
        for axis, d in enumerate(vi.type.tensor_type.shape.dim):
            if not (d.HasField("dim_value") and d.dim_value > 0):
                assert ours[vi.name][axis] is None, (vi.name, axis)
    for art in m["artifacts"]:
        dims = _artifact_inputs(out / art["path"])
        assert list(dims) == list(ours), art["backend"]
        for name, shape in ours.items():
            assert [d is None for d in dims[name]] == [d is None for d in shape], (
                art["path"],
                name,
            )

    # Each artifact runs at the other shapes (batch sizes, sequence lengths 8 … 512) and
    # agrees with the float model there.
    ref = OrtSession(float_artifact(out, m).path, SessionSettings(threads=2))
    for art in artifacts_in(out, m):
        session = registry.get(art.backend).session(art, SessionSettings(threads=2))
        for feeds in fam.other_feeds:
            expected = ref.run(feeds)
            got = session.run(feeds)
            for e, g in zip(expected, got, strict=True):
                assert g.shape == e.shape
                assert _cosine(e, g) >= 0.98, (art.backend, {k: v.shape for k, v in feeds.items()})


# Families whose weights are ≥ 90 % of the file at benchmark scale and export in seconds.
SIZED = ("constant_weights", "external_data", "where_mask", "noop_chains", "shared_weights")


@pytest.mark.parametrize("name", SIZED)
def test_weight_dominated_models_shrink_to_a_quarter(name: str, corpus: Path) -> None:
    """INT8 ≤ 0.30 × float where weights dominate the file, on every backend: weights
    in Constant nodes, external data, shared or behind Cast/Transpose/Reshape chains
    are stored once, as int8, and their float copies are gone."""
    if importlib.util.find_spec("openvino") is None:
        pytest.skip("openvino is not installed")
    fam = families.build(name, corpus / "bench", "bench")
    res = api.export(
        fam.model, fam.calib, corpus / "bench" / name / "out", backends=",".join(BACKENDS),
        bench=False,
    )  # fmt: skip
    m = res.manifest
    src = onnx.load(str(fam.model), load_external_data=True)
    weights = {t.name: t for t in src.graph.initializer}
    weights.update(
        {n.output[0]: n.attribute[0].t for n in src.graph.node if n.op_type == "Constant"}
    )
    total = m["input_model"]["size_bytes"]
    stored = sum(len(t.raw_data) or onnx.numpy_helper.to_array(t).nbytes for t in weights.values())
    assert stored >= 0.9 * total
    # An fp16 weight is already half a float32 one: 8 bits is half of it, not a quarter.
    fp16 = sum(len(t.raw_data) for t in weights.values() if t.data_type == onnx.TensorProto.FLOAT16)
    bound = 0.30 * (total - fp16) + 0.55 * fp16
    for a in m["artifacts"]:
        assert a["size_bytes"] <= bound, (a["backend"], a["size_bytes"] / total)


def test_unsupported_op_fails_in_one_line(tmp_path: Path) -> None:
    """A family that is not supported (an op from a custom domain no runtime here has)
    fails with one line naming the op, exit code 2, and nothing written."""
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"], name="relu"),
            helper.make_node("FancyNorm", ["r"], ["y"], name="norm", domain="com.example"),
        ],
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    )
    model.ir_version = 8
    onnx.save_model(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "c.npz", x=np.ones((4, 4), np.float32))
    p = subprocess.run(
        [sys.executable, "-m", "quantship", "export", str(tmp_path / "m.onnx"),
         "--calib", str(tmp_path / "c.npz"), "--out", str(tmp_path / "o"), "--no-bench"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr
    assert "'FancyNorm'" in lines[0] and "com.example" in lines[0] and "'norm'" in lines[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_outputs_follow_the_umask(tmp_path: Path, mask: int) -> None:
    """The output folder and every file in it get the modes any file the user writes
    gets (a teammate can read them), not the private modes of temporary files."""
    from models import images, save, tiny_cnn

    save(tiny_cnn(), tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", images=images(12))
    old = os.umask(mask)
    try:
        api.export(tmp_path / "m.onnx", tmp_path / "c.npz", tmp_path / "o", bench=False)
    finally:
        os.umask(old)
    out = tmp_path / "o"
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~mask
    for name in ("manifest.json", "calibration.json", "float/model.onnx"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o666 & ~mask, name


def test_fixed_batch_then_a_calibration_cache_alone(tmp_path: Path) -> None:
    """A model whose batch is fixed at 2 exports (held-out samples and the check
    against the user's model run in batches of 2); re-exported from its calibration
    table with only held-out data, its dynamic dimension keeps the data's size."""
    m = onnx.load(str(families.build("where_mask", tmp_path).model))
    for vi in [*m.graph.input, *m.graph.output]:
        vi.type.tensor_type.shape.dim[0].dim_value = 2
    onnx.save(m, str(tmp_path / "fixed.onnx"))
    fam = families.build("where_mask", tmp_path)
    first = api.export(
        tmp_path / "fixed.onnx", fam.calib, tmp_path / "a", held_out=fam.held_out, bench=False
    )
    assert first.manifest["artifacts"][0]["fidelity"]["samples"] == 16
    assert first.manifest["float_model"]["max_abs_diff_vs_input"]["y"] == 0.0
    again = api.export(
        tmp_path / "fixed.onnx", None, tmp_path / "b", held_out=fam.held_out,
        calib_cache=tmp_path / "a" / "calibration.json", bench=False,
    )  # fmt: skip
    shapes = {i["name"]: i["example_shape"] for i in again.manifest["float_model"]["inputs"]}
    assert shapes == {"x": [2, 16, 32], "mask": [2, 16]}
