"""SmoothQuant (Xiao et al., ICML 2023) for matrix products with a constant weight.

Transformer activations carry a few channels with outliers 10–100× the others; one
per-tensor int8 scale for such an activation leaves the other channels a handful of
levels. Dividing input channel ``j`` by ``s_j`` and multiplying the weight's row ``j``
by it keeps ``X · W`` unchanged and moves the difficulty into the weights, which are
quantized per output channel. ``s_j = max|X_j|^α / max|W_j|^(1−α)``.

Every tensor read by such products (a transformer's Q/K/V projections share one) is a
group, and its products share ``s``. Where a LayerNorm produces it and only the
products read it, the division is folded into the LayerNorm's scale and bias, so the
runtime runs no extra op. Elsewhere (a LayerNorm whose output the residual also reads,
a GELU's output, the attention context) one ``Mul`` by ``1/s`` is inserted on the
products' side: what else reads the tensor reads it unchanged. NNCF's SmoothQuant
for transformers places the same kind of Mul before the same four products of a BERT
layer (read from its OpenVINO IR). ``α`` is chosen per group from ``ALPHAS`` (or
smoothing is left off) by the error of the INT8 product on calibration rows:
``‖XW − Q(X/s)·Q(sW)‖``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from quantship.algorithms.edit import ModelEdit, with_outputs
from quantship.calibration.data import CalibrationData
from quantship.calibration.qparams import dequantize, params_from_range, quantize, weight_params
from quantship.exporter.load import FloatModel
from quantship.ui import SILENT, UI

ALPHAS = (0.25, 0.4, 0.5, 0.6, 0.75, 0.85, 0.95)
ROWS = 2048  # calibration rows (tokens) each α is judged on
SAMPLES = 32


@dataclass(frozen=True)
class Group:
    tensor: str  # the activation the products read
    products: tuple[tuple[int, str, bool], ...]  # (node, weight name, transposed)
    norm: int | None  # the LayerNormalization to fold ``1/s`` into, or None: a Mul


@dataclass(frozen=True)
class SmoothReport:
    groups: int
    smoothed: int
    alphas: dict[str, float]  # activation → α chosen (smoothed ones only)
    error_ratio: float  # mean over smoothed groups: error after / before
    # The activations whose values changed (the new Mul outputs, the LayerNorms folded
    # into); every other tensor of the model computes what it did.
    changed: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"groups": self.groups, "smoothed": self.smoothed,
                "alphas": dict(sorted(self.alphas.items())),
                "error_ratio": round(self.error_ratio, 4)}  # fmt: skip


def find_groups(edit: ModelEdit) -> list[Group]:
    """Per activation read by matrix products with a constant 2-D weight of their own
    (MatMul's B, Gemm's B without transA): those products, and the LayerNorm to fold
    into where it produces the activation and nothing else reads it."""
    view = edit.view
    out: list[Group] = []
    for t in sorted(view.data, key=lambda x: view.producer.get(x, -1)):
        if not view.is_float(t) or t in view.outputs:
            continue
        uses = view.consumers(t)
        prods = []
        for u in uses:
            p = view.nodes[u.node]
            if u.slot != 0 or p.op_type not in ("MatMul", "Gemm"):
                continue
            attrs = {a.name: a.i for a in p.attribute}
            w = edit.weight(p, 1)
            if w is None or attrs.get("transA", 0) or edit.value(w).ndim != 2:
                continue
            prods.append((u.node, w, bool(attrs.get("transB", 0))))
        if not prods:
            continue
        norm = view.producer.get(t)
        foldable = (
            norm is not None
            and len(prods) == len(uses)
            and view.nodes[norm].op_type == "LayerNormalization"
            and all(x in view.initializers for x in view.nodes[norm].input[1:3] if x)
        )
        out.append(Group(t, tuple(prods), norm if foldable else None))
    return out


def smooth(
    fm: FloatModel, data: CalibrationData, samples: int | None, ui: UI = SILENT
) -> tuple[FloatModel, SmoothReport]:
    edit = ModelEdit(fm)
    groups = find_groups(edit)
    if not groups:
        return fm, SmoothReport(0, 0, {}, 1.0)
    rows = _collect(fm, data, [g.tensor for g in groups], samples, ui)
    alphas: dict[str, float] = {}
    ratios: list[float] = []
    changed: list[str] = []
    for g in groups:
        x = rows[g.tensor]
        ws = [edit.value(w).T if tr else edit.value(w) for _, w, tr in g.products]  # K × N
        w_all = np.concatenate(ws, axis=1)
        base = _error(x, w_all, np.ones(x.shape[1], np.float32))
        best, best_alpha = base, None
        for a in ALPHAS:
            s = _scales(x, w_all, a)
            e = _error(x, w_all, s)
            if e < best:
                best, best_alpha = e, a
        if best_alpha is None:
            continue
        s = _scales(x, w_all, best_alpha)
        if g.norm is not None:
            changed.append(g.tensor)
            for slot in (1, 2):  # LayerNorm's scale and bias, made its own if shared
                name = edit.own(g.norm, slot)
                if name is not None:
                    edit.set(name, edit.value(name) / s)
        else:
            first = min(n for n, _, _ in g.products)
            smoothed = edit.insert_mul(g.tensor, first, 1.0 / s,
                                       f"{edit.view.node_name(first)}/smoothquant")  # fmt: skip
            changed.append(smoothed)
            for n, _, _ in g.products:
                edit.set_node_input(n, 0, smoothed)
        for _, w, tr in g.products:
            v = edit.value(w)
            edit.set(w, v * s[None, :] if tr else v * s[:, None])
        alphas[g.tensor] = best_alpha
        ratios.append(best / base if base > 0 else 1.0)
    report = SmoothReport(len(groups), len(alphas), alphas,
                          float(np.mean(ratios)) if ratios else 1.0, tuple(changed))  # fmt: skip
    return edit.apply(
        f"SmoothQuant: {report.smoothed} of {report.groups} product input(s) smoothed"
    ), report


def _scales(x: npt.NDArray[Any], w: npt.NDArray[Any], alpha: float) -> npt.NDArray[np.float32]:
    xmax = np.abs(x).max(axis=0)
    wmax = np.abs(w).max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = xmax**alpha / wmax ** (1 - alpha)
    s = np.where(np.isfinite(s) & (s > 0), s, 1.0)
    return np.clip(s, 1e-4, 1e4).astype(np.float32)


def _error(x: npt.NDArray[Any], w: npt.NDArray[Any], s: npt.NDArray[Any]) -> float:
    """Relative squared error of the INT8 product with smoothing ``s``: activations
    uint8 per tensor over their range, weights int8 per output channel."""
    xs, ws = x / s[None, :], w * s[:, None]
    px = params_from_range(float(xs.min()), float(xs.max()))
    pw = weight_params(ws, axis=1)
    y = x @ w
    yq = dequantize(quantize(xs, px), px) @ dequantize(quantize(ws, pw), pw)
    return float(((y - yq) ** 2).sum() / max(float((y**2).sum()), 1e-30))


def _collect(
    fm: FloatModel, data: CalibrationData, tensors: list[str], samples: int | None, ui: UI
) -> dict[str, npt.NDArray[np.float32]]:
    """Up to ``ROWS`` rows (the last axis: channels) of each tensor on calibration data,
    every row's channel max included through the per-channel maxima."""
    from quantship.calibration.runner import ort_session
    from quantship.guard import held_feeds

    feeds = held_feeds(data, 0, samples, SAMPLES, fm.fixed_batch)
    sess = ort_session(with_outputs(fm.proto, tensors), weights_dir=fm.weights_dir)
    rng = np.random.default_rng(0)
    rows: dict[str, list[npt.NDArray[np.float32]]] = {t: [] for t in tensors}
    peak: dict[str, npt.NDArray[np.float32]] = {}
    with ui.progress("SmoothQuant statistics", len(feeds)) as advance:
        for feed in feeds:
            for t, v in zip(tensors, sess.run(tensors, feed), strict=True):
                r = np.asarray(v, np.float32).reshape(-1, v.shape[-1])
                m = np.abs(r).max(axis=0)
                peak[t] = np.maximum(peak[t], m) if t in peak else m
                take = max(1, ROWS // len(feeds))
                rows[t].append(r[rng.choice(len(r), min(take, len(r)), replace=False)])
            advance(1)
    out: dict[str, npt.NDArray[np.float32]] = {}
    for t in tensors:
        # The channel maxima over all the data, as a row: α is judged against the
        # outliers that set the range, not only those in the sampled rows.
        out[t] = np.concatenate([*rows[t], peak[t][None, :]], axis=0)
    return out
