"""``quantship profile``: which kernel each layer runs on and what it costs, per
artifact, with the float model beside it, from the runtime's own per-layer counters
(OpenVINO's ``PERF_COUNT``, ONNX Runtime's profiler, TensorRT's layer timings).

Whether INT8 is faster is decided layer by layer: the same convolution can land on a
fast integer kernel or a slow one depending on the plan, and activations left between
quantized layers can cost more than the convolutions save. This shows where.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantship.backends.base import LayerTime
from quantship.errors import QuantshipError
from quantship.measure.report import fmt_ms
from quantship.measure.run import Candidate, make_feeds
from quantship.ui import UI, api_ui

# Precision names, as runtimes spell them, of kernels that compute in integers.
INTEGER = {"int8", "uint8", "i8", "u8", "int4", "u4", "i4"}


@dataclass(frozen=True)
class Profile:
    """One candidate's per-layer profile at one batch size, ``runs`` runs averaged."""

    key: str
    label: str
    batch: int
    runs: int
    layers: tuple[LayerTime, ...]

    @property
    def total_ms(self) -> float:
        return sum(layer.ms for layer in self.layers)

    @property
    def integer_ms(self) -> float:
        return sum(layer.ms for layer in self.layers if layer.precision.lower() in INTEGER)

    def by_kernel(self) -> list[tuple[str, str, int, float]]:
        """(kernel, precision, layers, ms), slowest first."""
        acc: dict[tuple[str, str], list[float]] = {}
        for layer in self.layers:
            acc.setdefault((layer.kernel, layer.precision), []).append(layer.ms)
        rows = [(k, p, len(v), sum(v)) for (k, p), v in acc.items()]
        return sorted(rows, key=lambda r: (-r[3], r[0]))

    def by_op_type(self) -> dict[str, tuple[int, float]]:
        acc: dict[str, tuple[int, float]] = {}
        for layer in self.layers:
            n, ms = acc.get(layer.op_type, (0, 0.0))
            acc[layer.op_type] = (n + 1, ms + layer.ms)
        return acc

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "batch": self.batch,
            "runs": self.runs,
            "total_ms": round(self.total_ms, 5),
            "integer_ms": round(self.integer_ms, 5),
            "kernels": [
                {"kernel": k, "precision": p, "layers": n, "ms": round(ms, 5)}
                for k, p, n, ms in self.by_kernel()
            ],
            "layers": [layer.to_json() for layer in self.layers],
        }


def profile(
    target: str | Path,
    *,
    backends: str | Sequence[str] | None = None,
    batch: int = 1,
    runs: int = 50,
    threads: int | None = None,
    data: str | Path | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    tokenizer: str | Path | None = None,
    top: int = 10,
    json_path: str | Path | None = None,
    ui: UI | None = None,
) -> list[Profile]:
    """Per-layer kernels and times of an export folder's artifacts beside the float
    model at each precision each runtime has here (or of one model's float versions),
    from each runtime's own profiler. Backends that declare no profiler are named and
    skipped."""
    ui = api_ui(ui)
    from quantship.exporter.output import write_json
    from quantship.measure.machine import cpu_info, isa_line
    from quantship.measure.targets import find_targets

    if batch < 1 or runs < 1:
        raise QuantshipError(f"--batch and --runs must be >= 1, got {batch} and {runs}")
    found = find_targets(
        target,
        backends,
        data=data,
        input_shapes=input_shapes,
        tokenizer=tokenizer,
        what="profile",
        ui=ui,
    )
    feeds = make_feeds(found.inputs, batch, found.sample, examples=found.examples)
    wanted: list[Candidate] = []
    for c in found.candidates:
        if c.backend.capabilities().profile:
            wanted.append(c)
        else:
            ui.note(f"{c.label}: its backend has no per-layer profile; skipped")
    out: list[Profile] = []
    with ui.progress("profiling", len(wanted)) as advance:
        for c in wanted:
            with c.backend.session(c.artifact, c.settings(threads)) as session:
                layers = session.profile(feeds, runs)
            out.append(Profile(c.key, c.label, batch, runs, tuple(layers)))
            advance(1)
    if not out:
        raise QuantshipError(
            "none of the runtimes here reports a per-layer profile; "
            "run profile where the artifact's runtime is installed"
        )
    report(ui, out, f"{found.title} (batch {batch}, {runs} runs; {isa_line()})", top)
    if json_path is not None:
        write_json(
            Path(json_path),
            {
                "target": str(target),
                "machine": cpu_info(),
                "batch": batch,
                "runs": runs,
                "threads": threads,
                "input_shapes": {k: list(v.shape) for k, v in feeds.items()},
                "profiles": [p.to_json() for p in out],
            },
        )
    return out


def report(ui: UI, profiles: Sequence[Profile], title: str, top: int) -> None:
    """Time per op type side by side (the float model beside the INT8 artifacts), then
    per candidate its kernels and its slowest layers. Times are the runtime's own sums
    of per-layer time per run; they leave out what happens between layers, so a
    total is below the wall-clock latency ``bench`` measures."""
    by_type = [p.by_op_type() for p in profiles]
    types: dict[str, float] = {}
    for each in by_type:
        for op, (_, ms) in each.items():
            types[op] = max(types.get(op, 0.0), ms)
    rows = []
    for op in sorted(types, key=lambda o: (-types[o], o)):
        cells = []
        for each in by_type:
            n, ms = each.get(op, (0, 0.0))
            cells.append(f"{fmt_ms(ms)} ({n})" if n else "-")
        rows.append([op, *cells])
    rows.append(["total", *[fmt_ms(p.total_ms) for p in profiles]])
    rows.append(
        [
            "in integer kernels",
            *[f"{100 * p.integer_ms / p.total_ms:.0f} %" if p.total_ms else "-" for p in profiles],
        ]
    )
    ui.table(
        f"{title}: ms per run by op type (layers)", ["op type", *[p.label for p in profiles]], rows
    )
    for p in profiles:
        ui.table(
            f"{p.label}: kernels",
            ["kernel", "precision", "layers", "ms", "share"],
            [
                [k, prec or "-", str(n), fmt_ms(ms), f"{100 * ms / p.total_ms:.0f} %"]
                for k, prec, n, ms in p.by_kernel()
                if p.total_ms
            ],
        )
        if top > 0:
            slow = sorted(p.layers, key=lambda layer: -layer.ms)[:top]
            ui.table(
                f"{p.label}: {len(slow)} slowest layers",
                ["layer", "op type", "kernel", "precision", "ms", "fused with"],
                [
                    [
                        layer.name,
                        layer.op_type,
                        layer.kernel,
                        layer.precision or "-",
                        fmt_ms(layer.ms),
                        ", ".join(layer.fused[:3]) + (" …" if len(layer.fused) > 3 else ""),
                    ]
                    for layer in slow
                ],
            )
