"""Graph families as published models are written, built from code (no downloads).

Each builder writes a model file (and, where the family is about that, its external
data) plus calibration and held-out data into a folder, and says how to check it. The
models are small for the tests (``scale="test"``) and larger for the benchmark
(``scale="bench"``), where weights dominate the file as they do in real models.

Families, and the exporter or convention each stands for:

- ``torch_legacy_cnn`` / ``torch_dynamo_cnn``: a residual CNN through
  ``torch.onnx.export(dynamo=False)`` (Constant nodes, Identity-shared weights, BN
  unfolded when exported in training-free eval mode) and ``dynamo=True`` (opset 18,
  initializers, onnxscript's own clean-up).
- ``opset_11`` … ``opset_21``: one hand-built CNN at every opset the runtimes read.
- ``constant_weights``: weights in ``Constant`` nodes, BatchNormalization unfolded,
  ``-1`` written as a fixed dimension of the output, opset 11 (paddle2onnx, tf2onnx).
- ``external_data``: weights in a separate file beside the model.
- ``bert_legacy`` / ``bert_dynamo``: a Hugging Face ``BertModel`` from a config:
  int64 ``input_ids``/``attention_mask``/``token_type_ids`` with dynamic batch and
  sequence axes, attention masking with the dtype's lowest value.
- ``vit``: a Hugging Face ``ViTModel`` from a config (patch Conv, cls token, position
  embeddings added as constants).
- ``shared_weights``: one initializer read by two MatMuls and one by two Convs.
- ``noop_chains``: fp16 weights behind Cast, Identity and Dropout chains, weights
  behind Transpose and Reshape.
- ``two_dtypes``: a float image and an int64 class index (an embedding lookup).
- ``uint8_image``: uint8 NHWC pixels, cast and scaled inside the graph.
- ``where_mask``: attention scores masked by ``Where(mask, scores, -inf)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

Scale = Literal["test", "bench"]
Arrays = dict[str, npt.NDArray[Any]]


@dataclass(frozen=True)
class Family:
    """A built family: the model file, its data, and what to check."""

    name: str
    model: Path
    calib: Path
    held_out: Path
    # Other input shapes the INT8 model must run at (dynamic axes), as feeds.
    other_feeds: tuple[Arrays, ...] = ()
    notes: str = ""
    # 1 - cosine to the float model that INT8 must stay within (held-out data).
    max_error: float = 0.02
    extra: dict[str, Any] = field(default_factory=dict)


def _save_npz(path: Path, arrays: Arrays) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def _images(n: int, size: int, seed: int) -> npt.NDArray[np.float32]:
    """Smooth image-like fields (low-frequency content plus a little noise)."""
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((n, 3, 4, 4)).astype(np.float32)
    up = np.repeat(np.repeat(coarse, size // 4, axis=2), size // 4, axis=3)
    return (up + 0.2 * rng.standard_normal((n, 3, size, size))).astype(np.float32)


def _save_graph(
    folder: Path,
    name: str,
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    inits: list[TensorProto],
) -> Path:
    """An opset-17 model of these nodes, saved as ``folder/model.onnx``."""
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save_model(model, str(path))
    return path


def _data_family(
    name: str, folder: Path, path: Path, data: Callable[[int, int], Arrays], n: int,
    other: tuple[Arrays, ...],
) -> Family:  # fmt: skip
    """Calibration (``n`` samples) and held-out (16) data drawn by ``data(n, seed)``."""
    calib = _save_npz(folder / "calib.npz", data(n, 1))
    held = _save_npz(folder / "held.npz", data(16, 2))
    return Family(name, path, calib, held, other)


def _image_family(
    name: str, folder: Path, model: onnx.ModelProto | Path, size: int, input_name: str, **kw: Any
) -> Family:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    if isinstance(model, onnx.ModelProto):
        onnx.save_model(model, str(path))
    else:
        path = model
    calib = _save_npz(folder / "calib.npz", {input_name: _images(48, size, 1)})
    held = _save_npz(folder / "held.npz", {input_name: _images(16, size, 2)})
    other = ({input_name: _images(3, size, 3)},)
    return Family(name, path, calib, held, other, **kw)


# --- torch CNNs ----------------------------------------------------------------------


def _torch_cnn(width: int) -> Any:
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.a = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
            self.b = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(x + self.b(torch.relu(self.a(x))))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(
                nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
            )
            self.pool = nn.MaxPool2d(2)
            self.blocks = nn.Sequential(Block(width), Block(width))
            self.drop = nn.Dropout(0.1)
            self.fc = nn.Linear(width, 10)

        def forward(self, x: torch.Tensor) -> Any:
            y = self.blocks(self.pool(self.stem(x)))
            return self.fc(self.drop(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1)))

    torch.manual_seed(0)
    net = Net()
    # BatchNorm statistics of a trained network, not the identity of a fresh one.
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                bn: Any = m
                bn.running_mean.uniform_(-0.2, 0.2)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.2, 0.2)
    return net.eval()


def _torch_export(
    net: Any, args: tuple[Any, ...], path: Path, names: list[str], outputs: list[str],
    dynamic: dict[str, dict[int, str]], dynamo: bool, opset: int | None = None,
) -> Path:  # fmt: skip
    import contextlib
    import io
    import logging
    import warnings

    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        if dynamo:
            dims = {axis: torch.export.Dim.AUTO for axis in range(2)}
            shapes = tuple({a: dims[a] for a in dynamic[n]} for n in names)
            torch.onnx.export(
                net, args, str(path), input_names=names, output_names=outputs, dynamo=True,
                dynamic_shapes=shapes, opset_version=opset or 18, external_data=False,
            )  # fmt: skip
        else:
            torch.onnx.export(
                net, args, str(path), input_names=names, output_names=outputs, dynamo=False,
                dynamic_axes=dynamic, opset_version=opset or 17,
            )  # fmt: skip
    return path


def torch_cnn(folder: Path, scale: Scale, dynamo: bool) -> Family:
    import torch

    width = 16 if scale == "test" else 64
    size = 32 if scale == "test" else 96
    net = _torch_cnn(width)
    x = torch.from_numpy(_images(2, size, 0))
    path = _torch_export(
        net, (x,), folder / "model.onnx", ["images"], ["logits"],
        {"images": {0: "batch"}, "logits": {0: "batch"}}, dynamo,
    )  # fmt: skip
    name = "torch_dynamo_cnn" if dynamo else "torch_legacy_cnn"
    return _image_family(name, folder, path, size, "images")


# --- hand-built graphs ---------------------------------------------------------------


def _conv_net(
    rng: np.random.Generator, width: int, size: int, *, opset: int, constants: bool,
    batchnorm: bool = True,
) -> onnx.ModelProto:  # fmt: skip
    """Conv-BN-Relu ×3 with a residual Add, MaxPool, GlobalAveragePool, Reshape, Gemm.
    With ``constants`` every weight is a ``Constant`` node, as paddle2onnx writes."""
    inits: list[TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(name: str, arr: npt.NDArray[Any]) -> str:
        t = numpy_helper.from_array(np.ascontiguousarray(arr), name)
        if constants:
            nodes.append(helper.make_node("Constant", [], [name], name=f"{name}.const", value=t))
        else:
            inits.append(t)
        return name

    def conv(name: str, x: str, cin: int, cout: int, out: str) -> None:
        w = rng.standard_normal((cout, cin, 3, 3)).astype(np.float32) * np.sqrt(2 / (cin * 9))
        y = f"{name}.y" if batchnorm else out
        ins = [x, const(f"{name}.w", w.astype(np.float32))]
        if not batchnorm:
            ins.append(const(f"{name}.b", rng.uniform(-0.1, 0.1, cout).astype(np.float32)))
        nodes.append(helper.make_node("Conv", ins, [y], name=name, pads=[1, 1, 1, 1]))
        if batchnorm:
            params = [
                const(f"{name}.gamma", rng.uniform(0.5, 1.5, cout).astype(np.float32)),
                const(f"{name}.beta", rng.uniform(-0.2, 0.2, cout).astype(np.float32)),
                const(f"{name}.mean", rng.uniform(-0.1, 0.1, cout).astype(np.float32)),
                const(f"{name}.var", rng.uniform(0.5, 1.5, cout).astype(np.float32)),
            ]
            nodes.append(
                helper.make_node(
                    "BatchNormalization", [y, *params], [out], name=f"{name}.bn", epsilon=1e-5
                )
            )

    c = width
    conv("conv1", "images", 3, c, "c1")
    nodes.append(helper.make_node("Relu", ["c1"], ["r1"], name="relu1"))
    nodes.append(
        helper.make_node(
            "MaxPool", ["r1"], ["p1"], name="pool", kernel_shape=[2, 2], strides=[2, 2]
        )
    )
    conv("conv2", "p1", c, c, "c2")
    nodes.append(helper.make_node("Relu", ["c2"], ["r2"], name="relu2"))
    conv("conv3", "r2", c, c, "c3")
    nodes.append(helper.make_node("Add", ["c3", "p1"], ["s"], name="add"))
    nodes.append(helper.make_node("Relu", ["s"], ["r3"], name="relu3"))
    nodes.append(helper.make_node("GlobalAveragePool", ["r3"], ["g"], name="gap"))
    shape = const("flat.shape", np.asarray([-1, c], np.int64))
    nodes.append(helper.make_node("Reshape", ["g", shape], ["f"], name="flatten"))
    fc_w = const("fc.w", (rng.standard_normal((c, 10)) / np.sqrt(c)).astype(np.float32))
    fc_b = const("fc.b", rng.uniform(-0.1, 0.1, 10).astype(np.float32))
    nodes.append(helper.make_node("Gemm", ["f", fc_w, fc_b], ["logits"], name="fc"))
    out_batch: int | str = -1 if constants else "N"
    graph = helper.make_graph(
        nodes,
        "conv_net",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    if constants:
        # paddle2onnx writes an unknown dimension as -1 in dim_value.
        graph.output[0].type.tensor_type.shape.dim[0].dim_value = int(out_batch)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 6 if opset <= 11 else (7 if opset < 15 else 8)
    if opset >= 21:
        model.ir_version = 10
    return model


def opset_cnn(folder: Path, scale: Scale, opset: int) -> Family:
    width = 16 if scale == "test" else 64
    model = _conv_net(np.random.default_rng(opset), width, 32, opset=opset, constants=False)
    return _image_family(f"opset_{opset}", folder, model, 32, "images")


def constant_weights(folder: Path, scale: Scale) -> Family:
    width = 16 if scale == "test" else 96
    model = _conv_net(np.random.default_rng(5), width, 32, opset=11, constants=True)
    return _image_family("constant_weights", folder, model, 32, "images")


def external_data(folder: Path, scale: Scale) -> Family:
    width = 16 if scale == "test" else 96
    model = _conv_net(
        np.random.default_rng(6), width, 32, opset=17, constants=False, batchnorm=False
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    # onnx appends to an existing weights file: a rebuilt family would carry every
    # earlier build's tensors as dead bytes.
    (folder / "model.weights").unlink(missing_ok=True)
    onnx.save_model(
        model, str(path), save_as_external_data=True, location="model.weights", size_threshold=1024
    )
    return _image_family("external_data", folder, path, 32, "images")


def shared_weights(folder: Path, scale: Scale) -> Family:
    """Two MatMuls read one weight; two Convs read one kernel (tied layers)."""
    rng = np.random.default_rng(7)
    c = 8 if scale == "test" else 128
    size = 16
    k = (rng.standard_normal((c, c, 3, 3)) * np.sqrt(2 / (9 * c))).astype(np.float32)
    w = (rng.standard_normal((c * 4, c * 4)) / np.sqrt(4 * c)).astype(np.float32)
    stem = (rng.standard_normal((c, 3, 3, 3)) * 0.3).astype(np.float32)
    head = (rng.standard_normal((c * 4, 10)) / np.sqrt(4 * c)).astype(np.float32)
    inits = [
        numpy_helper.from_array(a, n)
        for a, n in ((k, "k"), (w, "w"), (stem, "stem"), (head, "head"))
    ]
    inits.append(numpy_helper.from_array(np.asarray([-1, c * 4], np.int64), "flat"))
    nodes = [
        helper.make_node("Conv", ["x", "stem"], ["s0"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["s0"], ["s1"], name="r0"),
        helper.make_node("Conv", ["s1", "k"], ["a0"], name="conv_a", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a0"], ["a1"], name="r1"),
        helper.make_node("Conv", ["a1", "k"], ["b0"], name="conv_b", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["b0"], ["b1"], name="r2"),
        helper.make_node("AveragePool", ["b1"], ["p"], name="pool", kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Reshape", ["p", "flat"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "w"], ["m1"], name="mm1"),
        helper.make_node("Relu", ["m1"], ["m2"], name="r3"),
        helper.make_node("MatMul", ["m2", "w"], ["m3"], name="mm2"),
        helper.make_node("Add", ["m3", "f"], ["m4"], name="res"),
        helper.make_node("MatMul", ["m4", "head"], ["y"], name="head"),
    ]  # fmt: skip
    path = _save_graph(
        folder, "shared_weights", nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        inits,
    )  # fmt: skip
    return _image_family("shared_weights", folder, path, size, "x")


def noop_chains(folder: Path, scale: Scale) -> Family:
    """fp16 weights behind Cast; Identity and Dropout on activations and weights; a
    weight stored transposed behind Transpose, another behind Reshape."""
    rng = np.random.default_rng(8)
    d = 32 if scale == "test" else 512
    w1 = (rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float16)
    w2t = (rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32)  # stored as (out, in)
    w3 = (rng.standard_normal((d * d,)) / np.sqrt(d)).astype(np.float32)
    b1 = rng.uniform(-0.1, 0.1, d).astype(np.float32)
    inits = [
        numpy_helper.from_array(w1, "w1.fp16"),
        numpy_helper.from_array(w2t, "w2.t"),
        numpy_helper.from_array(w3, "w3.flat"),
        numpy_helper.from_array(b1, "b1"),
        numpy_helper.from_array(np.asarray([d, d], np.int64), "w3.shape"),
    ]
    nodes = [
        helper.make_node("Identity", ["x"], ["x1"], name="in.identity"),
        helper.make_node("Cast", ["w1.fp16"], ["w1.cast"], name="w1.cast", to=TensorProto.FLOAT),
        helper.make_node("Identity", ["w1.cast"], ["w1"], name="w1.identity"),
        helper.make_node("MatMul", ["x1", "w1"], ["h1"], name="mm1"),
        helper.make_node("Add", ["h1", "b1"], ["h2"], name="bias1"),
        helper.make_node("Relu", ["h2"], ["h3"], name="relu1"),
        helper.make_node("Dropout", ["h3"], ["h4"], name="drop1"),
        helper.make_node("Identity", ["h4"], ["h5"], name="mid.identity"),
        helper.make_node("Transpose", ["w2.t"], ["w2"], name="w2.transpose", perm=[1, 0]),
        helper.make_node("MatMul", ["h5", "w2"], ["h6"], name="mm2"),
        helper.make_node("Relu", ["h6"], ["h7"], name="relu2"),
        helper.make_node("Reshape", ["w3.flat", "w3.shape"], ["w3"], name="w3.reshape"),
        helper.make_node("Dropout", ["h7"], ["h8"], name="drop2"),
        helper.make_node("MatMul", ["h8", "w3"], ["y"], name="mm3"),
    ]
    path = _save_graph(
        folder, "noop_chains", nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", d])],
        inits,
    )  # fmt: skip

    def data(n: int, seed: int) -> Arrays:
        return {"x": np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)}

    return _data_family("noop_chains", folder, path, data, 64, (data(5, 3),))


def uint8_image(folder: Path, scale: Scale) -> Family:
    """uint8 pixels in NHWC, as detectors are often published: Cast → scale by 1/255 →
    Transpose to NCHW inside the graph, then convolutions."""
    rng = np.random.default_rng(11)
    c = 16 if scale == "test" else 96
    w1 = (rng.standard_normal((c, 3, 3, 3)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((c, c, 3, 3)) * np.sqrt(2 / (9 * c))).astype(np.float32)
    fc = (rng.standard_normal((c, 10)) / np.sqrt(c)).astype(np.float32)
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(fc, "fc"),
        numpy_helper.from_array(np.asarray(1 / 255, np.float32), "inv255"),
        numpy_helper.from_array(np.asarray([-1, c], np.int64), "flat"),
    ]
    nodes = [
        helper.make_node("Cast", ["pixels"], ["f"], name="to_float", to=TensorProto.FLOAT),
        helper.make_node("Mul", ["f", "inv255"], ["s"], name="scale"),
        helper.make_node("Transpose", ["s"], ["x"], name="nchw", perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Reshape", ["g", "flat"], ["v"], name="flatten"),
        helper.make_node("MatMul", ["v", "fc"], ["y"], name="head"),
    ]
    path = _save_graph(
        folder, "uint8_image", nodes,
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["N", 32, 32, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        inits,
    )  # fmt: skip

    def data(n: int, seed: int) -> Arrays:
        img = (_images(n, 32, seed).transpose(0, 2, 3, 1) * 60 + 128).clip(0, 255)
        return {"pixels": img.astype(np.uint8)}

    return _data_family("uint8_image", folder, path, data, 48, (data(3, 3),))


def two_dtypes(folder: Path, scale: Scale) -> Family:
    """A float image and an int64 class index whose embedding is added to the features."""
    rng = np.random.default_rng(9)
    c = 16 if scale == "test" else 128
    classes = 12
    conv_w = (rng.standard_normal((c, 3, 3, 3)) * 0.3).astype(np.float32)
    emb = rng.standard_normal((classes, c)).astype(np.float32) * 0.5
    fc = (rng.standard_normal((c, 10)) / np.sqrt(c)).astype(np.float32)
    inits = [
        numpy_helper.from_array(conv_w, "conv.w"),
        numpy_helper.from_array(emb, "emb"),
        numpy_helper.from_array(fc, "fc"),
        numpy_helper.from_array(np.asarray([-1, c], np.int64), "flat"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "conv.w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Reshape", ["g", "flat"], ["f"], name="flatten"),
        helper.make_node("Gather", ["emb", "label"], ["e"], name="embed", axis=0),
        helper.make_node("Add", ["f", "e"], ["fe"], name="condition"),
        helper.make_node("MatMul", ["fe", "fc"], ["y"], name="fc"),
    ]
    path = _save_graph(
        folder, "two_dtypes", nodes,
        [
            helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 16, 16]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        inits,
    )  # fmt: skip

    def data(n: int, seed: int) -> Arrays:
        r = np.random.default_rng(seed)
        return {"image": _images(n, 16, seed), "label": r.integers(0, classes, n).astype(np.int64)}

    return _data_family("two_dtypes", folder, path, data, 48, (data(4, 3),))


def where_mask(folder: Path, scale: Scale) -> Family:
    """Self-attention over a sequence with a boolean padding mask applied by
    ``Where(mask, scores, -inf)`` before Softmax; dynamic batch and sequence axes."""
    rng = np.random.default_rng(10)
    d = 32 if scale == "test" else 256
    wq, wk, wv, wo = (
        (rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32) for _ in range(4)
    )
    inits = [
        numpy_helper.from_array(a, n) for a, n in ((wq, "wq"), (wk, "wk"), (wv, "wv"), (wo, "wo"))
    ]
    inits += [
        numpy_helper.from_array(np.asarray(-np.inf, np.float32), "neg_inf"),
        numpy_helper.from_array(np.asarray(1 / np.sqrt(d), np.float32), "scale"),
        numpy_helper.from_array(np.asarray([1], np.int64), "axis1"),
    ]  # fmt: skip
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"], name="q"),
        helper.make_node("MatMul", ["x", "wk"], ["k"], name="k"),
        helper.make_node("MatMul", ["x", "wv"], ["v"], name="v"),
        helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["s0"], name="scores"),
        helper.make_node("Mul", ["s0", "scale"], ["s1"], name="scale"),
        helper.make_node("Unsqueeze", ["mask", "axis1"], ["m"], name="mask.unsqueeze"),
        helper.make_node("Where", ["m", "s1", "neg_inf"], ["s2"], name="mask"),
        helper.make_node("Softmax", ["s2"], ["p"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["ctx"], name="context"),
        helper.make_node("MatMul", ["ctx", "wo"], ["o"], name="out"),
        helper.make_node("Add", ["o", "x"], ["y"], name="residual"),
    ]
    path = _save_graph(
        folder, "where_mask", nodes,
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", d]),
            helper.make_tensor_value_info("mask", TensorProto.BOOL, ["N", "T"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "T", d])],
        inits,
    )  # fmt: skip

    def data(n: int, t: int, seed: int) -> Arrays:
        r = np.random.default_rng(seed)
        lengths = r.integers(t // 2, t + 1, n)
        mask = np.arange(t)[None, :] < lengths[:, None]
        return {"x": r.standard_normal((n, t, d)).astype(np.float32), "mask": mask}

    other = tuple(data(2, t, 3 + t) for t in (8, 64, 128))
    return _data_family("where_mask", folder, path, lambda n, s: data(n, 16, s), 48, other)


# --- Hugging Face transformers from configs -------------------------------------------

TOKEN_LENGTHS = (8, 64, 128, 512)


def _bert_config(scale: Scale) -> Any:
    from transformers import BertConfig

    if scale == "test":
        return BertConfig(
            vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=256, max_position_embeddings=512,
        )  # fmt: skip
    # The shape of a small published sentence encoder (MiniLM-L6: 6 layers of 384).
    return BertConfig(
        vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
        intermediate_size=1536, max_position_embeddings=512,
    )  # fmt: skip


def tokens(n: int, t: int, vocab: int, seed: int) -> Arrays:
    r = np.random.default_rng(seed)
    lengths = r.integers(max(2, t // 2), t + 1, n)
    mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.int64)
    ids = r.integers(1000 if vocab > 2000 else 5, vocab, (n, t)).astype(np.int64) * mask
    types = ((np.arange(t)[None, :] >= lengths[:, None] // 2) * mask).astype(np.int64)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def bert_encoder(cfg: Any) -> Any:
    """A ``BertModel`` from ``cfg`` (seeded, eval mode) taking ids, mask and token types
    positionally and returning ``last_hidden_state``, as an exporter wants it."""
    import torch
    from transformers import BertModel

    torch.manual_seed(0)
    # The default attention (SDPA): exported, it masks with Where(mask, scores, -inf).
    model: Any = BertModel(cfg, add_pooling_layer=False)
    model.eval()

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = model

        def forward(self, ids: Any, mask: Any, types: Any) -> Any:
            out = self.bert(input_ids=ids, attention_mask=mask, token_type_ids=types)
            return out.last_hidden_state

    return Encoder().eval()


def bert(folder: Path, scale: Scale, dynamo: bool) -> Family:
    import torch

    cfg = _bert_config(scale)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    ex = tokens(2, 16, cfg.vocab_size, 0)
    args = tuple(torch.from_numpy(ex[n]) for n in names)
    dyn = {n: {0: "batch", 1: "sequence"} for n in names}
    path = _torch_export(
        bert_encoder(cfg), args, folder / "model.onnx", names, ["last_hidden_state"],
        {**dyn, "last_hidden_state": {0: "batch", 1: "sequence"}}, dynamo,
    )  # fmt: skip
    calib = _save_npz(folder / "calib.npz", tokens(48, 32, cfg.vocab_size, 1))
    held = _save_npz(folder / "held.npz", tokens(16, 32, cfg.vocab_size, 2))
    other = tuple(tokens(2, t, cfg.vocab_size, 3 + t) for t in TOKEN_LENGTHS)
    name = "bert_dynamo" if dynamo else "bert_legacy"
    return Family(name, path, calib, held, other, max_error=0.02)


def vit(folder: Path, scale: Scale) -> Family:
    import torch
    from transformers import ViTConfig, ViTModel

    if scale == "test":
        cfg = ViTConfig(
            image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
            num_attention_heads=4, intermediate_size=256,
        )  # fmt: skip
    else:
        cfg = ViTConfig(
            image_size=96, patch_size=16, hidden_size=384, num_hidden_layers=6,
            num_attention_heads=6, intermediate_size=1536,
        )  # fmt: skip
    torch.manual_seed(0)
    model: Any = ViTModel(cfg, add_pooling_layer=False)
    model.eval()

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vit = model

        def forward(self, x: Any) -> Any:
            return self.vit(pixel_values=x).last_hidden_state

    size: int = cfg.image_size if isinstance(cfg.image_size, int) else 32
    x = torch.from_numpy(_images(2, size, 0))
    path = _torch_export(
        Encoder().eval(), (x,), folder / "model.onnx", ["pixel_values"], ["last_hidden_state"],
        {"pixel_values": {0: "batch"}, "last_hidden_state": {0: "batch"}}, dynamo=False,
    )  # fmt: skip
    return _image_family("vit", folder, path, size, "pixel_values")


BUILDERS: dict[str, Callable[[Path, Scale], Family]] = {
    "torch_legacy_cnn": lambda f, s: torch_cnn(f, s, dynamo=False),
    "torch_dynamo_cnn": lambda f, s: torch_cnn(f, s, dynamo=True),
    **{f"opset_{v}": (lambda f, s, v=v: opset_cnn(f, s, v)) for v in range(11, 22)},  # type: ignore[misc]
    "constant_weights": constant_weights,
    "external_data": external_data,
    "bert_legacy": lambda f, s: bert(f, s, dynamo=False),
    "bert_dynamo": lambda f, s: bert(f, s, dynamo=True),
    "vit": vit,
    "shared_weights": shared_weights,
    "noop_chains": noop_chains,
    "two_dtypes": two_dtypes,
    "uint8_image": uint8_image,
    "where_mask": where_mask,
}


def build(name: str, folder: Path, scale: Scale = "test") -> Family:
    return BUILDERS[name](folder / name, scale)


WORDS = [
    "the",
    "a",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "zero",
    "red",
    "green",
    "blue",
    "small",
    "large",
    "model",
    "runs",
    "fast",
    "slow",
    "on",
    "cpu",
    "with",
    "int8",
    "and",
    "float",
    "numbers",
    "read",
    "write",
    "line",
    "digit",
    "image",
    "quantized",
    "layer",
    "weight",
    "scale",
    "point",
    "sentence",
    "token",
    "length",
    "short",
    "long",
    "every",
    "each",
]


def sentences(n: int, seed: int, longest: int = 24) -> list[str]:
    """``n`` sentences of 3 to ``longest`` words from a small vocabulary, seeded."""
    r = np.random.default_rng(seed)
    return [" ".join(r.choice(WORDS, int(r.integers(3, longest + 1)))) for _ in range(n)]


def save_tokenizer(folder: Path, corpus: list[str], vocab_size: int = 200) -> Path:
    """A BERT-style WordPiece tokenizer trained on ``corpus`` with the ``tokenizers``
    package ([CLS] … [SEP], lower-cased), saved as ``folder/tokenizer.json`` the way
    ``save_pretrained`` writes a fast tokenizer; nothing is downloaded."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(
        corpus, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special)
    )
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder


TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
