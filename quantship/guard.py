"""The accuracy guard: which layers INT8 hurts, and returning them to float until an
accuracy budget holds.

The measure is ``1 − cosine`` to the float model's outputs (the lowest over outputs,
averaged over held-out samples: the samples the export's fidelity figure is measured
on, in runs of up to ``FIDELITY_BATCH`` consecutive samples of one shape), computed in
the target runtime (``qdq_session``): the runtimes do
not all compute the QDQ model alike (OpenVINO requantizes where a QDQ simulation does
not), so a plan is judged as it will run. Float outputs are computed once and cached;
every evaluation reuses the one calibration table.

- ``score_regions``: per region (``guard_regions``: a layer with its activation, an
  attention block), the error with only that region in INT8, less the error with every
  region float (the runtime's own: OpenVINO's bf16 layers), and its cost in float.
  ``quantship sensitivity`` shows them ranked.
- ``guard``: quantize everything; if the error exceeds the budget, return regions to
  float, the most error taken away per ms of latency added first, in growing batches,
  then bisect for the fewest. At most 2 + R + 2·⌈log₂ R⌉ evaluations for R
  regions, said before starting.
- ``resolve_exclusions``: ``--exclude`` regular expressions (matched against whole node
  names) and ``--exclude-op`` op types; a pattern that matches nothing is an error
  naming the closest node names.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy.typing as npt

from quantship.backends.base import Backend, PlanOptions
from quantship.calibration.table import CalibrationTable
from quantship.errors import QuantshipError, closest, did_you_mean
from quantship.exporter.load import FloatModel
from quantship.types import Feed
from quantship.ui import SILENT, UI


def resolve_exclusions(
    model: FloatModel,
    patterns: Sequence[str],
    op_types: Sequence[str],
    nodes: Sequence[str] = (),
) -> frozenset[str]:
    """The nodes kept in float: ``--exclude`` patterns, ``--exclude-op`` types and
    ``--keep-float`` names, each checked against the model (a name that matches
    nothing is an error naming the closest, not a setting silently ignored)."""
    view = model.view()
    names = [view.node_name(i) for i in range(len(view.nodes))]
    ops = {n.op_type for n in view.nodes}
    out: set[str] = set()
    for n in nodes:
        if n not in names:
            raise QuantshipError(
                f"--keep-float {n!r}: the model has no such node; {closest(n, names)}"
            )
        out.add(n)
    for p in patterns:
        try:
            rx = re.compile(p)
        except re.error as e:
            raise QuantshipError(f"--keep-float re:{p} is not a regular expression ({e})") from None
        hits = [n for n in names if rx.fullmatch(n)]
        if not hits:
            raise QuantshipError(
                f"--keep-float re:{p} matches no node (whole names are matched); "
                f"{closest(p, names)}"
            )
        out.update(hits)
    for op in op_types:
        if op not in ops:
            raise QuantshipError(
                f"--keep-float op:{op}: the model has no such op"
                + (did_you_mean(op, ops) or f"; its ops: {', '.join(sorted(ops))}")
            )
        out.update(view.node_name(i) for i, n in enumerate(view.nodes) if n.op_type == op)
    return frozenset(out)


Metric = Callable[[list[npt.NDArray[Any]], npt.NDArray[Any]], float]


def load_metric(spec: str) -> Metric:
    """``package.module:function``: called as ``fn(outputs, labels)`` with every model
    output stacked over the held-out samples and their labels; higher is better."""
    from quantship.specs import is_callable_spec, resolve

    if not is_callable_spec(spec):
        raise QuantshipError(f"--metric {spec!r}: expected package.module:function")
    try:
        _, fn, f = resolve(spec)
        if f is None:
            raise AttributeError(f"no attribute {fn!r}")
    except Exception as e:
        raise QuantshipError(
            f"--metric {spec!r}: cannot load it ({type(e).__name__}: {e})"
        ) from None
    if not callable(f):
        raise QuantshipError(f"--metric {spec!r} is not a function")
    metric: Metric = f
    return metric


class Evaluator:
    """The error of a plan's QDQ model against cached float outputs: 1 − cosine, or
    with a task metric, the metric's drop from float."""

    def __init__(
        self,
        model: FloatModel,
        table: CalibrationTable,
        backend: Backend,
        feeds: list[Feed],
        metric: Metric | None = None,
        labels: npt.NDArray[Any] | None = None,
        threads: int | None = None,
        reference: FloatModel | None = None,
        ray: str | None = None,
    ) -> None:
        """``reference``: the fp32 model errors are measured against (default ``model``;
        another where a pre-quantization algorithm changed the model INT8 is made from).
        ``ray``: a Ray cluster's address; independent evaluations (``errors``) run there
        as parallel tasks."""
        from quantship.backends.base import SessionSettings
        from quantship.calibration.runner import consecutive_batches, ort_session
        from quantship.exporter.split import FIDELITY_BATCH

        if not feeds:
            raise QuantshipError("the accuracy guard needs held-out samples (--held-out)")
        self.model, self.table, self.backend, self.feeds = model, table, backend, feeds
        self.metric, self.labels = metric, labels
        self.settings = SessionSettings(threads=threads)
        # Runs of up to FIDELITY_BATCH consecutive samples of one shape (in order, so labels
        # still line up), as the export's fidelity measurement batches them.
        self.runs = feeds if model.fixed_batch else consecutive_batches(feeds, FIDELITY_BATCH)
        self.reference = r = reference or model
        ref = ort_session(r.proto, weights_dir=r.weights_dir)
        self.ref = [ref.run(None, f) for f in self.runs]
        self.float_score = self._score(self.ref) if metric is not None else 0.0
        self.count = 0
        self.ray = ray

    def _score(self, outs: list[list[npt.NDArray[Any]]]) -> float:
        import numpy as np

        assert self.metric is not None and self.labels is not None
        stacked = [np.concatenate([o[i] for o in outs], axis=0) for i in range(len(outs[0]))]
        try:
            return float(self.metric(stacked, self.labels))
        except Exception as e:
            raise QuantshipError(f"--metric failed: {type(e).__name__}: {e}") from None

    def error(self, options: PlanOptions) -> float:
        from quantship.exporter.qdq import write_qdq
        from quantship.measure.fidelity import FidelityMeter

        self.count += 1
        qdq = write_qdq(self.model, self.backend.plan(self.model, self.table, options))
        with self.backend.qdq_session(qdq, self.model, self.settings) as s:
            del qdq
            outs = [s.run(f) for f in self.runs]
        if self.metric is not None:
            return self.float_score - self._score(outs)
        meter = FidelityMeter(self.model.outputs)
        for o, r in zip(outs, self.ref, strict=True):
            meter.update(r, o)
        return max(0.0, 1.0 - meter.result("guard").cosine)

    def errors(self, plans: Sequence[PlanOptions], ui: UI = SILENT, what: str = "") -> list[float]:
        """``error`` of each plan: one after another here, or as parallel Ray tasks
        (``ray``), the evaluator shipped to the cluster once."""
        if self.ray is None:
            out = []
            with ui.progress(what or "evaluations", len(plans)) as advance:
                for o in plans:
                    out.append(self.error(o))
                    advance(1)
            return out
        from quantship.fleet import connect, map_tasks

        ray = connect(self.ray)
        me = ray.put(_detached(self))
        self.count += len(plans)
        return map_tasks(
            _remote_error, [(me, o) for o in plans], self.ray, ui, what or "evaluations"
        )


