"""``quantship sensitivity``: per-layer sensitivity to INT8, ranked, as a table, JSON
and a bar chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quantship.backends import registry
from quantship.backends.base import PlanOptions
from quantship.calibration.methods import MethodSpec
from quantship.calibration.sources import open_data
from quantship.errors import QuantshipError
from quantship.exporter.output import write_json
from quantship.ui import SILENT, UI


def sensitivity(
    model: str | Path,
    calib: str | Path,
    out: str | Path,
    *,
    held_out: str | Path | None = None,
    backend: str = registry.DEFAULT,
    method: str = "percentile",
    samples: int | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    ui: UI = SILENT,
) -> list[dict[str, Any]]:
    """Per-layer sensitivity: the error with only each node in INT8, ranked, written to
    ``out/sensitivity.json`` and ``out/sensitivity.png``."""
    from quantship.calibration.runner import calibrate
    from quantship.exporter.source import load_float_model
    from quantship.exporter.split import split_data
    from quantship.guard import Evaluator, held_feeds, sensitivity_plot
    from quantship.guard import sensitivity as rank

    chosen, _ = registry.available(backend)
    fm, data, _ = load_float_model(
        model, calib, input_shapes=input_shapes, images=None, weights=None
    )
    held = open_data(held_out, fm.inputs, role="held-out") if held_out is not None else None
    split = split_data(data, samples, held)
    assert data is not None
    table = calibrate(fm, data, samples=split.calib_stop, histograms=True, ui=ui)
    feeds = (
        held_feeds(split.data, split.start, split.stop, batch=fm.fixed_batch) if split.data else []
    )
    try:
        options = PlanOptions(method=MethodSpec(method))  # type: ignore[arg-type]
    except ValueError as e:
        raise QuantshipError(str(e)) from None
    rows = rank(Evaluator(fm, table, chosen[0], feeds), options, ui)
    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    result = [{"node": r.node, "op_type": r.op_type, "error": r.error} for r in rows]
    write_json(
        outp / "sensitivity.json",
        {
            "model": str(model),
            "backend": chosen[0].name,
            "measure": "1 - cosine with only this node in INT8",
            "held_out": split.note,
            "nodes": result,
        },
    )
    ui.table(
        "per-layer sensitivity (most sensitive first)",
        ["node", "op", "1 - cosine"],
        [[r.node, r.op_type, f"{r.error:.3g}"] for r in rows[:20]],
    )
    if not sensitivity_plot(rows, outp / "sensitivity.png"):
        ui.note("plot skipped: matplotlib is not installed (pip install 'quantship[plot]')")
    return result
