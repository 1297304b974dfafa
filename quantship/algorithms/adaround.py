"""AdaRound (Nagel et al., "Up or Down? Adaptive Rounding for Post-Training
Quantization", ICML 2020; AIMET ships it, no other peer here has it).

Rounding each weight to the nearest int8 step is optimal per weight, not per layer: the
errors of a channel's weights add up in its output. AdaRound learns, per weight,
whether to round down or up, so that the layer's output on calibration data moves as
little as possible: ``h(V) ∈ [0, 1]`` (a rectified sigmoid) is added to
``floor(W / s)`` and ``‖f(x; s·(⌊W/s⌋ + h(V))) − f(x; W)‖²`` is minimised with a
regulariser that pushes every ``h`` to 0 or 1 as its exponent anneals.

Here: per weighted layer of the backend's plan (2-D convolutions, Gemm, MatMul with a
constant weight), with the plan's own per-channel scales; the inputs are crops (a
convolution's) or rows (a matrix product's) of the float model's activations on
calibration samples, so a layer costs a few milliseconds an iteration whatever the
image size. The learned integers are written back as float weights that lie exactly
on the grid (``s · q``), so the backend's usual rounding reproduces them; a channel
whose grid would move (its largest weight rounded away) keeps nearest rounding.
``ITERATIONS`` per layer; layers left when ``MAX_SECONDS`` is spent keep nearest
rounding, and the report says how many were done.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx

from quantship.algorithms.edit import ModelEdit, with_outputs
from quantship.backends.base import Backend, PlanOptions
from quantship.calibration.qparams import QuantParams, quantize, weight_params
from quantship.calibration.table import CalibrationTable
from quantship.errors import QuantshipError
from quantship.exporter.load import FloatModel
from quantship.types import Feed
from quantship.ui import SILENT, UI

ITERATIONS = 300
MAX_SECONDS = 120.0
CROPS = 16  # per sample and layer
OUT_PATCH = 6  # a convolution's crops give this many output positions a side
ROWS = 64  # per sample and matrix product
WARMUP = 0.2  # share of iterations before the regulariser starts
LAMBDA = 0.01
ZETA, GAMMA = 1.1, -0.1


@dataclass(frozen=True)
class Layer:
    node: int
    weight: str
    params: QuantParams
    kind: str  # "conv", "gemm_t" (weight N×K), "matmul" (weight K×N)


@dataclass(frozen=True)
class AdaRoundReport:
    layers: int
    done: int
    kept_nearest: int  # channels that kept nearest rounding (their grid would move)
    seconds: float
    mse_ratio: float  # mean over the layers learned here: output error after / with nearest
    reused: int = 0  # layers whose rounding was learned for another backend's same grid

    def to_json(self) -> dict[str, Any]:
        return {"layers": self.layers, "done": self.done, "channels_nearest": self.kept_nearest,
                "seconds": round(self.seconds, 1), "mse_ratio": round(self.mse_ratio, 4),
                "iterations": ITERATIONS, "reused": self.reused}  # fmt: skip


# Learned weights by what they were learned from (the layer's float weights, its scales,
# its kind): two backends whose plans share a layer's weight grid (ONNX Runtime and
# OpenVINO both store int8 symmetric per-channel weights) share what was learned for it.
Learned = dict[str, "npt.NDArray[np.float32]"]


def adaround(
    fm: FloatModel,
    table: CalibrationTable,
    backend: Backend,
    options: PlanOptions,
    feeds: list[Feed],
    ui: UI = SILENT,
    learned: Learned | None = None,
) -> tuple[FloatModel, AdaRoundReport]:
    """``learned``: weights learned for other backends' plans in this export, reused
    where a layer's weight grid is the same, and added to."""
    try:
        import torch
    except ImportError:
        raise QuantshipError(
            "--algorithms adaround learns roundings with torch: pip install 'quantship[torch]'"
        ) from None
    t0 = time.perf_counter()
    edit = ModelEdit(fm)
    learned = {} if learned is None else learned
    layers = find_layers(edit, backend.plan(fm, table, options))
    keys = {x.node: _key(edit, x) for x in layers}
    todo = [x for x in layers if keys[x.node] not in learned]
    samples = _collect(fm, edit, todo, feeds, keys) if todo else {}
    done, nearest, reused, ratios = 0, 0, 0, []
    with ui.progress("AdaRound", len(layers)) as advance:
        for layer in layers:
            key = keys[layer.node]
            if key in learned:
                edit.set(layer.weight, learned[key])
                done, reused = done + 1, reused + 1
                advance(1)
                continue
            if time.perf_counter() - t0 > MAX_SECONDS:
                continue  # out of time: no more learning, but layers learned already apply
            w = edit.value(layer.weight)
            torch.manual_seed(_seed(key))  # a layer's result depends on that layer alone
            q, ratio = _learn(torch, edit.node(layer.node), layer, w, samples[layer.node])
            new, kept = _on_grid(w, q, layer.params)
            edit.set(layer.weight, new)
            learned[key] = new
            done, nearest = done + 1, nearest + kept
            ratios.append(ratio)
            advance(1)
    report = AdaRoundReport(len(layers), done, nearest, time.perf_counter() - t0,
                            float(np.mean(ratios)) if ratios else 1.0, reused)  # fmt: skip
    return edit.apply(f"AdaRound: {done} of {len(layers)} layer(s)"), report


