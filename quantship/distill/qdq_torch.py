"""A QDQ ONNX model as a trainable torch module, and back.

Quantization-aware distillation trains the very graph a backend will run: the model
that backend's plan wrote (``write_qdq``), read node by node. Each activation's
QuantizeLinear → DequantizeLinear pair becomes fake quantization with ONNX's
arithmetic (round half to even, saturate to the zero-point's dtype) and a
straight-through gradient; each int8 weight behind a DequantizeLinear becomes a float
weight quantized on the fly with its scale (narrow range, ±127, as the backends' weight
kernels expect); int32 biases train in float and are requantized with the scales
of their layer's input and weight when written back. Scales are frozen, or learned
as in LSQ (Esser et al., 2020: the straight-through gradient of round(x/s)·s, scaled
by 1/sqrt(elements · qmax)); zero-points stay as calibrated.

``QDQNet.to_onnx()`` writes the trained tensors into a copy of the model: same nodes,
same names, new int8 weights, int32 biases and scales, so every backend that ran the
original runs this one.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from quantship.errors import ModelError

# Ops this interpreter runs, with ONNX's semantics for the attributes it reads.
SUPPORTED = frozenset(
    [
        "Add",
        "AveragePool",
        "Clip",
        "Concat",
        "Conv",
        "Div",
        "Flatten",
        "Gemm",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "HardSigmoid",
        "HardSwish",
        "Identity",
        "LeakyRelu",
        "MatMul",
        "MaxPool",
        "Mul",
        "ReduceMean",
        "Relu",
        "Reshape",
        "Sigmoid",
        "Softmax",
        "Squeeze",
        "Sub",
        "Tanh",
        "Transpose",
        "Unsqueeze",
        "QuantizeLinear",
        "DequantizeLinear",
    ]
)
_QRANGE = {
    onnx.TensorProto.UINT8: (0, 255),
    onnx.TensorProto.INT8: (-128, 127),
}
WEIGHT_QMAX = 127  # narrow range: -127..127


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _round_ste(v: Any) -> Any:
    import torch

    return (torch.round(v) - v).detach() + v


def _grad_scale(s: Any, g: float) -> Any:
    """``s`` in the forward pass, its gradient times ``g`` in the backward (LSQ)."""
    return (s - s * g).detach() + s * g


def _per_axis(t: Any, axis: int, rank: int) -> Any:
    """A per-channel vector shaped to broadcast along ``axis`` of a rank-``rank`` tensor."""
    if t.dim() == 0:
        return t
    shape = [1] * rank
    shape[axis % rank] = -1
    return t.reshape(shape)


class QDQNet:
    """Built lazily (torch is optional): ``QDQNet.build(proto, learn_scales)`` returns
    an ``nn.Module`` whose forward takes the model's one input."""

    @staticmethod
    def build(proto: onnx.ModelProto, learn_scales: bool) -> Any:
        return _module_class()(proto, learn_scales)


