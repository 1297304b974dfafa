"""The attention Softmax NaN guard (``Where(IsNaN(p), 0, p)``, as torch.onnx writes it
after a boolean-masked scaled_dot_product_attention) rewritten into one mask check: the
same outputs bit for bit, fully masked rows included, and no rewrite where the pattern
is not exact."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import pytest
from models import run_ort
from onnx import TensorProto, helper, numpy_helper

from quantship.exporter.load import load_model
from quantship.exporter.softmax_guard import rewrite_softmax_guards

B, H, S, D = 2, 3, 5, 4


def _attention(
    opset: int = 17,
    layers: int = 2,
    no_value: float = -np.inf,
    guard_output: bool = False,
    mask_elsewhere: bool = False,
    nan_output: bool = False,
    causal_scores: bool = False,
    guard_second: bool = False,
    mask_shape: tuple[int, ...] = (B, 1, S, S),
) -> onnx.ModelProto:
    """``layers`` attention blocks sharing one boolean mask, each guarded."""
    f = TensorProto.FLOAT
    inits = [
        numpy_helper.from_array(np.array([0.0], np.float32), "zero"),
        numpy_helper.from_array(np.array([no_value], np.float32), "masked"),
        numpy_helper.from_array(np.array([0.5], np.float32), "scale"),
        numpy_helper.from_array(np.tril(np.ones((S, S), bool)), "causal"),
    ]
    nodes = [helper.make_node("Where", ["mask", "zero", "masked"], ["bias"], name="mask_where")]
    outputs = []
    x = "q"
    for i in range(layers):
        nodes += [
            helper.make_node("MatMul", [x, "kt"], [f"s{i}"], name=f"scores{i}"),
            helper.make_node("Mul", [f"s{i}", "scale"], [f"ss{i}"], name=f"scale{i}"),
        ]
        scores = f"ss{i}"
        if causal_scores:  # scores that can hold -inf of their own: a causal mask first
            scores = f"cs{i}"
            nodes.append(helper.make_node("Where", ["causal", f"ss{i}", "masked"], [scores]))
        nodes += [
            helper.make_node("Add", [scores, "bias"], [f"m{i}"], name=f"add{i}"),
            helper.make_node("Softmax", [f"m{i}"], [f"p{i}"], name=f"softmax{i}", axis=-1),
            helper.make_node("IsNaN", [f"p{i}"], [f"n{i}"], name=f"isnan{i}"),
            helper.make_node("Where", [f"n{i}", "zero", f"p{i}"], [f"g{i}"], name=f"guard{i}"),
            helper.make_node("MatMul", ["v", f"g{i}"], [f"ct{i}"], name=f"context{i}")
            if guard_second
            else helper.make_node("MatMul", [f"g{i}", "v"], [f"c{i}"], name=f"context{i}"),
        ]
        if guard_second:  # vᵀ·g, then back to (query, d)
            nodes.append(helper.make_node("Transpose", [f"ct{i}"], [f"c{i}"], perm=[0, 1, 3, 2]))
        if nan_output:
            outputs.append(helper.make_tensor_value_info(f"n{i}", TensorProto.BOOL, [B, H, S, S]))
        x = f"c{i}"
        if guard_output:
            outputs.append(helper.make_tensor_value_info(f"g{i}", f, [B, H, S, S]))
    outputs.append(helper.make_tensor_value_info(x, f, [B, H, S, D]))
    if mask_elsewhere:
        nodes.append(helper.make_node("Add", ["bias", "bias"], ["bias2"], name="other"))
        outputs.append(helper.make_tensor_value_info("bias2", f, [B, 1, S, S]))
    graph = helper.make_graph(
        nodes,
        "attention",
        [
            helper.make_tensor_value_info("q", f, [B, H, S, D]),
            helper.make_tensor_value_info("kt", f, [B, H, D, S]),
            helper.make_tensor_value_info("v", f, [B, H, D, S] if guard_second else [B, H, S, D]),
            helper.make_tensor_value_info("mask", TensorProto.BOOL, list(mask_shape)),
        ],
        outputs,
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _feeds(mask_shape: tuple[int, ...] = (B, 1, S, S)) -> dict[str, npt.NDArray[np.generic]]:
    r = np.random.default_rng(0)
    mask = r.random(mask_shape) > 0.4
    if mask_shape[2] > 1:
        mask[0, 0, 2, :] = False  # a query with every key masked: NaN without the guard
    mask[1] = False  # a whole sentence masked
    return {
        "q": r.standard_normal((B, H, S, D)).astype(np.float32),
        "kt": r.standard_normal((B, H, D, S)).astype(np.float32),
        "v": r.standard_normal((B, H, S, D)).astype(np.float32),
        "mask": mask,
    }


@pytest.mark.parametrize("opset", [17, 18])
def test_guard_rewritten_with_identical_outputs(opset: int) -> None:
    original = _attention(opset)
    model = onnx.ModelProto()
    model.CopyFrom(original)
    assert rewrite_softmax_guards(model) == 2
    onnx.checker.check_model(model, full_check=True)
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["IsNaN"] == 0 and ops["Where"] == 1  # only the mask's own Where is left
    assert ops["ReduceMax"] == 1  # one mask check for both blocks
    x = _feeds()
    want, got = run_ort(original, x)[0], run_ort(model, x)[0]
    assert not np.isnan(got).any()
    # The same values, fully masked rows included (zeros; -0.0 where the guard wrote
    # +0.0), and rows with a key left bit for bit.
    assert np.array_equal(want, got)
    assert np.all(got[1] == 0) and np.all(got[0, :, 2] == 0)
    assert want[0, :, :2].tobytes() == got[0, :, :2].tobytes()


def test_guard_rewritten_for_a_padding_mask_over_keys() -> None:
    """The usual padding mask, one row for every query ([batch, 1, 1, key])."""
    shape = (B, 1, 1, S)
    original = _attention(mask_shape=shape)
    model = onnx.ModelProto()
    model.CopyFrom(original)
    assert rewrite_softmax_guards(model) == 2
    x = _feeds(shape)
    want, got = run_ort(original, x)[0], run_ort(model, x)[0]
    assert np.array_equal(want, got) and not np.isnan(got).any()
    assert want[0].tobytes() == got[0].tobytes()


KEPT = [
    "guard read elsewhere",
    "mask read elsewhere",
    "finite mask value",
    "IsNaN is an output",
    "scores hold -inf",
    "guard is the product's second input",
]


@pytest.mark.parametrize("kind", KEPT)
def test_guard_kept_where_rewrite_would_not_be_exact(kind: str) -> None:
    model = _attention(
        guard_output=kind == "guard read elsewhere",
        mask_elsewhere=kind == "mask read elsewhere",
        no_value=-1e9 if kind == "finite mask value" else -np.inf,
        nan_output=kind == "IsNaN is an output",
        causal_scores=kind == "scores hold -inf",
        guard_second=kind == "guard is the product's second input",
    )
    onnx.checker.check_model(model, full_check=True)
    before = model.SerializeToString()
    assert rewrite_softmax_guards(model) == 0
    assert model.SerializeToString() == before


def test_scores_with_their_own_minus_inf_need_the_guard() -> None:
    """Why "scores hold -inf" is kept: a causal mask on the scores and a padding mask
    that empties the first query's row. With the guard that row is zero; a rewrite that
    trusted the mask alone would leave it NaN."""
    model = _attention(causal_scores=True)
    x = _feeds()
    x["mask"][0, 0, 0, 0] = False  # query 0 sees only key 0 causally; now not even that
    out = run_ort(model, x)[0]
    assert not np.isnan(out).any() and np.all(out[0, :, 0] == 0)


def test_exported_bert_is_prepared_without_guards(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "corpus"))
    import families

    fam = families.bert(tmp_path, "test", dynamo=False)
    source = onnx.load(fam.model)
    guards = sum(n.op_type == "IsNaN" for n in source.graph.node)
    assert guards > 0  # the exporter writes them; if it stops, this test says so
    fm = load_model(fam.model)
    assert not any(n.op_type == "IsNaN" for n in fm.proto.graph.node)
    assert any(f"{guards} attention Softmax NaN guards" in n for n in fm.notes)
    with np.load(fam.calib) as z:
        x = {k: z[k][:8] for k in z.files}
    x["attention_mask"][3] = 0  # a sentence with no token left
    np.testing.assert_allclose(run_ort(fm.proto, x)[0], run_ort(fam.model, x)[0], atol=1e-5)