def find_layers(edit: ModelEdit, plan: Any) -> list[Layer]:
    view = edit.view
    out: list[Layer] = []
    for c in plan.constants:
        if c.role != "weight" or len(c.uses) != 1 or c.params.axis is None:
            continue
        idx = c.uses[0].node
        n = view.nodes[idx]
        if c.uses[0].slot != 1 or edit.weight(n, 1) != c.tensor:
            continue
        ndim = edit.value(c.tensor).ndim
        if n.op_type == "Conv" and ndim == 4:
            kind = "conv"
        elif n.op_type == "Gemm" and ndim == 2 and _attr(n, "transA", 0) == 0:
            kind = "gemm_t" if _attr(n, "transB", 0) else "matmul"
        elif n.op_type == "MatMul" and ndim == 2:
            kind = "matmul"
        else:
            continue
        out.append(Layer(idx, c.tensor, c.params, kind))
    return sorted(out, key=lambda x: x.node)


def _key(edit: ModelEdit, layer: Layer) -> str:
    import hashlib

    h = hashlib.sha256(layer.kind.encode())
    h.update(np.ascontiguousarray(edit.value(layer.weight), np.float32).tobytes())
    h.update(np.ascontiguousarray(layer.params.scale, np.float32).tobytes())
    h.update(str(layer.params.axis).encode())
    h.update(edit.node(layer.node).SerializeToString())
    return h.hexdigest()


def _seed(key: str) -> int:
    return int(key[:8], 16)


def _attr(n: onnx.NodeProto, name: str, default: int) -> int:
    return next((int(a.i) for a in n.attribute if a.name == name), default)


def _ints(n: onnx.NodeProto, name: str, default: list[int]) -> list[int]:
    return next((list(a.ints) for a in n.attribute if a.name == name), default)


def _collect(
    fm: FloatModel, edit: ModelEdit, layers: list[Layer], feeds: list[Feed], keys: dict[int, str]
) -> dict[int, npt.NDArray[np.float32]]:
    """Per layer, crops (conv: padded input windows) or rows (products) of its input,
    drawn with the layer's own generator (seeded by its key), so which other layers are
    learned alongside it changes nothing."""
    from quantship.calibration.runner import ort_session

    names = sorted({edit.node(x.node).input[0] for x in layers})
    sess = ort_session(with_outputs(fm.proto, names), weights_dir=fm.weights_dir)
    rngs = {x.node: np.random.default_rng(_seed(keys[x.node])) for x in layers}
    got: dict[int, list[npt.NDArray[np.float32]]] = {x.node: [] for x in layers}
    for feed in feeds:
        values = dict(zip(names, sess.run(names, feed), strict=True))
        for x in layers:
            node = edit.node(x.node)
            a = np.asarray(values[node.input[0]], np.float32)
            if x.kind == "conv":
                kernel = list(edit.value(x.weight).shape[2:])
                got[x.node].append(_crops(a, node, kernel, rngs[x.node]))
            else:
                got[x.node].append(_rows(a, rngs[x.node]))
    return {k: np.concatenate(v, axis=0) for k, v in got.items()}


