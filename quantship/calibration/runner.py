"""One streaming pass over the sample data: run the float model with small probes on
every data tensor, update one observer per tensor, drop the batch.

Memory is bounded by one batch of activations plus the histograms: it does not grow
with the number of samples. Batches are small on purpose: with every activation an
output, a batch's working set leaves the caches quickly, and measured on ResNet-18 at
224 (2 cores) 32 samples took 0.37 s in batches of 1-2 and 0.96 s in batches of 11.
The batch holds at most ``ACTIVATION_BUDGET`` bytes of activations, measured on the
first sample (a fixed-batch model runs its own batch); only samples of one shape are
batched together, so data of several sequence lengths streams as it comes.

Everything a probe needs is computed in the graph from the tensor itself (``Size``,
``Shape``), never from shapes known when exporting: dimensions left dynamic stay
dynamic, and an exporter's stale or ``-1`` shape annotations cannot mislead it.

Tensors inside the graph may hold ±inf or NaN where they come from attention masking
(``Where(mask, scores, -inf)``); they are counted, not rejected, and such tensors are
never quantized. The model's *outputs* must be finite: a non-finite output is an error
that names the output and the samples.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper, numpy_helper

from quantship.calibration.data import CalibrationData
from quantship.calibration.observers import HIST_VALUES_PER_SAMPLE, Observer
from quantship.calibration.table import CalibrationTable, feed_dims, merge_dims
from quantship.errors import DataError, ModelError
from quantship.exporter.load import FloatModel
from quantship.types import Feed
from quantship.ui import SILENT, UI

ACTIVATION_BUDGET = 64 * 2**20
# Slice's starts, ends and axes for "every k-th value of each row".
_SLICE_ROWS = ("quantship.calib/zero", "quantship.calib/end", "quantship.calib/one")
MAX_BATCH = 16


def observed_tensors(model: FloatModel) -> list[str]:
    return model.view().activations()


@dataclass(frozen=True)
class Probe:
    """How one tensor is observed: the names of its in-graph min, max, value count and
    histogram sample (``sample`` is None without histograms)."""

    tensor: str
    min: str
    max: str
    count: str
    sample: str | None


def augmented(
    model: FloatModel, tensors: list[str], histograms: bool = True
) -> tuple[onnx.ModelProto, list[Probe]]:
    """The float model with probes on ``tensors``: ReduceMin/ReduceMax/Size over the
    whole tensor and, for histograms, a systematic sample of each row (the first axis,
    the batch for most tensors): every k-th value, k = ⌈row size / 16384⌉ computed in
    the graph. Only these small results leave the runtime."""
    aug = onnx.ModelProto()
    aug.CopyFrom(model.proto)
    view = model.view()
    g = aug.graph
    nodes: list[onnx.NodeProto] = []
    consts = {
        "quantship.calib/rows": [0, -1],
        "quantship.calib/one_row": [1, -1],
        "quantship.calib/zero": [0],
        "quantship.calib/one": [1],
        "quantship.calib/end": [2**62],
        "quantship.calib/chunk": [HIST_VALUES_PER_SAMPLE],
        "quantship.calib/chunk_m1": [HIST_VALUES_PER_SAMPLE - 1],
    }
    probes: list[Probe] = []
    for t in tensors:
        base = f"quantship.calib/{t}"
        mn, mx, cnt = f"{base}/min", f"{base}/max", f"{base}/count"
        nodes += [
            helper.make_node("ReduceMin", [t], [mn], name=mn, keepdims=0),
            helper.make_node("ReduceMax", [t], [mx], name=mx, keepdims=0),
            helper.make_node("Size", [t], [cnt], name=cnt),
        ]
        outs = [(mn, view.elem_type[t]), (mx, view.elem_type[t]), (cnt, onnx.TensorProto.INT64)]
        sample = None
        if histograms:
            shape = view.shape.get(t)
            rowwise = shape is not None and len(shape) >= 1
            flat, sample = f"{base}/flat", f"{base}/sample"
            stride, per, step = f"{base}/stride", f"{base}/per_row", f"{base}/step"
            target = "quantship.calib/rows" if rowwise else "quantship.calib/one_row"
            nodes += [
                helper.make_node("Reshape", [t, target], [flat], name=flat),
                helper.make_node("Shape", [flat], [f"{base}/shape"], name=f"{base}/shape"),
                helper.make_node(
                    "Slice",
                    [f"{base}/shape", "quantship.calib/one", "quantship.calib/end"],
                    [per],
                    name=per,
                ),
                helper.make_node(
                    "Add", [per, "quantship.calib/chunk_m1"], [f"{base}/ceil"], name=f"{base}/ceil"
                ),
                helper.make_node(
                    "Div", [f"{base}/ceil", "quantship.calib/chunk"], [stride], name=stride
                ),
                helper.make_node("Max", [stride, "quantship.calib/one"], [step], name=step),
                helper.make_node(
                    "Slice",
                    [flat, *_SLICE_ROWS, step],
                    [sample],
                    name=sample,
                ),
            ]
            outs.append((sample, view.elem_type[t]))
        for name, elem in outs:
            g.output.append(helper.make_tensor_value_info(name, elem, None))
        probes.append(Probe(t, mn, mx, cnt, sample))
    g.node.extend(nodes)
    g.initializer.extend(
        numpy_helper.from_array(np.asarray(v, np.int64), k) for k, v in consts.items()
    )
    return aug, probes


def ort_session(
    model: onnx.ModelProto | Path, threads: int | None = None, weights_dir: Path | None = None
) -> Any:
    """An ONNX Runtime CPU session on a model in memory (its external tensors read from
    ``weights_dir``) or a file."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if weights_dir is not None:
        so.add_session_config_entry(
            "session.model_external_initializers_file_folder_path", str(weights_dir)
        )
    src: str | bytes = str(model) if isinstance(model, Path) else model.SerializeToString()
    try:
        return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ModelError(f"ONNX Runtime cannot load the model: {str(e).splitlines()[0]}") from None


