"""Plans chosen by measurement on the target (``export --plan search``).

Each backend offers variants of its rule table that its runtime's kernels tell apart
(``Backend.plan_variants``). The search builds every variant's artifact, measures its
fidelity against fp32 on the held-out samples and its latency interleaved beside the
others in the target runtime, and keeps the fastest within the budget: ``--max-drop``
when given, otherwise a cosine to fp32 at least the rule plan's. A variant must beat
the rule plan by more than the timing noise (``MARGIN``) to replace it. The cost is
bounded and said before it starts: one build and one fidelity pass per variant, and
``SECONDS_PER_CANDIDATE`` of interleaved timing each.

The decision is cached under the model's hash, the calibration table, the options,
the runtime's version and the CPU (``QUANTSHIP_CACHE_DIR``, default
``~/.cache/quantship``), so a second export on the same machine skips the measurement
and builds only the chosen plan; ``--plan NAME`` picks a variant without measuring.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantship.backends.base import Artifact, Backend, PlanOptions, SessionSettings
from quantship.backends.variants import RULES, PlanVariant
from quantship.bench.run import Candidate, bench_candidates, float_candidates
from quantship.bench.timing import BenchSettings, p50_by_key
from quantship.calibration.table import CalibrationTable
from quantship.errors import QuantshipError
from quantship.exporter.load import FloatModel
from quantship.exporter.split import HeldOut
from quantship.types import Feed
from quantship.ui import SILENT, UI

MARGIN = 0.02  # a variant must be this much faster than the rule plan to replace it
SECONDS_PER_CANDIDATE = 2.0
SEARCH = "search"


@dataclass(frozen=True)
class Choice:
    """The plan a backend builds, and what the search measured (None: not searched)."""

    variant: PlanVariant
    record: dict[str, Any] | None = None


def variants_of(backend: Backend) -> list[PlanVariant]:
    return [
        PlanVariant(RULES, "the backend's rule table", backend),
        *backend.plan_variants(),
    ]


def pick(backend: Backend, plan: str) -> Choice:
    """``--plan NAME``: that variant of ``backend`` (the rule table for ``rules``)."""
    from quantship.errors import closest

    found = {v.name: v for v in variants_of(backend)}
    if plan not in found:
        raise QuantshipError(
            f"--plan {plan!r} is not a plan of {backend.name} ({closest(plan, found)}); "
            f"its plans: {', '.join(found)}, or {SEARCH}"
        )
    return Choice(found[plan])


def search(
    backend: Backend,
    fm: FloatModel,
    table: CalibrationTable,
    options: PlanOptions,
    held: HeldOut,
    float_art: Artifact,
    work: Path,
    *,
    min_cosine: float | None,
    threads: int | None,
    sample: Feed | None = None,
    ui: UI = SILENT,
) -> Choice:
    """The fastest variant within the budget (``min_cosine``; None: the rule plan's
    cosine), measured here; or the cached decision for the same inputs."""
    from quantship.exporter.pipeline import build_artifact, measure_fidelity

    variants = variants_of(backend)
    if len(variants) == 1:
        return Choice(variants[0])
    if held.data is None:
        raise QuantshipError(
            "--plan search measures fidelity on held-out samples: give more calibration "
            "samples than --samples, or --held-out data"
        )
    key = _cache_key(backend, fm, table, options, variants, min_cosine, threads)
    cached = _cache_read(key)
    by_name = {v.name: v for v in variants}
    if cached is not None and cached.get("chosen") in by_name:
        ui.note(f"{backend.name}: plan {cached['chosen']!r} from the plan cache (measured earlier)")
        return Choice(by_name[cached["chosen"]], {**cached, "cached": True})
    floats = [
        c for c in float_candidates(float_art, [backend]) if c.default
    ]  # the float model as the runtime runs it by default, for scale
    n = len(variants) + len(floats)
    ui.note(
        f"{backend.name}: plan search over {len(variants)} plans: {len(variants)} builds and "
        f"fidelity passes, then {SECONDS_PER_CANDIDATE * n:.0f} s of interleaved timing"
    )
    t0 = time.perf_counter()
    shutil.rmtree(work, ignore_errors=True)
    cands: list[Candidate] = []
    try:
        for i, v in enumerate(variants):
            art, _ = build_artifact(v.backend, fm, table, options, work / str(i), SILENT)
            label = f"{v.backend.describe(art, SessionSettings())} [{v.name}]"
            cands.append(Candidate(label, v.backend, art, variant=v.name))
        fidelity, _ = measure_fidelity(fm, float_art, cands, held, threads, ui)
        settings = BenchSettings(warmup=3, duration=SECONDS_PER_CANDIDATE * n, threads=threads)
        stats = bench_candidates(
            [*floats, *cands], fm.inputs, settings, sample=sample,
            examples=fm.example_shapes, ui=ui,
        )  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    p50 = p50_by_key(stats, 1)
    rows: list[dict[str, Any]] = []
    for v, c in zip(variants, cands, strict=True):
        fid = fidelity.get(c.key) or {}
        rows.append({"plan": v.name, "what": v.what, "p50_ms": p50.get(c.key),
                     "cosine": fid.get("cosine")})  # fmt: skip
    chosen = _choose(rows, min_cosine)
    record = {
        "chosen": chosen,
        "plans": rows,
        "float_p50_ms": {c.key: p50.get(c.key) for c in floats},
        "min_cosine": min_cosine if min_cosine is not None else rows[0]["cosine"],
        "budget": "--max-drop" if min_cosine is not None else "the rule plan's cosine",
        "seconds": round(time.perf_counter() - t0, 1),
        "cached": False,
    }
    _cache_write(key, record)
    for r in rows:
        ui.note(
            f"{backend.name}: plan {r['plan']:<22} p50 {_ms(r['p50_ms'])}  cosine "
            f"{_num(r['cosine'])}{'   <- chosen' if r['plan'] == chosen else ''}"
        )
    return Choice(by_name[chosen], record)


def _choose(rows: list[dict[str, Any]], min_cosine: float | None) -> str:
    """The fastest plan within the budget; the rule plan (first) unless a plan beats
    it by more than ``MARGIN``."""
    rules = rows[0]
    floor = min_cosine if min_cosine is not None else rules["cosine"]
    if floor is None or rules["p50_ms"] is None:
        return str(rules["plan"])
    ok = [r for r in rows if r["cosine"] is not None and r["cosine"] >= floor and r["p50_ms"]]
    best = min(ok, key=lambda r: r["p50_ms"], default=rules)
    if best is rules or best["p50_ms"] > (1 - MARGIN) * rules["p50_ms"]:
        return str(rules["plan"])
    return str(best["plan"])


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f} ms"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.6f}"


def cache_dir() -> Path:
    base = os.environ.get("QUANTSHIP_CACHE_DIR")
    if base:
        return Path(base) / "plans"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "quantship" / "plans"


def _cache_key(
    backend: Backend,
    fm: FloatModel,
    table: CalibrationTable,
    options: PlanOptions,
    variants: list[PlanVariant],
    min_cosine: float | None,
    threads: int | None,
) -> str:
    from quantship.bench.machine import cpu_info

    what = {
        "model": fm.sha256,
        "table": hashlib.sha256(table.to_text().encode()).hexdigest(),
        "options": options.to_json(),
        "backend": backend.name,
        "runtime": backend.version(),
        "machine": cpu_info(),
        "threads": threads,
        "plans": [v.name for v in variants],
        "min_cosine": min_cosine,
        "search": [MARGIN, SECONDS_PER_CANDIDATE],
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def _cache_read(key: str) -> dict[str, Any] | None:
    path = cache_dir() / f"{key}.json"
    try:
        got = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return got if isinstance(got, dict) else None


def _cache_write(key: str, record: dict[str, Any]) -> None:
    """Best effort: a cache that cannot be written costs a re-measurement, nothing else."""
    from quantship.exporter.output import write_json

    try:
        cache_dir().mkdir(parents=True, exist_ok=True)
        write_json(cache_dir() / f"{key}.json", record)
    except OSError:
        pass
