"""Loading: opset upgrade, BN folding, shape fixing, and errors for bad files."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from models import images, run_ort, save, tiny_cnn

from quantship.calibration.runner import ort_session
from quantship.errors import DataError, ModelError
from quantship.exporter.load import load_model


def _ops(m: onnx.ModelProto) -> Counter[str]:
    return Counter(n.op_type for n in m.graph.node)


def test_batchnorm_is_folded_and_outputs_unchanged(tmp_path: Path) -> None:
    path = save(tiny_cnn(), tmp_path / "m.onnx")
    fm = load_model(path, data_shapes={"images": (1, 3, 16, 16)})
    assert _ops(fm.proto)["BatchNormalization"] == 0
    assert _ops(fm.proto)["Conv"] == 3
    assert any("graph clean-up: 14 -> 11 nodes" in n for n in fm.notes)
    # the user's node names survive the fusion (--exclude and reports use them)
    assert [n.name for n in fm.proto.graph.node if n.op_type == "Conv"] == [
        "conv1",
        "conv2",
        "conv3",
    ]
    x = {"images": images(4)}
    np.testing.assert_allclose(run_ort(fm.proto, x)[0], run_ort(path, x)[0], rtol=1e-4, atol=1e-4)


def test_old_opset_is_upgraded_to_13(tmp_path: Path) -> None:
    path = save(tiny_cnn(opset=11, batchnorm=False), tmp_path / "m11.onnx")
    fm = load_model(path, data_shapes={"images": (1, 3, 16, 16)})
    assert next(o.version for o in fm.proto.opset_import if o.domain == "") == 13
    assert any("upgraded opset 11 -> 13" in n for n in fm.notes)
    x = {"images": images(2)}
    np.testing.assert_allclose(run_ort(fm.proto, x)[0], run_ort(path, x)[0], rtol=1e-5, atol=1e-5)


def test_dynamic_dims_stay_dynamic(tmp_path: Path) -> None:
    path = save(tiny_cnn(size="S"), tmp_path / "m.onnx")
    fm = load_model(path, data_shapes={"images": (1, 3, 16, 16)})
    assert fm.inputs[0].shape == (None, 3, None, None)
    assert fm.dynamic_batch and fm.dynamic
    dims = fm.proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.HasField("dim_value") for d in dims] == [False, True, False, False]
    for size in (8, 16, 40):  # the prepared model runs at any size
        assert run_ort(fm.proto, {"images": images(2, size=size)})[0].shape == (2, 10)


def test_input_shape_option(tmp_path: Path) -> None:
    path = save(tiny_cnn(size="S"), tmp_path / "m.onnx")
    fm = load_model(path, input_shapes={"images": (2, 3, 32, 32)})
    assert fm.inputs[0].shape == (2, 3, 32, 32)
    with pytest.raises(ModelError, match="conflicts with the model's fixed dimension 1 = 3"):
        load_model(path, input_shapes={"images": (1, 4, 32, 32)})
    with pytest.raises(ModelError, match="model's inputs are: images"):
        load_model(path, input_shapes={"image": (1, 3, 32, 32)})


def test_data_shape_mismatch(tmp_path: Path) -> None:
    path = save(tiny_cnn(), tmp_path / "m.onnx")
    with pytest.raises(DataError, match=r"shape 3x20x20 per sample; the model expects 3x16x16"):
        load_model(path, data_shapes={"images": (1, 3, 20, 20)})


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "nope.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(ModelError, match=r"not a readable ONNX model|holds no graph nodes"):
        load_model(tmp_path / "bad.onnx")
    with pytest.raises(ModelError, match="is a folder"):
        load_model(tmp_path)


def test_external_data_is_loaded(tmp_path: Path) -> None:
    m = tiny_cnn(batchnorm=False)
    onnx.save_model(
        m,
        str(tmp_path / "ext.onnx"),
        save_as_external_data=True,
        location="ext.data",
        size_threshold=0,
    )
    assert (tmp_path / "ext.data").exists()
    fm = load_model(tmp_path / "ext.onnx", data_shapes={"images": (1, 3, 16, 16)})
    # the weights stay on disk: the model in memory holds references to them
    assert fm.weights_dir == tmp_path and fm.proto.ByteSize() < 4096
    x = {"images": images(1)}
    got = ort_session(fm.proto, weights_dir=fm.weights_dir).run(None, x)[0]
    np.testing.assert_allclose(got, run_ort(tmp_path / "ext.onnx", x)[0], rtol=1e-6)
    fm.save(tmp_path / "copy" / "m.onnx")  # its own data file, copied chunk by chunk
    assert (tmp_path / "copy" / "ext.data").is_file()  # named like the user's
    np.testing.assert_allclose(run_ort(tmp_path / "copy" / "m.onnx", x)[0], got, rtol=1e-6)


def test_initializers_listed_as_inputs(tmp_path: Path) -> None:
    m = tiny_cnn(batchnorm=False)
    w = m.graph.initializer[0]
    m.graph.input.append(onnx.helper.make_tensor_value_info(w.name, w.data_type, list(w.dims)))
    path = save(m, tmp_path / "legacy.onnx")
    fm = load_model(path, data_shapes={"images": (1, 3, 16, 16)})
    assert [i.name for i in fm.inputs] == ["images"]


def test_identity_and_dropout_chains_are_bypassed_but_graph_outputs_kept(tmp_path: Path) -> None:
    from onnx import helper

    m = tiny_cnn(batchnorm=False)
    nodes = list(m.graph.node)
    idx = next(i for i, n in enumerate(nodes) if n.name == "conv2")
    src = nodes[idx].input[0]
    chain = [
        helper.make_node("Identity", [src], ["i1"], name="i1"),
        helper.make_node("Dropout", ["i1"], ["i2"], name="d1"),
        helper.make_node("Identity", ["i2"], ["i3"], name="i3"),
    ]
    nodes[idx].input[0] = "i3"
    nodes[idx:idx] = chain
    out = m.graph.output[0].name
    nodes.append(helper.make_node("Identity", [out], ["final"], name="keep"))
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    m.graph.output[0].name = "final"
    x = {"images": images(2)}
    before = run_ort(m, x)[0]
    fm = load_model(save(m, tmp_path / "chains.onnx"))
    assert _ops(fm.proto)["Dropout"] == 0 and _ops(fm.proto)["Identity"] == 0
    assert fm.outputs == ("final",)  # the graph output keeps its name
    conv2 = next(n for n in fm.proto.graph.node if n.name == "conv2")
    producer = next(n for n in fm.proto.graph.node if conv2.input[0] in n.output)
    assert producer.name == "pool1"  # the chain is gone: conv2 reads the pooling directly
    np.testing.assert_array_equal(run_ort(fm.proto, x)[0], before)


def test_inputs_nothing_reads_are_kept(tmp_path: Path) -> None:
    """An input the graph does not read is still an input of every artifact: the
    user's deployment code feeds it."""
    m = tiny_cnn(batchnorm=False)
    m.graph.input.append(
        onnx.helper.make_tensor_value_info("unused", onnx.TensorProto.FLOAT, ["N", 4])
    )
    fm = load_model(save(m, tmp_path / "m.onnx"))
    assert [i.name for i in fm.inputs] == ["images", "unused"]


def test_changed_external_weights_change_the_model_hash(tmp_path: Path) -> None:
    """Weights in external data are part of the model's identity (a calibration cache
    must not fit a model whose weights changed)."""
    onnx.save_model(
        tiny_cnn(batchnorm=False), str(tmp_path / "ext.onnx"), save_as_external_data=True,
        location="ext.data", size_threshold=0,
    )  # fmt: skip
    before = load_model(tmp_path / "ext.onnx").sha256
    data = bytearray((tmp_path / "ext.data").read_bytes())
    data[100] ^= 0x40
    (tmp_path / "ext.data").write_bytes(bytes(data))
    assert load_model(tmp_path / "ext.onnx").sha256 != before


def test_a_model_computing_in_float16_is_one_line(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 4), np.float16), "w")
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "fp16",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["N", 4])], [w],
    )  # fmt: skip
    m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 17)])
    m.ir_version = 8
    with pytest.raises(
        ModelError, match=r"computes in float16 \(tensor 'x'\).*export it in float32"
    ):
        load_model(save(m, tmp_path / "fp16.onnx"))
