"""Empirical bias correction (Nagel et al. 2019, §4.2; NNCF's FastBiasCorrection does
the same per layer and is on by default there; ONNX Runtime's quantizer has none).

Rounding weights to int8 shifts each output channel's mean: ``E[W_q x] ≠ E[W x]``, and
a shift that survives into the next layer's activations adds up through the network.
Here the backend's own plan is written as a QDQ model, run beside the float model on
calibration samples in ONNX Runtime, and each quantized layer's output (before its
activation) is compared per channel: the mean difference is subtracted from that
layer's bias (a bias is added where there was none), where it stands clear of its
own noise over the samples (``MIN_T`` standard errors). The comparison is of the whole
INT8 model, upstream errors included; ``ROUNDS`` passes let each correction see the
ones before it. A round is kept only if the INT8 model's outputs on the samples come
closer to the float model's (1 − cosine); otherwise the model is left as it was.

A layer's bias is its Conv / ConvTranspose / Gemm bias, or the constant a MatMul's
output is added to (a Linear layer as exporters write it).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx

from quantship.algorithms.edit import ModelEdit, with_outputs
from quantship.backends.base import Backend, PlanOptions
from quantship.calibration.table import CalibrationTable
from quantship.exporter.load import FloatModel
from quantship.types import Feed
from quantship.ui import SILENT, UI

ROUNDS = 2


@dataclass(frozen=True)
class Target:
    node: int  # the layer
    tensor: str  # the output compared (the Add's, for MatMul + Add)
    bias_node: int  # the node whose input holds the bias
    bias_slot: int
    axis: int  # the channel axis of ``tensor``


@dataclass(frozen=True)
class BiasReport:
    layers: int
    samples: int
    rounds: int  # rounds of correction kept (0: none made the INT8 outputs closer)
    mean_shift: float  # mean |correction| / mean |bias| over the layers, the last round kept
    error_before: float  # 1 - cosine of the INT8 outputs on the samples, uncorrected
    error_after: float  # and as kept

    def to_json(self) -> dict[str, Any]:
        return {"layers": self.layers, "samples": self.samples, "rounds_kept": self.rounds,
                "relative_shift": round(self.mean_shift, 6),
                "error_before": self.error_before, "error_after": self.error_after}  # fmt: skip


def correct_biases(
    fm: FloatModel,
    table: CalibrationTable,
    backend: Backend,
    options: PlanOptions,
    feeds: list[Feed],
    ui: UI = SILENT,
) -> tuple[FloatModel, BiasReport]:
    """The model with each quantized layer's bias corrected for ``backend``'s plan."""
    from quantship.calibration.runner import ort_session
    from quantship.exporter.qdq import write_qdq

    shift = 0.0
    targets: list[Target] = []
    original = fm  # what each round's INT8 model is compared with
    outputs = list(fm.outputs)
    # (error of the INT8 model's outputs on the samples, the model, its corrections' size)
    tried: list[tuple[float, FloatModel, float]] = []
    with ui.progress("bias correction", (ROUNDS + 1) * len(feeds)) as advance:
        for r in range(ROUNDS + 1):
            plan = backend.plan(fm, table, options)
            edit = ModelEdit(fm)
            targets = find_targets(edit, set(plan.compute_nodes))
            names = [*outputs, *(t.tensor for t in targets if t.tensor not in outputs)]
            qdq = with_outputs(write_qdq(fm, plan), names)
            ref = ort_session(with_outputs(original.proto, names), weights_dir=fm.weights_dir)
            run = ort_session(qdq, weights_dir=fm.weights_dir)
            per_sample: list[list[npt.NDArray[Any]]] = [[] for _ in targets]
            err = 0.0
            for feed in feeds:
                f = dict(zip(names, ref.run(names, feed), strict=True))
                q = dict(zip(names, run.run(names, feed), strict=True))
                err += max(_error(q[o], f[o]) for o in outputs)
                for k, t in enumerate(targets):
                    per_sample[k].append(_channel_mean(q[t.tensor] - f[t.tensor], t.axis))
                advance(1)
            del ref, run, qdq
            tried.append((err / max(len(feeds), 1), fm, shift))
            if r == ROUNDS or not targets:
                break
            shift = _apply(edit, targets, [significant(np.stack(d)) for d in per_sample])
            fm = edit.apply("bias correction")
    # A correction is kept only where it made the INT8 model's outputs closer to the
    # float model's on these samples (the first, uncorrected, wins ties): an estimate
    # from few samples can be noisier than the shift it corrects.
    best = min(range(len(tried)), key=lambda i: (tried[i][0], i))
    err, fm, shift = tried[best]
    notes = tuple(n for n in fm.notes if n != "bias correction")
    report = BiasReport(len(targets), len(feeds), best, shift, tried[0][0], err)
    note = f"bias correction: {report.layers} layer(s), {best} round(s) kept"
    return replace(fm, notes=(*notes, note)), report


def _error(q: npt.NDArray[Any], f: npt.NDArray[Any]) -> float:
    a, b = np.ravel(q).astype(np.float64), np.ravel(f).astype(np.float64)
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    return 1.0 - float(a @ b) / den if den > 0 else 0.0


def find_targets(edit: ModelEdit, quantized: set[str]) -> list[Target]:
    view = edit.view
    out: list[Target] = []
    for i, n in enumerate(view.nodes):
        if view.node_name(i) not in quantized or not n.output:
            continue
        bias = n.input[2] if len(n.input) > 2 else ""
        if n.op_type in ("Conv", "ConvTranspose") and edit.weight(n, 1) is not None:
            if not bias or bias in view.initializers:
                out.append(Target(i, n.output[0], i, 2, 1))
        elif n.op_type == "Gemm" and _plain_gemm(n) and edit.weight(n, 1) is not None:
            if not bias or (bias in view.initializers and edit.value(bias).ndim == 1):
                out.append(Target(i, n.output[0], i, 2, -1))
        elif n.op_type == "MatMul" and edit.weight(n, 1) is not None:
            uses = view.consumers(n.output[0])
            if len(uses) == 1 and view.nodes[uses[0].node].op_type == "Add":
                add = view.nodes[uses[0].node]
                slot = 1 - uses[0].slot
                if _bias_vector(edit, add, slot):
                    out.append(Target(i, add.output[0], uses[0].node, slot, -1))
    return out


def _plain_gemm(n: onnx.NodeProto) -> bool:
    attrs = {a.name: a for a in n.attribute}
    return all(attrs[k].f == 1.0 for k in ("alpha", "beta") if k in attrs) and not (
        "transA" in attrs and attrs["transA"].i
    )


def _bias_vector(edit: ModelEdit, n: onnx.NodeProto, slot: int) -> bool:
    name = n.input[slot] if slot < len(n.input) else ""
    return name in edit.view.initializers and edit.value(name).ndim == 1


def _channel_mean(x: npt.NDArray[Any], axis: int) -> npt.NDArray[Any]:
    x = np.moveaxis(np.asarray(x, np.float64), axis, -1)
    out: npt.NDArray[Any] = x.reshape(-1, x.shape[-1]).mean(axis=0)
    return out


# A channel's mean error is corrected only where it stands this many standard errors
# (over the samples) from zero: a shift smaller than its own noise is not estimated.
# Correcting every channel made ResNet-18-like's INT8 worse (1 - cosine 1.25e-6 →
# 3.4e-6, benchmarks/accuracy_algorithms.py, 32 samples).
MIN_T = 2.0


def significant(per_sample: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Per channel, the mean over samples (rows) of the mean error, or 0 where it is
    within ``MIN_T`` standard errors of 0 (one sample alone: no estimate of its noise,
    the mean is taken as it is)."""
    mean: npt.NDArray[Any] = per_sample.mean(axis=0)
    n = per_sample.shape[0]
    if n < 2:
        return mean
    sem = per_sample.std(axis=0, ddof=1) / np.sqrt(n)
    out: npt.NDArray[Any] = np.where(np.abs(mean) > MIN_T * sem, mean, 0.0)
    return out


def _apply(edit: ModelEdit, targets: list[Target], diffs: list[npt.NDArray[Any]]) -> float:
    rel: list[float] = []
    for t, d in zip(targets, diffs, strict=True):
        name = edit.own(t.bias_node, t.bias_slot)
        if name is None:  # no bias yet: one is added
            edit.set_input(t.bias_node, t.bias_slot, f"{edit.view.node_name(t.node)}.bias", -d)
            rel.append(1.0)
            continue
        b = edit.value(name)
        if b.shape != d.shape:
            continue
        edit.set(name, b - d)
        rel.append(float(np.abs(d).mean() / max(float(np.abs(b).mean()), 1e-12)))
    return float(np.mean(rel)) if rel else 0.0