def _module_class() -> Any:
    import torch
    import torch.nn.functional as F  # noqa: N812
    from torch import nn

    class _Net(nn.Module):
        def __init__(self, proto: onnx.ModelProto, learn_scales: bool) -> None:
            super().__init__()
            g = proto.graph
            bad = sorted({n.op_type for n in g.node} - SUPPORTED)
            if bad:
                raise ModelError(
                    f"quantization-aware training cannot run op(s) {', '.join(bad)} yet; "
                    f"it runs {', '.join(sorted(SUPPORTED))}"
                )
            inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
            feeds = [i.name for i in g.input if i.name not in inits]
            if len(feeds) != 1 or len(g.output) != 1:
                raise ModelError(
                    "quantization-aware training takes a model with one input and one output; "
                    f"this one has {len(feeds)} and {len(g.output)}"
                )
            self.proto = proto
            self.input_name, self.output_name = feeds[0], g.output[0].name
            self.nodes = list(g.node)
            self.zp_types = {t.name: t.data_type for t in g.initializer}
            self.keys: dict[str, str] = {}  # initializer name -> parameter/buffer key
            self.weight_dq: dict[str, onnx.NodeProto] = {}  # int8 weight name -> its DQ
            self.bias_dq: dict[str, onnx.NodeProto] = {}  # int32 bias name -> its DQ
            scales = {
                n.input[1] for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
            }
            self.scales = scales
            for n in g.node:
                if n.op_type != "DequantizeLinear" or n.input[0] not in inits:
                    continue
                q = inits[n.input[0]]
                s = inits[n.input[1]].astype(np.float32)
                z = (
                    inits[n.input[2]].astype(np.float32)
                    if len(n.input) > 2 and n.input[2]
                    else np.zeros_like(s)
                )
                axis = int(_attrs(n).get("axis", 1))
                rank = q.ndim
                sb = (
                    s.reshape([-1 if d == axis % rank else 1 for d in range(rank)]) if s.ndim else s
                )
                zb = z.reshape(sb.shape) if z.ndim else z
                w = ((q.astype(np.float32) - zb) * sb).astype(np.float32)
                if q.dtype == np.int8:
                    self.weight_dq[n.input[0]] = n
                elif q.dtype == np.int32:
                    self.bias_dq[n.input[0]] = n
                else:
                    raise ModelError(f"a constant of {q.dtype} behind DequantizeLinear '{n.name}'")
                self._param(n.input[0], w, True)
            trainable_float = set()
            for n in g.node:
                if n.op_type in ("Conv", "Gemm", "MatMul"):
                    trainable_float.update(n.input[1:])
            # A bias's scale is its layer's input scale times its weight scale, set when
            # written back: not a parameter of its own.
            bias_scales = {d.input[1] for d in self.bias_dq.values()}
            for name, arr in inits.items():
                if name in self.keys:
                    continue
                if name in scales and name not in bias_scales:
                    self._scale_param(name, arr.astype(np.float32), learn_scales)
                elif arr.dtype == np.float32 and name in trainable_float:
                    self._param(name, arr, True)
                else:
                    self.register_buffer(
                        self._key(name), torch.from_numpy(np.array(arr)), persistent=False
                    )

        def _key(self, name: str) -> str:
            key = f"t{len(self.keys)}"
            self.keys[name] = key
            return key

        def _param(self, name: str, arr: np.ndarray[Any, Any], train: bool) -> None:
            self.register_parameter(
                self._key(name),
                nn.Parameter(torch.from_numpy(np.array(arr, np.float32)), requires_grad=train),
            )

        def _scale_param(self, name: str, arr: np.ndarray[Any, Any], learn: bool) -> None:
            """A scale: frozen, a constant; learned, its calibrated value s0 times exp(u),
            u trained from 0. Adam normalizes a gradient's size, so LSQ's gradient scaling
            does not bound its steps: on s itself each step moves a scale by about the
            learning rate in absolute terms, a large share of an int8 weight scale of 1e-3.
            On u a step moves it by about the learning rate relative to its value, and
            exp(0) = 1 leaves an untrained scale exactly as calibrated."""
            if not learn:
                self._param(name, arr, False)
                return
            key = self._key(name)
            self.register_buffer(key, torch.from_numpy(np.array(arr, np.float32)), persistent=False)
            self.register_parameter(f"{key}_log", nn.Parameter(torch.zeros(arr.shape)))

        def scale_parameter(self, name: str) -> Any:
            """The trained parameter (log-ratio) behind a learned scale, else None."""
            return self._parameters.get(f"{self.keys[name]}_log")

        def trained(self, name: str) -> bool:
            key = self.keys[name]
            if f"{key}_log" in self._parameters:
                return True
            p = self._parameters.get(key)
            return p is not None and p.requires_grad

        def tensor(self, name: str) -> Any:
            key = self.keys[name]
            if key in self._parameters:
                return self._parameters[key]
            log = self._parameters.get(f"{key}_log")
            base: Any = self._buffers[key]
            return base if log is None else base * torch.exp(log)

        def _scale(self, name: str, numel: int, qmax: int) -> Any:
            s = self.tensor(name)
            if not self.trained(name):
                return s
            g = 1.0 / math.sqrt(max(numel, 1) * qmax)
            return _grad_scale(s.abs().clamp_min(1e-12), g)

        def _weight(self, n: onnx.NodeProto) -> Any:
            w = self.tensor(n.input[0])
            axis = int(_attrs(n).get("axis", 1))
            per = max(w.numel() // max(self.tensor(n.input[1]).numel(), 1), 1)
            s = _per_axis(self._scale(n.input[1], per, WEIGHT_QMAX), axis, w.dim())
            return torch.clamp(_round_ste(w / s), -WEIGHT_QMAX, WEIGHT_QMAX) * s

        def forward(self, x: Any) -> Any:
            env: dict[str, Any] = {self.input_name: x}

            def get(name: str) -> Any:
                return env[name] if name in env else self.tensor(name)

            for n in self.nodes:
                env[n.output[0]] = self._run(n, get)
            return env[self.output_name]

        def _zero_point(self, n: onnx.NodeProto, ins: list[Any]) -> tuple[int, int, Any]:
            """The quantized range and zero-point of a Q or DQ (ONNX: uint8 and 0 if absent)."""
            if len(n.input) < 3 or not n.input[2]:
                return 0, 255, 0.0
            dtype = self.zp_types[n.input[2]]
            if dtype not in _QRANGE:
                raise ModelError(f"'{n.name}': quantization-aware training runs int8/uint8 only")
            lo, hi = _QRANGE[dtype]
            return lo, hi, ins[2].float()

        def _run(self, n: onnx.NodeProto, get: Any) -> Any:
            op, a = n.op_type, _attrs(n)
            ins: list[Any] = [get(i) if i else None for i in n.input]
            if op == "QuantizeLinear":
                lo, hi, z = self._zero_point(n, ins)
                s = self._scale(n.input[1], ins[0].numel() // ins[0].shape[0], hi - lo)
                return torch.clamp(_round_ste(ins[0] / s) + z, lo, hi)
            if op == "DequantizeLinear":
                if n.input[0] in self.weight_dq:
                    return self._weight(n)
                if n.input[0] in self.bias_dq:
                    return ins[0]
                lo, hi, z = self._zero_point(n, ins)
                s = self._scale(n.input[1], ins[0].numel() // ins[0].shape[0], hi - lo)
                return (ins[0] - z) * s
            if op == "Conv":
                if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                    raise ModelError(f"Conv '{n.name}': auto_pad is not supported; pads are")
                dims = ins[1].dim() - 2
                pads = list(a.get("pads", [0] * 2 * dims))
                conv = F.conv1d if dims == 1 else F.conv2d if dims == 2 else F.conv3d
                x = ins[0]
                if pads[:dims] != pads[dims:]:
                    x = F.pad(
                        x, [p for i in reversed(range(dims)) for p in (pads[i], pads[i + dims])]
                    )
                    pads = [0] * 2 * dims
                return conv(x, ins[1], ins[2] if len(ins) > 2 else None,
                            stride=a.get("strides", 1), padding=pads[:dims],
                            dilation=a.get("dilations", 1), groups=a.get("group", 1))  # fmt: skip
            if op == "Gemm":
                x, w = ins[0], ins[1]
                x = x.t() if a.get("transA", 0) else x
                w = w.t() if a.get("transB", 0) else w
                y = a.get("alpha", 1.0) * (x @ w)
                return y + a.get("beta", 1.0) * ins[2] if len(ins) > 2 and ins[2] is not None else y
            if op == "MatMul":
                return torch.matmul(ins[0], ins[1])
            if op in ("Add", "Sub", "Mul", "Div"):
                x, y = ins[0], ins[1]
                return (
                    x + y
                    if op == "Add"
                    else x - y
                    if op == "Sub"
                    else x * y
                    if op == "Mul"
                    else x / y
                )
            if op == "Relu":
                return F.relu(ins[0])
            if op == "Clip":
                bounds: list[Any] = [ins[k] if len(ins) > k else None for k in (1, 2)]
                return torch.clamp(ins[0], bounds[0], bounds[1])
            if op == "LeakyRelu":
                return F.leaky_relu(ins[0], a.get("alpha", 0.01))
            if op == "Sigmoid":
                return torch.sigmoid(ins[0])
            if op == "Tanh":
                return torch.tanh(ins[0])
            if op == "HardSigmoid":
                return torch.clamp(a.get("alpha", 0.2) * ins[0] + a.get("beta", 0.5), 0, 1)
            if op == "HardSwish":
                return F.hardswish(ins[0])
            if op in ("MaxPool", "AveragePool"):
                k = list(a["kernel_shape"])
                dims = len(k)
                pads = list(a.get("pads", [0] * 2 * dims))
                if pads[:dims] != pads[dims:]:
                    raise ModelError(f"{op} '{n.name}': asymmetric pads are not supported")
                stride = a.get("strides", [1] * dims)
                ceil = bool(a.get("ceil_mode", 0))
                if op == "MaxPool":
                    return F.max_pool2d(ins[0], k, stride, pads[:dims], a.get("dilations", 1), ceil)
                return F.avg_pool2d(ins[0], k, stride, pads[:dims], ceil,
                                    bool(a.get("count_include_pad", 0)))  # fmt: skip
            if op == "GlobalAveragePool":
                return ins[0].mean(dim=tuple(range(2, ins[0].dim())), keepdim=True)
            if op == "GlobalMaxPool":
                return ins[0].amax(dim=tuple(range(2, ins[0].dim())), keepdim=True)
            if op == "ReduceMean":
                axes = (
                    [int(v) for v in ins[1].tolist()]
                    if len(ins) > 1 and ins[1] is not None
                    else a.get("axes")
                )
                keep = bool(a.get("keepdims", 1))
                if axes is None:
                    return ins[0].mean().reshape([1] * ins[0].dim() if keep else [])
                return ins[0].mean(dim=tuple(axes), keepdim=keep)
            if op == "Flatten":
                axis = a.get("axis", 1)
                return ins[0].reshape(int(np.prod(ins[0].shape[:axis])), -1)
            if op == "Reshape":
                shape = [int(v) for v in ins[1].tolist()]
                shape = [ins[0].shape[i] if v == 0 else v for i, v in enumerate(shape)]
                if shape and shape[0] == 1 and ins[0].shape[0] != 1:
                    # The student was exported at batch 1; training runs batches.
                    shape[0] = ins[0].shape[0]
                return ins[0].reshape(shape)
            if op == "Concat":
                return torch.cat(ins, dim=a["axis"])
            if op == "Transpose":
                return ins[0].permute(*a.get("perm", list(reversed(range(ins[0].dim())))))
            if op in ("Squeeze", "Unsqueeze"):
                axes = (
                    [int(v) for v in ins[1].tolist()] if len(ins) > 1 else list(a.get("axes", []))
                )
                x = ins[0]
                if op == "Squeeze":
                    return x.squeeze(tuple(axes)) if axes else x.squeeze()
                for ax in sorted(v % (x.dim() + len(axes)) for v in axes):
                    x = x.unsqueeze(ax)
                return x
            if op == "Softmax":
                return torch.softmax(ins[0], dim=a.get("axis", -1))
            if op == "Identity":
                return ins[0]
            raise AssertionError(op)

        def to_onnx(self) -> onnx.ModelProto:
            """The model with its trained weights, biases and scales in place."""
            out = onnx.ModelProto()
            out.CopyFrom(self.proto)
            values: dict[str, np.ndarray[Any, Any]] = {}
            with torch.no_grad():
                for name in self.keys:
                    if name in self.weight_dq or name in self.bias_dq or not self.trained(name):
                        continue
                    t = self.tensor(name)
                    v = t.detach().cpu().numpy()
                    values[name] = np.maximum(np.abs(v), 1e-12) if name in self.scales else v
                for name, n in self.weight_dq.items():
                    s = np.maximum(np.abs(self.tensor(n.input[1]).detach().cpu().numpy()), 1e-12)
                    w = self.tensor(name).detach().cpu().numpy()
                    axis = int(_attrs(n).get("axis", 1)) % w.ndim
                    sb = s.reshape([-1 if d == axis else 1 for d in range(w.ndim)]) if s.ndim else s
                    values[name] = np.clip(np.round(w / sb), -WEIGHT_QMAX, WEIGHT_QMAX)
                    values[n.input[1]] = s
            done = set()
            for n in self.nodes:  # int32 biases, with the scales of their layer's operands
                if n.op_type not in ("Conv", "Gemm") or len(n.input) < 3:
                    continue
                dq = next((d for d in self.bias_dq.values() if d.output[0] == n.input[2]), None)
                if dq is None:
                    continue
                s_in, s_w = (self._scale_of(n.input[i], values) for i in (0, 1))
                if s_in is None or s_w is None:
                    raise ModelError(f"bias of '{n.name}': its input or weight has no scale")
                scale = (s_in * s_w).astype(np.float32).reshape(-1)
                b = self.tensor(dq.input[0]).detach().cpu().numpy().astype(np.float64)
                scale = np.broadcast_to(scale, b.shape).astype(np.float32)
                lim = np.iinfo(np.int32)
                values[dq.input[0]] = np.clip(np.round(b / scale), lim.min, lim.max)
                values[dq.input[1]] = scale
                done.add(dq.input[0])
            left = sorted(set(self.bias_dq) - done)
            if left:
                raise ModelError(
                    f"int32 constant(s) {left} feed no Conv/Gemm bias: cannot requantize"
                )
            for t in out.graph.initializer:
                if t.name in values:
                    old = numpy_helper.to_array(t)
                    new = values[t.name].astype(old.dtype).reshape(old.shape)
                    t.CopyFrom(numpy_helper.from_array(new, t.name))
            return out

        def _scale_of(self, tensor: str, values: dict[str, Any]) -> Any:
            """The scale of the DequantizeLinear that produces ``tensor``."""
            for n in self.nodes:
                if n.op_type == "DequantizeLinear" and n.output[0] == tensor:
                    name = n.input[1]
                    if name in values:
                        return np.asarray(values[name], np.float64)
                    v = self.tensor(name).detach().cpu().numpy()
                    return np.abs(v).astype(np.float64)
            return None

    return _Net