def _detached(ev: Evaluator) -> Evaluator:
    """A copy of ``ev`` to ship: it evaluates where it lands (no further Ray), on
    ``--threads`` threads, else one (a task holds one CPU of its node, and several
    tasks share a node). ONNX Runtime's float kernels round differently at different
    thread counts, so the decisions equal a single-process run's at the same
    ``--threads``."""
    import copy

    twin = copy.copy(ev)
    twin.ray = None
    twin.settings = replace(ev.settings, threads=ev.settings.threads or 1)
    return twin


def _remote_error(ev: Evaluator, options: PlanOptions) -> float:
    return ev.error(options)


def sample_count(feeds: Sequence[Feed]) -> int:
    """Samples in feeds (a fixed-batch model's feed holds a batch of them)."""
    return sum(next(iter(f.values())).shape[0] for f in feeds if f)


def quantizable_nodes(
    model: FloatModel, table: CalibrationTable, backend: Backend, options: PlanOptions
) -> list[str]:
    """Nodes the backend's plan runs in INT8 as compute ops (data movement follows them)."""
    return list(backend.plan(model, table, options).compute_nodes)


@dataclass(frozen=True)
class GuardResult:
    budget: float
    before: float
    after: float
    float_nodes: tuple[str, ...]
    evaluations: int
    seconds: float
    regions: tuple[tuple[str, ...], ...] = ()  # returned to float, in the order chosen
    cost_ms: float | None = None  # latency they add, as estimated (profile or cost model)
    cost_source: str = ""
    floor: float | None = None  # the error with every region in float (the runtime's own)

    def to_json(self) -> dict[str, Any]:
        return {
            "budget": self.budget,
            "measure": "1 - cosine",
            "before": self.before,
            "after": self.after,
            "floor": self.floor,
            "float_nodes": list(self.float_nodes),
            "float_regions": [list(r) for r in self.regions],
            "estimated_cost_ms": self.cost_ms,
            "cost_source": self.cost_source,
            "evaluations": self.evaluations,
            "seconds": round(self.seconds, 2),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> GuardResult | None:
        """A cached result, or None where the record is not one."""
        try:
            return cls(
                float(d["budget"]), float(d["before"]), float(d["after"]),
                tuple(str(n) for n in d["float_nodes"]), int(d["evaluations"]),
                float(d["seconds"]), tuple(tuple(str(n) for n in r) for r in d["float_regions"]),
                None if d["estimated_cost_ms"] is None else float(d["estimated_cost_ms"]),
                str(d["cost_source"]), None if d["floor"] is None else float(d["floor"]),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError):
            return None


Costs = Callable[[list[tuple[str, ...]]], tuple[dict[str, float], str]]


@dataclass(frozen=True)
class RegionScore:
    """One region as the guard and ``quantship sensitivity`` see it."""

    nodes: tuple[str, ...]
    error: float  # 1 - cosine with only this region in INT8
    gain: float  # what it adds to the all-float error: the error it would take away in float
    cost: float  # what keeping it float costs (ms, or cost-model units)


def score_regions(
    evaluator: Evaluator,
    options: PlanOptions,
    regions: list[tuple[str, ...]],
    costs: Costs | None,
    ui: UI = SILENT,
) -> tuple[list[RegionScore], float, str]:
    """Every region's error alone in INT8, less the error with every region float (the
    runtime's own float error, e.g. OpenVINO's bf16 layers: it would be there whichever
    region stays INT8), and its cost in float. Returns the scores, that floor and where
    the costs come from."""
    from quantship.guard_regions import region_costs

    m, t, b = evaluator.model, evaluator.table, evaluator.backend
    every = frozenset(n for r in regions for n in r)
    floor = evaluator.error(replace(options, float_nodes=options.float_nodes | every))
    errors = region_sensitivity(evaluator, options, regions, ui)
    if costs is None:
        cost, source = region_costs(b, m, t, options, None, {}, regions, evaluator.settings.threads)
    else:
        cost, source = costs(regions)
    scores = [RegionScore(r, errors[r[0]], max(0.0, errors[r[0]] - floor), cost.get(r[0], 0.0))
              for r in regions]  # fmt: skip
    return scores, floor, source


def guard(
    evaluator: Evaluator,
    options: PlanOptions,
    max_drop: float,
    ui: UI = SILENT,
    costs: Costs | None = None,
) -> GuardResult:
    """Return regions to float until the error is within ``max_drop``: regions ranked
    by the error each adds in INT8 (its error alone in INT8 less the all-float error)
    per ms it adds in float (``costs``; see ``ranked``), then added in growing batches
    (1, 2, 4, … regions) until the budget holds, and the smallest prefix that holds
    found by bisection within the last batch."""
    from quantship.guard_regions import guard_regions

    t0 = time.perf_counter()
    m, t, b = evaluator.model, evaluator.table, evaluator.backend
    nodes = quantizable_nodes(m, t, b, options)
    regions = guard_regions(m, nodes)
    bound = 2 + len(regions) + 2 * max(1, math.ceil(math.log2(max(len(regions), 1))))
    ui.note(
        f"accuracy guard: budget {max_drop:g} (1 - cosine); {len(nodes)} quantized nodes in "
        f"{len(regions)} regions; at most {bound} evaluations on "
        f"{sample_count(evaluator.feeds)} held-out samples"
    )
    before = evaluator.error(options)
    if before <= max_drop:
        return GuardResult(max_drop, before, before, (), evaluator.count, time.perf_counter() - t0)
    scores, floor, source = score_regions(evaluator, options, regions, costs, ui)
    if floor > max_drop:
        why = (
            "its own float precision on this machine"
            if evaluator.model is evaluator.reference
            else "its own float precision on this machine, and the pre-quantization "
            "algorithms' changes to the float weights: try without --algorithms"
        )
        raise QuantshipError(
            f"--max-drop {max_drop:g}: even with every quantizable node in float the error is "
            f"{floor:.4g} in {b.name} ({why}); raise the budget, or deploy the float model"
        )
    rank = ranked(scores)

    def error_with(k: int) -> float:
        keep = frozenset(n for r in rank[:k] for n in r.nodes)
        return evaluator.error(replace(options, float_nodes=options.float_nodes | keep))

    lo, k, hi, err = 0, 1, None, before
    while hi is None:
        k = min(k, len(rank))
        # Every region float is the floor's plan, measured already and within the budget.
        e = floor if k == len(rank) else error_with(k)
        if e <= max_drop:
            hi, err = k, e
        else:
            lo, k = k, 2 * k
    while hi - lo > 1:
        mid = (lo + hi) // 2
        e = error_with(mid)
        if e <= max_drop:
            hi, err = mid, e
        else:
            lo = mid
    chosen = rank[:hi]
    return GuardResult(
        max_drop, before, err, tuple(n for r in chosen for n in r.nodes), evaluator.count,
        time.perf_counter() - t0, tuple(r.nodes for r in chosen),
        round(sum(r.cost for r in chosen), 4), source, floor,
    )  # fmt: skip


# A region returned to float costs more than its own layers' times show: a dequantize
# where it starts, a quantize where it ends, a layout reorder. Per-layer profiles do not
# see those. Ranked first whatever their gain, regions whose profiled float time was
# lower filled the PP-OCR-style recogniser's guarded model (0.001 budget): 35 of
# OpenVINO's 48 regions float, 0.65x the float model's size; 37 of ONNX Runtime's 55,
# 12 % slower than all-INT8. So no region counts as free: each costs at least this share
# of the median |cost| of the regions.
MIN_COST_SHARE = 0.1


def ranked(scores: Sequence[RegionScore]) -> list[RegionScore]:
    """Regions most worth returning to float first: the most error taken away per unit
    of cost (each cost at least ``MIN_COST_SHARE`` of the median); regions whose float
    takes no error away (``gain`` 0) last, the cheapest of them first."""
    mags = sorted(abs(s.cost) for s in scores if s.cost)
    least = MIN_COST_SHARE * mags[len(mags) // 2] if mags else 1.0

    def key(s: RegionScore) -> tuple[int, float]:
        if s.gain <= 0:
            return (1, s.cost)
        return (0, -s.gain / max(s.cost, least))

    return sorted(scores, key=key)


def region_sensitivity(
    evaluator: Evaluator, options: PlanOptions, regions: list[tuple[str, ...]], ui: UI = SILENT
) -> dict[str, float]:
    """Per region (by its first node), the error with only that region in INT8."""
    every = frozenset(n for r in regions for n in r)
    plans = [replace(options, float_nodes=(every - set(r)) | options.float_nodes) for r in regions]
    errors = evaluator.errors(plans, ui, "region sensitivity")
    return {r[0]: e for r, e in zip(regions, errors, strict=True)}


def held_labels(path: Any, start: int, count: int) -> npt.NDArray[Any]:
    """Labels of held-out samples start … start+count: the array 'labels' (or 'y') of
    the held-out .npz (or of the dict of arrays passed to the API)."""
    from collections.abc import Mapping
    from pathlib import Path

    import numpy as np

    from quantship.calibration.data import stored_npz

    if isinstance(path, Mapping):  # held-out data passed to the API as a dict of arrays
        key = "labels" if "labels" in path else "y" if "y" in path else None
        if key is None:
            raise QuantshipError("metric= needs labels: add an array 'labels' (or 'y') to held_out")
        return np.asarray(path[key])[start : start + count]
    p = Path(str(path))
    if p.suffix != ".npz" or not p.exists():
        raise QuantshipError(
            "--metric needs labels: give --held-out as an .npz with an array 'labels' (or 'y')"
        )
    arrays = stored_npz(p)
    key = "labels" if "labels" in arrays else "y" if "y" in arrays else None
    if key is None:
        raise QuantshipError(
            f"--metric needs labels: '{p}' has no array 'labels' or 'y' ({', '.join(arrays)})"
        )
    return np.asarray(arrays[key][start : start + count])


def held_feeds(
    data: Any, start: int, stop: int | None, limit: int = 32, batch: int | None = None
) -> list[Feed]:
    """Up to ``limit`` held-out samples, one feed each; for a model with a fixed
    ``batch``, stacked into full batches of it (in order: the labels a metric scores
    against follow the samples)."""
    from quantship.calibration.runner import batches

    samples = data.samples(start, stop)
    if batch is None:
        return [f for _, f in zip(range(limit), samples, strict=False)]
    out: list[Feed] = []
    for feed, n in batches(samples, batch, full_only=True):
        out.append(feed)
        if len(out) * n >= limit:
            break
    return out
