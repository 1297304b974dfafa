"""What an export reports: ``manifest.json`` (inputs' hashes, versions, machine,
settings, every float option and artifact with its figures, the verdict) and the
closing table in the terminal."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantship.backends.base import Artifact, Backend, PlanOptions
from quantship.calibration.data import CalibrationData
from quantship.calibration.methods import MethodSpec
from quantship.calibration.table import CalibrationTable
from quantship.exporter.load import FloatModel
from quantship.exporter.manifest import FORMAT, artifact_entry, runtime_info, versions
from quantship.exporter.output import sha256_file
from quantship.measure.report import fmt_mb, fmt_ms, fmt_num
from quantship.measure.run import Candidate
from quantship.measure.timing import LatencyStats, p50_by_key
from quantship.measure.verdict import Budget, Verdict
from quantship.ui import UI


@dataclass(frozen=True)
class Measured:
    """Every candidate's figures from one export: fidelity and latency by candidate
    key, the verdict, and the budget it was judged by."""

    floats: Sequence[Candidate]
    artifacts: Sequence[Candidate]
    fidelity: Mapping[str, dict[str, Any] | None]
    latency: Sequence[LatencyStats]
    verdict: Verdict
    budget: Budget

    def latency_of(self, c: Candidate) -> list[dict[str, Any]]:
        """Its rows: wall clock at each batch size, and device time where there is one."""
        return [
            s.to_json(samples=False) for s in self.latency if s.key in (c.key, f"{c.key}:device")
        ]

    def p50(self, c: Candidate) -> float | None:
        """Wall-clock p50 at the first batch size measured."""
        if not self.latency:
            return None
        return p50_by_key(self.latency, self.latency[0].batch).get(c.key)


def manifest_for(
    fm: FloatModel,
    table: CalibrationTable,
    data: CalibrationData | None,
    held_note: str,
    method: MethodSpec,
    options: PlanOptions,
    float_art: Artifact,
    backends: Sequence[Backend],
    measured: Measured,
    figures: Mapping[str, dict[str, Any]],
    failures: Sequence[str],
    calib_cache: object,
    drift: Mapping[str, float | None],
    sharding: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    v = measured.verdict
    baselines = [
        {
            "key": c.key,
            "label": c.label,
            "backend": c.backend.name,
            "precision": c.precision,
            "default": c.default,
            "p50_ms": measured.p50(c),
            "cosine": (measured.fidelity.get(c.key) or {}).get("cosine"),
            "latency": measured.latency_of(c),
            "fidelity": measured.fidelity.get(c.key),
            "speedup": v.speedup.get(c.key),
            "recommended": v.choice == c.key,
        }
        for c in measured.floats
    ]
    arts = []
    for c in measured.artifacts:
        arts.append(
            artifact_entry(
                c.artifact,
                {
                    "key": c.key,
                    "label": c.label,
                    "fidelity": measured.fidelity.get(c.key),
                    "p50_ms": measured.p50(c),
                    "latency": measured.latency_of(c),
                    "speedup": v.speedup.get(c.key),
                    "recommended": v.choice == c.key,
                    **figures.get(c.backend.name, {}),
                },
            )
        )
    return {
        "format": FORMAT,
        "created_by": "quantship export",
        "versions": {**versions(), **{b.name: b.version() for b in backends}},
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
            "max_abs_diff_vs_input": dict(sorted(drift.items())),
        },
        "calibration": {
            "table": "calibration.json",
            "data": data.description if data is not None else None,
            "data_sha256": table.data_sha256,
            "samples": table.samples,
            # Per input, each axis's [smallest, largest] size in the data: the sequence
            # lengths INT8 was calibrated on.
            "input_sizes": {k: [list(r) for r in v] for k, v in sorted(table.input_dims.items())},
            "reused_cache": str(calib_cache) if calib_cache is not None else None,
            **method.to_json(),
            # How the pass was split over a Ray cluster (--ray); the table is the same.
            **({"sharded": dict(sharding)} if sharding is not None else {}),
        },
        "fidelity_data": held_note,
        "plan_options": options.to_json(),
        "baselines": baselines,
        "artifacts": arts,
        "verdict": v.to_json(measured.budget),
        "failures": list(failures),
    }


def export_table(ui: UI, out: Path, manifest: dict[str, Any]) -> None:
    """Every float option and INT8 artifact, timed side by side; speedup against the
    fastest float option within the budget; then the verdict."""
    fl = manifest["float_model"]
    timed = any(b["p50_ms"] is not None for b in manifest["baselines"]) or any(
        a.get("latency") for a in manifest["artifacts"]
    )
    rows = []
    for b in manifest["baselines"]:
        fid = b.get("fidelity") or {}
        rows.append(_row(b["label"], fl["size_bytes"], fl["size_bytes"], b["p50_ms"], b, fid))
    for a in manifest["artifacts"]:
        rows.append(
            _row(a["label"], a["size_bytes"], fl["size_bytes"], a.get("p50_ms"), a,
                 a.get("fidelity") or {})
        )  # fmt: skip
    headers = [
        "model", "size MB", "size ratio", "p50 ms", "speedup", "cosine", "SQNR dB", "top-1 agree"
    ]  # fmt: skip
    entries = [*manifest["baselines"], *manifest["artifacts"]]
    pooled = next(
        ((e.get("fidelity") or {}).get("sentence") for e in entries
         if (e.get("fidelity") or {}).get("sentence")), None,
    )  # fmt: skip
    if pooled is not None:  # --pooling: sentence embeddings' cosine, nearest-neighbour agreement
        headers += [f"sentence cos ({pooled['pooling']})", "same nearest"]
        for row, e in zip(rows, entries, strict=True):
            s = (e.get("fidelity") or {}).get("sentence") or {}
            row += [fmt_num(s.get("cosine")), fmt_num(s.get("same_nearest"), 3)]
    v = manifest["verdict"]
    title = f"quantship export → {out}   (fidelity against fp32 on {manifest['fidelity_data']})"
    if not timed:  # not benchmarked (--no-bench): no latency columns of dashes
        headers = headers[:3] + headers[5:]
        rows = [r[:3] + r[5:] for r in rows]
        title += "; latency not measured"
    else:
        best = next(
            (b["label"] for b in manifest["baselines"] if b["key"] == v["fastest_float"]), None
        )
        title += f"; speedup against {best or 'no float option within the budget'}"
    ui.table(title, headers, rows)
    if timed:
        ui.note(f"verdict ({v['budget']}): {v['line']}")
    for w in v["warnings"]:
        ui.note(f"warning: {w}")


def _row(
    label: str,
    size: int,
    float_size: int,
    p50: float | None,
    entry: Mapping[str, Any],
    fid: Mapping[str, Any],
) -> list[str]:
    speed = entry.get("speedup")
    sq = fid.get("sqnr_db")
    mark = " *" if entry.get("recommended") else ""
    return [
        label + mark,
        fmt_mb(size),
        f"{size / float_size:.2f}",
        fmt_ms(p50),
        "-" if speed is None else f"{speed:.2f}x",
        fmt_num(fid.get("cosine")),
        "-" if sq is None else f"{sq:.1f}",
        fmt_num(fid.get("top1_agreement"), 3),
    ]
