"""Tiny ONNX models built in code for the tests, with seeded random weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper


def _init(name: str, arr: npt.NDArray[Any]) -> TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(arr), name)


def tiny_cnn(
    *,
    opset: int = 17,
    batch: int | str = "N",
    size: int | str = 16,
    channels: int = 8,
    classes: int = 10,
    batchnorm: bool = True,
    seed: int = 0,
) -> onnx.ModelProto:
    """Conv-BN-Relu → MaxPool → Conv-BN → Add(residual) → Relu → GlobalAveragePool →
    Flatten → Gemm: the structures the ORT plan must fuse (residual Add, pooling,
    a classifier head). ``size`` may be a string for a dynamic height/width."""
    rng = np.random.default_rng(seed)
    c = channels
    inits: list[TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def conv(name: str, x: str, cin: int, cout: int, out: str, bn: bool) -> None:
        w = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / (cin * 9))).astype(np.float32)
        inits.append(_init(f"{name}.w", w))
        if bn:
            nodes.append(
                helper.make_node(
                    "Conv", [x, f"{name}.w"], [f"{name}.y"], name=name, pads=[1, 1, 1, 1]
                )
            )
            inits.extend(
                [
                    _init(f"{name}.gamma", rng.uniform(0.5, 1.5, cout).astype(np.float32)),
                    _init(f"{name}.beta", rng.uniform(-0.2, 0.2, cout).astype(np.float32)),
                    _init(f"{name}.mean", rng.uniform(-0.1, 0.1, cout).astype(np.float32)),
                    _init(f"{name}.var", rng.uniform(0.5, 1.5, cout).astype(np.float32)),
                ]
            )
            nodes.append(
                helper.make_node(
                    "BatchNormalization",
                    [f"{name}.y", f"{name}.gamma", f"{name}.beta", f"{name}.mean", f"{name}.var"],
                    [out],
                    name=f"{name}.bn",
                    epsilon=1e-5,
                )
            )
        else:
            b = rng.uniform(-0.1, 0.1, cout).astype(np.float32)
            inits.append(_init(f"{name}.b", b))
            nodes.append(
                helper.make_node(
                    "Conv", [x, f"{name}.w", f"{name}.b"], [out], name=name, pads=[1, 1, 1, 1]
                )
            )

    conv("conv1", "images", 3, c, "c1", batchnorm)
    nodes.append(helper.make_node("Relu", ["c1"], ["r1"], name="relu1"))
    nodes.append(
        helper.make_node(
            "MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]
        )
    )
    conv("conv2", "p1", c, c, "c2", batchnorm)
    nodes.append(helper.make_node("Relu", ["c2"], ["r2"], name="relu2"))
    conv("conv3", "r2", c, c, "c3", batchnorm)
    nodes.append(helper.make_node("Add", ["c3", "p1"], ["s"], name="add"))
    nodes.append(helper.make_node("Relu", ["s"], ["r3"], name="relu3"))
    nodes.append(helper.make_node("GlobalAveragePool", ["r3"], ["g"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["g"], ["f"], name="flatten", axis=1))
    fc_w = (rng.standard_normal((classes, c)) * 0.5).astype(np.float32)
    inits += [
        _init("fc.w", fc_w),
        _init("fc.b", rng.uniform(-0.1, 0.1, classes).astype(np.float32)),
    ]
    nodes.append(helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(
        nodes,
        "tiny_cnn",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset >= 15 else 7
    onnx.checker.check_model(model)
    return model


def wide_mlp(seed: int = 0, hidden: int = 256) -> onnx.ModelProto:
    """Input → MatMul → Add → Relu → MatMul: weights dominate the file size."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((256, hidden)) * 0.05).astype(np.float32)
    b1 = rng.standard_normal(hidden).astype(np.float32) * 0.1
    w2 = (rng.standard_normal((hidden, 10)) * 0.1).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="bias1"),
        helper.make_node("Relu", ["hb"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2"),
    ]
    graph = helper.make_graph(
        nodes,
        "wide_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        [_init("w1", w1), _init("b1", b1), _init("w2", w2)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path


def images(n: int, size: int = 16, seed: int = 1) -> npt.NDArray[np.float32]:
    """Image-like calibration data: smooth positive fields plus noise."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 1, (n, 3, 1, 1)).astype(np.float32)
    return (base + 0.3 * rng.standard_normal((n, 3, size, size))).astype(np.float32)


def run_ort(
    model: onnx.ModelProto | Path, feeds: dict[str, npt.NDArray[Any]]
) -> list[npt.NDArray[Any]]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    src = str(model) if isinstance(model, Path) else model.SerializeToString()
    s = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in s.run(None, feeds)]


def silu_cnn(seed: int = 0) -> onnx.ModelProto:
    """Conv → SiLU (Sigmoid, Mul) → Conv → SiLU → Conv → Relu → GlobalAveragePool →
    Flatten → Gemm, with a dynamic batch: a detector's blocks in small."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    x, cin = "images", 3
    for k, act in enumerate(("silu", "silu", "relu")):
        w = (rng.standard_normal((8, cin, 3, 3)) * np.sqrt(2.0 / (cin * 9))).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"w{k}"),
            numpy_helper.from_array(rng.uniform(-0.1, 0.1, 8).astype(np.float32), f"b{k}"),
        ]
        nodes.append(
            helper.make_node(
                "Conv", [x, f"w{k}", f"b{k}"], [f"c{k}"], name=f"conv{k}", pads=[1, 1, 1, 1]
            )
        )
        if act == "silu":
            nodes += [
                helper.make_node("Sigmoid", [f"c{k}"], [f"s{k}"], name=f"sig{k}"),
                helper.make_node("Mul", [f"c{k}", f"s{k}"], [f"a{k}"], name=f"mul{k}"),
            ]
        else:
            nodes.append(helper.make_node("Relu", [f"c{k}"], [f"a{k}"], name=f"relu{k}"))
        x, cin = f"a{k}", 8
    fc = (rng.standard_normal((10, 8)) * 0.3).astype(np.float32)
    inits.append(numpy_helper.from_array(fc, "fc.w"))
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.w"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "silu_cnn",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def attention() -> onnx.ModelProto:
    """x → Q, K, V projections → Q·Kᵀ → Div → Softmax → ·V → output projection."""
    rng = np.random.default_rng(0)
    d = 16
    inits = [numpy_helper.from_array((rng.standard_normal((d, d)) * 0.3).astype(np.float32), n)
             for n in ("wq", "wk", "wv", "wo")]  # fmt: skip
    inits.append(numpy_helper.from_array(np.array(4.0, np.float32), "sqrt_d"))
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"], name="proj_q"),
        helper.make_node("MatMul", ["x", "wk"], ["k"], name="proj_k"),
        helper.make_node("MatMul", ["x", "wv"], ["v"], name="proj_v"),
        helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["s"], name="scores"),
        helper.make_node("Div", ["s", "sqrt_d"], ["s2"], name="scale"),
        helper.make_node("Softmax", ["s2"], ["p"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["c"], name="context"),
        helper.make_node("MatMul", ["c", "wo"], ["y"], name="proj_o"),
    ]
    graph = helper.make_graph(
        nodes, "attention", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, d])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
