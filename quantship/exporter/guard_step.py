"""The export's accuracy guard for one backend: the regions it keeps in float, measured
here or reused from the cache (its ranking uses latencies measured on this machine, so
a second export reuses the first's decision and writes byte-identical artifacts)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from quantship.backends.base import Artifact, Backend, PlanOptions
from quantship.calibration.table import CalibrationTable
from quantship.exporter.load import FloatModel
from quantship.exporter.plan_cache import cache_read, cache_write, guard_key
from quantship.exporter.split import HeldOut
from quantship.guard import Evaluator, GuardResult, guard
from quantship.guard_regions import region_costs
from quantship.ui import UI


def run_guard(
    evaluator_for: Callable[[], Evaluator],
    backend: Backend,
    fm: FloatModel,
    table: CalibrationTable,
    threads: int | None,
    planned: PlanOptions,
    max_drop: float,
    metric: str | None,
    held: HeldOut,
    float_art: Artifact,
    ui: UI,
) -> GuardResult:
    """``evaluator_for`` makes the guard's evaluator (it runs the fp32 model on the
    held-out samples), called only when the decision is not in the cache."""
    b = backend
    key = guard_key(b, fm, table, planned, threads, held, max_drop, metric)
    res = GuardResult.from_json(cache_read(key) or {})
    if res is not None:
        ui.note(f"{b.name}: accuracy guard's regions from the cache (measured earlier)")
    else:
        evaluator = evaluator_for()
        costs = partial(region_costs, b, fm, table, planned, float_art, evaluator.feeds[0],
                        threads=threads)  # fmt: skip
        res = guard(evaluator, planned, max_drop, ui, costs)
        cache_write(key, res.to_json())
    ui.note(
        f"{b.name}: accuracy guard kept {len(res.regions)} region(s), {len(res.float_nodes)} "
        f"node(s) in float (estimated cost {res.cost_ms}: {res.cost_source}); 1 - cosine "
        f"{res.before:.4g} -> {res.after:.4g} ({res.evaluations} evaluations, {res.seconds:.1f} s)"
    )
    return res
