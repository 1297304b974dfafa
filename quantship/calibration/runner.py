"""One streaming pass over the sample data: run the float model with every float
activation exposed as an output, update one observer per tensor, drop the batch.

Memory is bounded by one batch of activations plus the histograms: it does not grow
with the number of samples. The batch size is chosen from the activation sizes so a
batch stays under ``ACTIVATION_BUDGET`` bytes (a fixed-batch model runs its own batch).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper

from quantship.calibration.data import CalibrationData, Feed
from quantship.calibration.observers import Observer
from quantship.calibration.table import CalibrationTable
from quantship.errors import DataError, ModelError
from quantship.exporter.graph import GraphView
from quantship.exporter.load import FloatModel
from quantship.ui import SILENT, UI

ACTIVATION_BUDGET = 256 * 2**20
MAX_BATCH = 32


def observed_tensors(model: FloatModel) -> list[str]:
    return GraphView(model.proto).activations()


def bytes_per_sample(model: FloatModel, tensors: list[str]) -> int | None:
    view = GraphView(model.proto)
    total = 0
    for t in tensors:
        shape = view.shape.get(t)
        if shape is None or any(d is None for d in shape[1:]):
            return None
        total += int(np.prod([int(d or 0) for d in shape[1:]], dtype=np.int64)) * 4
    return total


def choose_batch(model: FloatModel, tensors: list[str]) -> int:
    fixed = {s.shape[0] for s in model.inputs if s.shape and s.shape[0] is not None}
    if fixed:
        return int(max(fixed))
    per = bytes_per_sample(model, tensors)
    if not per:
        return 1
    return int(max(1, min(MAX_BATCH, ACTIVATION_BUDGET // per)))


def augmented(model: FloatModel, tensors: list[str]) -> onnx.ModelProto:
    """The float model with ``tensors`` as extra graph outputs."""
    aug = onnx.ModelProto()
    aug.CopyFrom(model.proto)
    view = GraphView(aug)
    existing = set(view.outputs)
    for t in tensors:
        if t in existing or t in view.inputs:
            continue
        aug.graph.output.append(helper.make_tensor_value_info(t, view.elem_type[t], None))
    return aug


def ort_session(model: onnx.ModelProto, threads: int | None = None, optimize: bool = True) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        if optimize
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    try:
        return ort.InferenceSession(
            model.SerializeToString(), so, providers=["CPUExecutionProvider"]
        )
    except Exception as e:
        raise ModelError(f"ONNX Runtime cannot load the model: {str(e).splitlines()[0]}") from None


def batches(samples: Iterator[Feed], size: int) -> Iterator[tuple[Feed, int]]:
    """Group one-sample feeds into batches of ``size`` (the last may be smaller)."""
    buf: list[Feed] = []
    for feed in samples:
        buf.append(feed)
        if len(buf) == size:
            yield _stack(buf), len(buf)
            buf = []
    if buf:
        yield _stack(buf), len(buf)


def _stack(feeds: list[Feed]) -> Feed:
    if len(feeds) == 1:
        return feeds[0]
    return {k: np.concatenate([f[k] for f in feeds], axis=0) for k in feeds[0]}


def hash_feed(h: Any, feed: Feed) -> None:
    for k in sorted(feed):
        a = np.ascontiguousarray(feed[k])
        h.update(f"{k}:{a.dtype.str}:{a.shape[1:]}".encode())
        h.update(a.tobytes())


def calibrate(
    model: FloatModel,
    data: CalibrationData,
    *,
    samples: int | None = None,
    start: int = 0,
    histograms: bool = True,
    batch_size: int | None = None,
    ui: UI = SILENT,
) -> CalibrationTable:
    """Statistics of every float activation over data samples ``start … start+samples``."""
    tensors = observed_tensors(model)
    if not tensors:
        raise ModelError("the model has no float activations to calibrate")
    fixed_batch = any(s.shape and s.shape[0] is not None and s.shape[0] > 1 for s in model.inputs)
    batch = batch_size or choose_batch(model, tensors)
    session = ort_session(augmented(model, tensors))
    out_names = [o.name for o in session.get_outputs()]
    wanted = set(tensors)
    observers = {t: Observer(t, histogram=histograms) for t in tensors}
    total = None
    if data.num_samples is not None:
        avail = max(0, data.num_samples - start)
        total = avail if samples is None else min(samples, avail)
    stop = None if samples is None else start + samples
    h = hashlib.sha256()
    seen = 0
    with ui.progress("calibrating", total) as advance:
        for feed, n in batches(data.samples(start, stop), batch):
            if fixed_batch and n != batch:
                break  # a fixed-batch model cannot run a partial batch
            hash_feed(h, feed)
            try:
                outs = session.run(out_names, feed)
            except Exception as e:
                raise ModelError(
                    f"the float model failed on calibration data: {str(e).splitlines()[0]}"
                ) from None
            arrays: dict[str, npt.NDArray[Any]] = dict(zip(out_names, outs, strict=True))
            for name, arr in feed.items():
                if name in wanted:
                    arrays[name] = arr
            for t in tensors:
                try:
                    observers[t].update(arrays[t])
                except FloatingPointError as e:
                    raise ModelError(
                        f"the float model produced NaN/Inf on calibration samples "
                        f"{start + seen}..{start + seen + n - 1}: {e}"
                    ) from None
            del arrays, outs
            seen += n
            advance(n)
    if seen == 0:
        raise DataError(f"{data.role} data {data.description} gave no samples to calibrate on")
    return CalibrationTable(
        model_sha256=model.sha256,
        data_sha256=h.hexdigest(),
        samples=seen,
        histograms=histograms,
        tensors={t: o.stats() for t, o in observers.items()},
    )
