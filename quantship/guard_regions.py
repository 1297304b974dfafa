"""What the accuracy guard returns to float together, and what each costs.

A region is what a runtime runs as one piece, so returning part of it to float saves
little accuracy and loses the whole of its integer kernel: a weighted layer with its
activation (``exporter/plan_regions``), an attention block's two activation-by-
activation products (scores ``Q·Kᵀ`` and context ``P·V``, around their Softmax), and
every other quantized node alone.

Cost is the latency a region adds when it runs float instead of INT8: from the
runtime's own per-layer profiles where the backend has a profiler (the region's time
in the default float model minus its time in the all-INT8 plan; negative where float
is faster), otherwise ``COST_MODEL``: a weighted node counts 1, any other node 0.1 (a
weighted layer is where INT8's gain lies).
"""

from __future__ import annotations

from collections.abc import Sequence

from quantship.backends.attention import attention_products
from quantship.backends.base import Artifact, Backend, PlanOptions, SessionSettings
from quantship.calibration.table import CalibrationTable
from quantship.exporter.load import FloatModel
from quantship.exporter.plan_regions import WEIGHTED, region_ms, region_names, regions_of
from quantship.types import Feed

COST_MODEL = {"weighted": 1.0, "other": 0.1}
PROFILE_RUNS = 10


def guard_regions(model: FloatModel, quantized: Sequence[str]) -> list[tuple[str, ...]]:
    """The quantized nodes grouped into regions, in graph order (a region's first node
    names it)."""
    view = model.view()
    names = [view.node_name(i) for i in range(len(view.nodes))]
    order = {n: i for i, n in enumerate(names)}
    q = set(quantized)
    taken: set[str] = set()
    regions: list[tuple[str, ...]] = []
    for pair in attention_products(view):
        members = tuple(names[m] for m in pair if names[m] in q and names[m] not in taken)
        if members:
            regions.append(members)
            taken.update(members)
    for key, r in regions_of(model.proto).items():
        members = tuple(n for n in (key, *r.activations) if n in q and n not in taken)
        if members:
            regions.append(members)
            taken.update(members)
    regions += [(n,) for n in quantized if n not in taken]
    return sorted(regions, key=lambda r: min(order.get(n, 0) for n in r))


def region_costs(
    backend: Backend,
    fm: FloatModel,
    table: CalibrationTable,
    options: PlanOptions,
    float_art: Artifact | None,
    feeds: Feed,
    regions: Sequence[tuple[str, ...]],
    threads: int | None,
) -> tuple[dict[str, float], str]:
    """Per region (by its first node), the ms it adds when kept float, and where that
    figure comes from."""
    if float_art is None or not backend.capabilities().profile:
        view = fm.view()
        op = {view.node_name(i): n.op_type for i, n in enumerate(view.nodes)}
        cost = {r[0]: sum(COST_MODEL["weighted" if op.get(n) in WEIGHTED else "other"]
                          for n in r) for r in regions}  # fmt: skip
        return cost, "cost-model units, a weighted node 1, any other 0.1"
    from quantship.exporter.qdq import write_qdq

    names = region_names(fm.proto, {r[0]: r for r in regions})
    settings = SessionSettings(threads=threads)
    qdq = write_qdq(fm, backend.plan(fm, table, options))
    with backend.qdq_session(qdq, fm, settings) as s:
        t_q = region_ms(s.profile(feeds, PROFILE_RUNS), names)
    del qdq
    with backend.session(float_art, settings) as s:
        t_f = region_ms(s.profile(feeds, PROFILE_RUNS), names)
    return (
        {r[0]: t_f.get(r[0], 0.0) - t_q.get(r[0], 0.0) for r in regions},
        f"ms, from {backend.name}'s per-layer profiles (default float minus all-INT8)",
    )