ShapeKey = tuple[tuple[str, tuple[int, ...]], ...]


def shape_key(feed: Feed) -> ShapeKey:
    return tuple((name, tuple(a.shape)) for name, a in sorted(feed.items()))


def batches(
    samples: Iterator[Feed],
    size: int | Callable[[ShapeKey], int],
    *,
    full_only: bool = False,
    skipped: list[int] | None = None,
) -> Iterator[tuple[Feed, int]]:
    """Batches of up to ``size`` samples (a number, or one per shape); only samples of
    one shape share a batch, so data of mixed sequence lengths is grouped by length
    (each group holds at most one batch). ``full_only``: only full batches, for a model
    whose batch is fixed; the samples left over are counted in ``skipped``."""
    groups: dict[ShapeKey, list[Feed]] = {}
    for feed in samples:
        k = shape_key(feed)
        buf = groups.setdefault(k, [])
        buf.append(feed)
        if len(buf) == (size(k) if callable(size) else size):
            yield _stack(buf), len(buf)
            groups[k] = []
    for buf in groups.values():
        if not buf:
            continue
        if full_only:
            if skipped is not None:
                skipped.append(len(buf))
            continue
        yield _stack(buf), len(buf)


def consecutive_batches(feeds: list[Feed], size: int) -> list[Feed]:
    """Runs of up to ``size`` consecutive samples of one shape, stacked, in order (a
    sample's place is kept, so labels scored against the outputs still line up)."""
    out: list[list[Feed]] = []
    for f in feeds:
        if out and len(out[-1]) < size and shape_key(out[-1][0]) == shape_key(f):
            out[-1].append(f)
        else:
            out.append([f])
    return [_stack(run) for run in out]


def _stack(feeds: list[Feed]) -> Feed:
    if len(feeds) == 1:
        return feeds[0]
    return {k: np.concatenate([f[k] for f in feeds], axis=0) for k in feeds[0]}


def hash_feed(h: Any, feed: Feed) -> None:
    for k in sorted(feed):
        a = np.ascontiguousarray(feed[k])
        h.update(f"{k}:{a.dtype.str}:{a.shape[1:]}".encode())
        h.update(a.tobytes())


def _hashed(
    samples: Iterator[Feed], h: Any, dims: dict[str, tuple[tuple[int, int], ...]]
) -> Iterator[Feed]:
    """The samples, each added to ``h`` and to the input sizes seen (``dims``) as it
    passes: the data hash does not depend on how samples are batched."""
    for feed in samples:
        hash_feed(h, feed)
        dims.update(merge_dims(dims, feed_dims(feed)))
        yield feed


