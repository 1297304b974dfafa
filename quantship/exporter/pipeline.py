"""The per-backend steps of an export, and what it reports: artifact building, fidelity
on held-out samples, the manifest and the closing table."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy.typing as npt

from quantship.backends.base import Artifact, Backend, Feed, PlanOptions, SessionSettings
from quantship.bench.fidelity import FidelityMeter
from quantship.bench.report import fmt_mb, fmt_ms, fmt_num
from quantship.bench.timing import LatencyStats
from quantship.calibration.data import CalibrationData
from quantship.calibration.methods import MethodSpec
from quantship.calibration.runner import batches
from quantship.calibration.table import CalibrationTable
from quantship.exporter.load import FloatModel
from quantship.exporter.manifest import FORMAT, artifact_entry, runtime_info, versions
from quantship.exporter.output import sha256_file
from quantship.exporter.qdq import write_qdq
from quantship.ui import UI

if TYPE_CHECKING:
    from pathlib import Path

    from quantship.api import _Split

FIDELITY_BATCH = 8


def build_artifact(
    backend: Backend,
    fm: FloatModel,
    table: CalibrationTable,
    options: PlanOptions,
    stage: Path,
    ui: UI,
) -> tuple[Artifact, dict[str, Any]]:
    plan = backend.plan(fm, table, options)
    qdq = write_qdq(fm, plan)
    art = backend.compile(qdq, stage, fm)
    summary = plan.summary()
    ui.note(
        f"{backend.name}: {len(plan.quantized_nodes)} nodes in INT8, "
        f"{len(plan.float_nodes)} quantizable nodes left in float"
    )
    engine = art.metadata.get("engine")
    if isinstance(engine, dict) and engine.get("built") is False:
        ui.note(
            f"{backend.name}: engine not built here ({engine.get('reason')}); {engine.get('how')}"
        )
    why = art.metadata.get("runtime_config_reason")
    if why:
        ui.note(f"{backend.name}: {why}")
    kernels = art.metadata.get("integer_kernels")
    if isinstance(kernels, dict):
        parts = [
            f"{op} {v['integer']}/{v['total']}"
            for op, v in kernels.items()
            if isinstance(v, dict) and "total" in v
        ]
        if parts:
            ui.note(
                f"{backend.name}: integer kernels after the runtime's fusion: " + ", ".join(parts)
            )
    return art, summary


def measure_fidelity(
    fm: FloatModel,
    float_art: Artifact,
    artifacts: Sequence[Artifact],
    backends: Sequence[Backend],
    split: _Split,
    threads: int | None,
    ui: UI,
    drift_check: tuple[list[Feed], list[dict[str, npt.NDArray[Any]]]] = ([], []),
) -> tuple[dict[str, dict[str, Any] | None], dict[str, float | None]]:
    """Run float and every artifact on the held-out samples, one batch at a time. Also
    returns how far the prepared float model's outputs are from the user's model's
    (``drift_check``: feeds and the user's model's outputs on them).

    Memory: the float model runs first and its outputs are kept, unless they would
    take more memory than the model itself; then it is freed before each INT8 artifact
    runs, one at a time. A model of several GB is so never in memory twice, nor beside
    its INT8 copies."""
    from quantship.backends.onnxruntime import OrtSession
    from quantship.exporter.prepare import max_abs_diff

    data: CalibrationData | None = split.held_data
    settings = SessionSettings(threads=threads)
    ref: OrtSession | None = OrtSession(float_art.path, settings)
    assert ref is not None
    feeds, theirs = drift_check
    ours = [dict(zip(ref.output_names, ref.run(f), strict=True)) for f in feeds]
    drift = max_abs_diff(theirs, ours)
    if data is None:
        return {}, drift
    fixed = fm.fixed_batch

    def held() -> Iterator[tuple[Feed, int]]:
        assert data is not None
        samples = data.samples(split.held_start, split.held_stop)
        yield from batches(samples, fixed or FIDELITY_BATCH, full_only=fixed is not None)

    total = None
    if data.num_samples is not None and split.held_stop is not None:
        total = max(0, min(split.held_stop, data.num_samples) - split.held_start)

    budget = float_art.size_bytes()
    kept: list[list[npt.NDArray[Any]]] | None = []
    with ui.progress("measuring fidelity: float", total) as advance:
        for feed, n in held():
            out = ref.run(feed)
            assert kept is not None
            kept.append(out)
            advance(n)
            if sum(a.nbytes for o in kept for a in o) > budget:
                kept = None  # outputs outgrow the model: run it beside each artifact
                break
    if kept is not None:
        ref = None
    meters = {b.name: FidelityMeter(fm.outputs) for b in backends}
    for art, b in zip(artifacts, backends, strict=True):
        session = b.session(art, settings)
        with ui.progress(f"measuring fidelity: {b.name}", total) as advance:
            for k, (feed, n) in enumerate(held()):
                expected = kept[k] if kept is not None else ref.run(feed)  # type: ignore[union-attr]
                meters[b.name].update(expected, session.run(feed))
                advance(n)
        del session
    fidelity = {
        name: (m.result(split.note).to_json() if m.samples else None) for name, m in meters.items()
    }
    return fidelity, drift


def manifest_for(
    fm: FloatModel,
    table: CalibrationTable,
    data: CalibrationData | None,
    held_note: str,
    method: MethodSpec,
    options: PlanOptions,
    float_art: Artifact,
    artifacts: Sequence[Artifact],
    figures: dict[str, dict[str, Any]],
    latency: Sequence[LatencyStats],
    failures: Sequence[str],
    calib_cache: object,
    drift: dict[str, float | None] | None = None,
) -> dict[str, Any]:
    float_latency = {
        s.label[len("float (") : -1]: s.to_json() for s in latency if s.label.startswith("float (")
    }
    extra = tuple(sorted({a.backend for a in artifacts} - {"onnxruntime"}))
    return {
        "format": FORMAT,
        "created_by": "quantship export",
        "versions": versions(extra),
        "machine": runtime_info(),
        "input_model": {
            "source": fm.source,
            "sha256": fm.source_sha256,
            "size_bytes": fm.source_bytes,
            "notes": list(fm.notes),
        },
        "float_model": {
            "path": float_art.files[0],
            "files": [
                {
                    "path": f,
                    "sha256": sha256_file(float_art.root / f),
                    "bytes": (float_art.root / f).stat().st_size,
                }
                for f in float_art.files
            ],
            "sha256": sha256_file(float_art.path),
            "size_bytes": float_art.size_bytes(),
            "inputs": [
                {
                    "name": i.name,
                    "shape": list(i.shape),
                    "dtype": i.dtype,
                    "example_shape": list(fm.example_shape(i)),
                }
                for i in fm.inputs
            ],
            "outputs": list(fm.outputs),
            # The prepared model against the user's, on held-out samples.
            "max_abs_diff_vs_input": dict(sorted((drift or {}).items())),
            "latency": float_latency,
        },
        "calibration": {
            "table": "calibration.json",
            "data": data.description if data is not None else None,
            "data_sha256": table.data_sha256,
            "samples": table.samples,
            "reused_cache": str(calib_cache) if calib_cache is not None else None,
            **method.to_json(),
        },
        "fidelity_data": held_note,
        "plan_options": options.to_json(),
        "artifacts": [artifact_entry(a, figures.get(a.backend, {})) for a in artifacts],
        "failures": list(failures),
    }


def export_table(ui: UI, out: Path, manifest: dict[str, Any]) -> None:
    """Float and INT8 side by side; speedup against float in the same runtime."""
    fl = manifest["float_model"]
    rows = []
    for runtime, lat in sorted(fl["latency"].items()):
        rows.append(
            [
                f"float ({runtime})",
                fmt_mb(fl["size_bytes"]),
                "1.00",
                fmt_ms(lat["p50_ms"]),
                "1.00x",
                "1.0000",
                "-",
                "-",
            ]
        )
    if not fl["latency"]:
        rows.append(["float", fmt_mb(fl["size_bytes"]), "1.00", "-", "-", "1.0000", "-", "-"])
    for a in manifest["artifacts"]:
        lat = a.get("latency") or []
        p50 = lat[0]["p50_ms"] if lat else None
        base = fl["latency"].get(a["backend"], {}).get("p50_ms")
        speed = f"{base / p50:.2f}x" if base and p50 else "-"
        fid = a.get("fidelity") or {}
        sq = fid.get("sqnr_db")
        rows.append(
            [
                f"{a['backend']} int8",
                fmt_mb(a["size_bytes"]),
                f"{a['size_bytes'] / fl['size_bytes']:.2f}",
                fmt_ms(p50),
                speed,
                fmt_num(fid.get("cosine")),
                "-" if sq is None else f"{sq:.1f}",
                fmt_num(fid.get("top1_agreement"), 3),
            ]
        )
    headers = [
        "model", "size MB", "size ratio", "p50 ms", "speedup", "cosine", "SQNR dB", "top-1 agree"
    ]  # fmt: skip
    title = f"quantship export → {out}   (fidelity on {manifest['fidelity_data']})"
    if not fl["latency"]:  # not benchmarked (--no-bench): no latency columns of dashes
        headers = headers[:3] + headers[5:]
        rows = [r[:3] + r[5:] for r in rows]
        title += "; latency not measured"
    ui.table(title, headers, rows)