def _crops(
    a: npt.NDArray[np.float32], node: onnx.NodeProto, k: list[int], rng: Any
) -> npt.NDArray[np.float32]:
    pads = _ints(node, "pads", [0, 0, 0, 0])
    stride, dil = _ints(node, "strides", [1, 1]), _ints(node, "dilations", [1, 1])
    a = np.pad(a, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    size = [(OUT_PATCH - 1) * stride[i] + (k[i] - 1) * dil[i] + 1 for i in range(2)]
    size = [min(size[i], a.shape[2 + i]) for i in range(2)]
    out = []
    for _ in range(CROPS):
        b = int(rng.integers(a.shape[0]))
        y = int(rng.integers(a.shape[2] - size[0] + 1))
        x = int(rng.integers(a.shape[3] - size[1] + 1))
        out.append(a[b, :, y : y + size[0], x : x + size[1]])
    return np.stack(out)


def _rows(a: npt.NDArray[np.float32], rng: Any) -> npt.NDArray[np.float32]:
    r = a.reshape(-1, a.shape[-1])
    out: npt.NDArray[np.float32] = r[rng.choice(len(r), min(ROWS, len(r)), replace=False)]
    return out


def _learn(
    torch: Any, node: onnx.NodeProto, layer: Layer, w: npt.NDArray[Any], x: npt.NDArray[Any]
) -> tuple[npt.NDArray[np.int64], float]:
    """The learned integers, and the output error they give over nearest rounding's."""
    f = torch.nn.functional
    s = np.asarray(layer.params.scale, np.float32).reshape(
        [-1 if i == layer.params.axis else 1 for i in range(w.ndim)]
    )
    wt, st, xt = torch.tensor(w), torch.tensor(s), torch.tensor(x)
    lo = torch.floor(wt / st)
    rest = (wt / st - lo).clamp(0.01, 0.99)
    v = torch.nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))

    if layer.kind == "conv":
        k = dict(stride=_ints(node, "strides", [1, 1]), dilation=_ints(node, "dilations", [1, 1]),
                 groups=_attr(node, "group", 1))  # fmt: skip

        def run(weight: Any) -> Any:
            return f.conv2d(xt, weight, **k)
    elif layer.kind == "gemm_t":

        def run(weight: Any) -> Any:
            return xt @ weight.T
    else:

        def run(weight: Any) -> Any:
            return xt @ weight

    def soft() -> Any:
        h = (torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)
        return st * (lo + h).clamp(-128, 127), h

    with torch.no_grad():
        target = run(wt)
        nearest = float(((run(st * torch.round(wt / st).clamp(-128, 127)) - target) ** 2).mean())
    opt = torch.optim.Adam([v], lr=1e-2)
    warm = int(WARMUP * ITERATIONS)
    for it in range(ITERATIONS):
        ws, h = soft()
        loss = ((run(ws) - target) ** 2).mean()
        if it >= warm:
            beta = 20 + (2 - 20) * (it - warm) / max(ITERATIONS - warm - 1, 1)
            loss = loss + LAMBDA * (1 - (2 * h - 1).abs() ** beta).sum() / h.numel()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        h = (torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)
        q = (lo + (h >= 0.5).float()).clamp(-128, 127)
        err = float(((run(st * q) - target) ** 2).mean())
    return q.numpy().astype(np.int64), err / nearest if nearest > 0 else 1.0


def _on_grid(
    w: npt.NDArray[Any], q: npt.NDArray[np.int64], p: QuantParams
) -> tuple[npt.NDArray[np.float32], int]:
    """Weights ``s · q`` that the plan's own rounding turns back into ``q``; a channel
    where it would not (its range, and so its scale, would change) keeps ``w``."""
    axis = p.axis if p.axis is not None else 0
    s = np.asarray(p.scale, np.float32).reshape([-1 if i == axis else 1 for i in range(w.ndim)])
    near = np.rint(w / s)
    # The channel's largest weights set its scale: they keep their nearest step.
    peak = np.abs(near) >= np.abs(near).max(axis=tuple(i for i in range(w.ndim) if i != axis),
                                            keepdims=True)  # fmt: skip
    q = np.where(peak, near, q)
    new = (q * s).astype(np.float32)
    back = quantize(new, weight_params(new, axis))
    bad = np.moveaxis(back != q, axis, 0).reshape(q.shape[axis], -1).any(axis=1)
    shape = [-1 if i == axis else 1 for i in range(w.ndim)]
    new = np.where(bad.reshape(shape), w, new).astype(np.float32)
    return new, int(bad.sum())