def calibrate(
    model: FloatModel,
    data: CalibrationData,
    *,
    samples: int | None = None,
    start: int = 0,
    histograms: bool = True,
    batch_size: int | None = None,
    only: Collection[str] | None = None,
    threads: int | None = None,
    ui: UI = SILENT,
) -> CalibrationTable:
    """Statistics of every data tensor (or of those of them in ``only``) over data
    samples ``start … start+samples``."""
    tensors = observed_tensors(model)
    if only is not None:
        tensors = [t for t in tensors if t in only]
    if not tensors:
        raise ModelError("the model has no float activations to calibrate")
    fixed_batch = model.fixed_batch
    graph, probes = augmented(model, tensors, histograms)
    session = ort_session(graph, threads=threads, weights_dir=model.weights_dir)
    del graph
    out_names = [o.name for o in session.get_outputs()]
    view = model.view()
    checked = [o for o in model.outputs if o in out_names and view.is_float(o)]
    observers = {t: Observer(t, histogram=histograms) for t in tensors}
    total = None
    if data.num_samples is not None:
        avail = max(0, data.num_samples - start)
        total = avail if samples is None else min(samples, avail)
    stop = None if samples is None else start + samples
    h = hashlib.sha256()
    dims: dict[str, tuple[tuple[int, int], ...]] = {}
    seen = 0
    sizes: dict[ShapeKey, int] = {}
    skipped: list[int] = []
    with ui.progress("calibrating", total) as advance:

        def observe(feed: Feed, n: int) -> int:
            nonlocal seen
            per = _observe(session, out_names, probes, observers, checked, feed, n)
            seen += n
            advance(n)
            return per

        def sized(stream: Iterator[Feed]) -> Iterator[Feed]:
            """The first sample of each shape runs alone: its activation bytes size the
            batches of that shape (attention grows with the square of the length)."""
            for feed in stream:
                k = shape_key(feed)
                if fixed_batch is None and k not in sizes:
                    per = observe(feed, 1)
                    sizes[k] = batch_size or _batch_for(per)
                    continue
                yield feed

        stream = sized(_hashed(data.samples(start, stop), h, dims))
        size: int | Callable[[ShapeKey], int] = fixed_batch or sizes.__getitem__
        for feed, n in batches(stream, size, full_only=fixed_batch is not None, skipped=skipped):
            observe(feed, n)
    if skipped:
        ui.note(
            f"calibration: {sum(skipped)} sample(s) left out: the model's batch is fixed at "
            f"{fixed_batch} and they did not fill a batch of their shape"
        )
    if seen == 0:
        raise DataError(f"{data.role} data {data.description} gave no samples to calibrate on")
    return CalibrationTable(
        model_sha256=model.sha256,
        data_sha256=h.hexdigest(),
        samples=seen,
        histograms=histograms,
        tensors={t: o.stats() for t, o in observers.items()},
        input_dims=dims,
    )


def _shapes(feed: Feed) -> str:
    return ", ".join(f"{k} {'x'.join(map(str, v.shape))}" for k, v in sorted(feed.items()))


def _batch_for(bytes_per_sample: int) -> int:
    if bytes_per_sample <= 0:
        return MAX_BATCH
    return int(max(1, min(MAX_BATCH, ACTIVATION_BUDGET // bytes_per_sample)))


def _observe(
    session: Any,
    out_names: list[str],
    probes: list[Probe],
    observers: dict[str, Observer],
    checked: list[str],
    feed: Feed,
    n: int,
) -> int:
    """Run one batch and update every observer. Returns the bytes of activations the
    batch held per sample (4 bytes a value)."""
    try:
        outs = session.run(out_names, feed)
    except Exception as e:
        raise ModelError(
            f"the float model failed on a batch of {n} calibration sample(s) "
            f"(shapes {_shapes(feed)}): {str(e).splitlines()[0]}"
        ) from None
    arrays: dict[str, npt.NDArray[Any]] = dict(zip(out_names, outs, strict=True))
    for name in checked:
        out = np.asarray(arrays[name])
        if np.issubdtype(out.dtype, np.floating) and not np.isfinite(out).all():
            bad = "NaN" if np.isnan(out).any() else "Inf"
            raise ModelError(
                f"the float model's output {name!r} holds {bad} on a batch of {n} "
                f"calibration sample(s) (shapes {_shapes(feed)}); the model or these samples "
                "are broken (check the input preprocessing)"
            )
    values = 0
    for p in probes:
        count = int(arrays[p.count])
        values += count
        sub = arrays[p.sample] if p.sample is not None else np.zeros(0, np.float32)
        observers[p.tensor].update_summary(float(arrays[p.min]), float(arrays[p.max]), count, sub)
    return values * 4 // max(n, 1)
