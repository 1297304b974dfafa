"""Attention masks stay float, whichever form they take."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from quantship import api


def test_a_float_mask_scaled_by_minus_10000_stays_float(tmp_path: Path) -> None:
    """Older BERT exports take the mask as a float input and add ``(1 - mask) ·
    -10000`` to the scores: the ops between it and the Softmax stay float (quantized,
    the scores would share a grid with -10000 and the attention would be noise)."""
    rng = np.random.default_rng(0)
    d = 32
    inits = [
        numpy_helper.from_array((rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32), n)
        for n in ("wq", "wk", "wv")
    ]
    inits += [
        numpy_helper.from_array(np.asarray(1.0, np.float32), "one"),
        numpy_helper.from_array(np.asarray(-10000.0, np.float32), "big"),
        numpy_helper.from_array(np.asarray([1], np.int64), "axis1"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"], name="q"),
        helper.make_node("MatMul", ["x", "wk"], ["k"], name="k"),
        helper.make_node("MatMul", ["x", "wv"], ["v"], name="v"),
        helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["s"], name="scores"),
        helper.make_node("Sub", ["one", "mask"], ["inv"], name="invert"),
        helper.make_node("Mul", ["inv", "big"], ["mb"], name="mask_scale"),
        helper.make_node("Unsqueeze", ["mb", "axis1"], ["mu"], name="mask_rows"),
        helper.make_node("Add", ["s", "mu"], ["sm"], name="masked"),
        helper.make_node("Softmax", ["sm"], ["p"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["y"], name="context"),
    ]
    g = helper.make_graph(
        nodes, "float_mask",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", d]),
         helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", "T"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "T", d])], inits,
    )  # fmt: skip
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "m.onnx"))

    def data(n: int, seed: int) -> dict[str, np.ndarray]:
        r = np.random.default_rng(seed)
        lengths = r.integers(8, 17, n)
        mask = (np.arange(16)[None] < lengths[:, None]).astype(np.float32)
        return {"x": r.standard_normal((n, 16, d)).astype(np.float32), "mask": mask}

    np.savez(tmp_path / "c.npz", **data(32, 1))  # type: ignore[arg-type]
    np.savez(tmp_path / "h.npz", **data(16, 2))  # type: ignore[arg-type]
    res = api.export(
        tmp_path / "m.onnx", tmp_path / "c.npz", tmp_path / "o", held_out=tmp_path / "h.npz",
        bench=False,
    )  # fmt: skip
    (art,) = res.manifest["artifacts"]
    kept = {f["node"]: f["reason"] for f in art["plan"]["float_nodes"]}
    assert kept.get("masked") == "attention masking before Softmax"
    assert art["fidelity"]["cosine"] > 0.999
