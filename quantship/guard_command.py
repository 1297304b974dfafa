"""``quantship sensitivity``: per-region sensitivity to INT8 and the cost of keeping each
region float, ranked as the accuracy guard ranks them, as a table, JSON and a bar chart."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantship.backends import registry
from quantship.backends.base import PlanOptions
from quantship.calibration.methods import MethodSpec
from quantship.calibration.sources import open_data
from quantship.calibration.text import TextOptions
from quantship.errors import QuantshipError
from quantship.exporter.output import write_json
from quantship.ui import UI, api_ui

if TYPE_CHECKING:
    from quantship.guard import RegionScore


def sensitivity(
    model: Any,
    calib: Any,
    out: str | Path,
    *,
    held_out: Any = None,
    backend: str = registry.DEFAULT,
    method: str = "percentile",
    samples: int | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    tokenizer: str | Path | None = None,
    ui: UI | None = None,
) -> list[dict[str, Any]]:
    """Per-region sensitivity, as the accuracy guard sees it: for each region (a layer
    with its activation, an attention block) the error with only it in INT8, what it
    adds to the error of the all-float model in this runtime, and the latency keeping it
    float costs (from the runtime's per-layer profiles where it has a profiler); ranked
    by what the guard would return to float first. Written to ``out/sensitivity.json``
    and ``out/sensitivity.png``. ``model``, ``calib`` and ``held_out`` take what
    ``export`` takes, objects included."""
    ui = api_ui(ui)
    import tempfile

    from quantship.calibration.runner import calibrate
    from quantship.exporter.job import write_float
    from quantship.exporter.source import load_float_model
    from quantship.exporter.split import DEFAULT_HELD_OUT, split_data
    from quantship.guard import (
        Evaluator,
        held_feeds,
        quantizable_nodes,
        ranked,
        sample_count,
        score_regions,
    )
    from quantship.guard_regions import guard_regions, region_costs

    chosen, _ = registry.available(backend)
    if len(chosen) != 1:
        raise QuantshipError(
            f"sensitivity probes one backend's plan; --backend {backend!r} names "
            f"{len(chosen)}: run it once for each"
        )
    b = chosen[0]
    from quantship.calibration.objects import reiterable

    calib, held_out = reiterable(calib), reiterable(held_out)  # each read more than once
    tokens = TextOptions(Path(tokenizer)) if tokenizer is not None else None
    fm, data, _ = load_float_model(
        model, calib, input_shapes=input_shapes, images=None, weights=None, tokens=tokens
    )
    held = (
        open_data(held_out, fm.inputs, role="held-out", tokens=tokens)
        if held_out is not None
        else None
    )
    split = split_data(data, samples, held)
    assert data is not None
    table = calibrate(fm, data, samples=split.calib_stop, histograms=True, ui=ui)
    feeds = (
        held_feeds(split.data, split.start, split.stop, DEFAULT_HELD_OUT, fm.fixed_batch)
        if split.data
        else []
    )
    try:
        options = PlanOptions(method=MethodSpec(method))  # type: ignore[arg-type]
    except ValueError as e:
        raise QuantshipError(str(e)) from None
    ev = Evaluator(fm, table, b, feeds)
    regions = guard_regions(fm, quantizable_nodes(fm, table, b, options))
    ui.note(
        f"sensitivity: {len(regions) + 2} evaluations on {sample_count(feeds)} held-out samples"
    )
    with tempfile.TemporaryDirectory(prefix="quantship-sens-") as tmp:
        float_art = write_float(Path(tmp), fm, table)

        def costs(rs: list[tuple[str, ...]]) -> tuple[dict[str, float], str]:
            return region_costs(b, fm, table, options, float_art, feeds[0], rs, None)

        scores, floor, source = score_regions(ev, options, regions, costs, ui)
    all_int8 = ev.error(options)
    view = fm.view()
    op = {view.node_name(i): n.op_type for i, n in enumerate(view.nodes)}
    order = ranked(scores)
    rows = [
        {"node": s.nodes[0], "nodes": list(s.nodes), "op_types": [op[n] for n in s.nodes],
         "error": s.error, "gain": s.gain, "cost": s.cost}
        for s in order
    ]  # fmt: skip
    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    write_json(
        outp / "sensitivity.json",
        {
            "model": str(model),
            "backend": b.name,
            "measure": "1 - cosine; error: with only this region in INT8; gain: error less "
            "the all-float error (what returning the region to float can take away)",
            "all_int8_error": all_int8,
            "all_float_error": floor,
            "cost_unit": source,
            "order": "what the accuracy guard returns to float first: most gain per cost",
            "held_out": split.note,
            "regions": rows,
        },
    )
    ui.note(
        f"{b.name}: 1 - cosine {all_int8:.3g} with every region INT8, {floor:.3g} with every "
        f"region float; cost: {source}"
    )
    table_rows = [
        [s.nodes[0], "+".join(op[n] for n in s.nodes), f"{s.error:.3g}", f"{s.gain:.3g}",
         f"{s.cost:.3g}"]
        for s in order[:20]
    ]  # fmt: skip
    ui.table(
        "per-region sensitivity (the accuracy guard's order: most error taken away per cost)",
        ["region", "ops", "1 - cosine alone", "gain", "cost"],
        table_rows,
    )
    if not sensitivity_plot(order, op, floor, outp / "sensitivity.png"):
        ui.note("plot skipped: matplotlib is not installed (pip install 'quantship[plot]')")
    return rows


def sensitivity_plot(
    scores: list[RegionScore], op: dict[str, str], floor: float, path: Path, top: int = 20
) -> bool:
    """The regions that add the most error in INT8, as bars; the all-float error as a line."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = sorted(scores, key=lambda s: -s.gain)[:top]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.2))
    ax.barh(
        [f"{s.nodes[0]} ({'+'.join(op[n] for n in s.nodes)})" for s in rows][::-1],
        [s.error for s in rows][::-1],
        color="#d62728",
    )
    ax.axvline(floor, color="#444444", linestyle="--", label="every region float")
    ax.set_xlabel("1 - cosine with only this region in INT8")
    ax.set_title("regions that add the most error in INT8")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
