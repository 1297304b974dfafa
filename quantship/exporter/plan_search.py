"""Plans chosen by measurement on the target (``export --plan search``).

Each backend offers variants of its rule table that its runtime's kernels tell apart
(``Backend.plan_variants``). The search builds every variant's artifact, measures its
fidelity against fp32 on the held-out samples and its latency interleaved beside the
others in the target runtime, and keeps the fastest within the budget: ``--max-drop``
when given, otherwise a cosine to fp32 at least the rule plan's. A variant must beat
the rule plan by more than the timing noise (``MARGIN``) to replace it. The cost is
bounded and said before it starts: one build and one fidelity pass per variant, and
``SECONDS_PER_CANDIDATE`` of interleaved timing each.

Where the backend has a per-layer profiler, the search adds one plan of its own,
decided region by region (``profile-guided``, see ``plan_regions``): from the
runtime's per-layer profiles of the rule plan, of each variant a region can take
alone (symmetric inputs, the activation's quantization placed otherwise) and of the
default float model, each weighted layer with its activation keeps the rule plan,
takes the variant that is fastest there, or stays float where INT8 is no faster. It
is measured like every other variant.

The decision is cached (``exporter/plan_cache.py``), so a second export on the same
machine skips the measurement and builds only the chosen plan; ``--plan NAME`` picks
a variant without measuring.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantship.backends.base import Artifact, Backend, PlanOptions, SessionSettings
from quantship.backends.variants import RULES, PlanVariant
from quantship.calibration.table import CalibrationTable
from quantship.errors import QuantshipError
from quantship.exporter.load import FloatModel
from quantship.exporter.measure import export_bench
from quantship.exporter.output import sha256_file
from quantship.exporter.plan_cache import cache_key, cache_read, cache_write, names_of
from quantship.exporter.plan_regions import (
    decide,
    guided_variant,
    make_guided,
    region_ms,
    region_names,
    regional,
    regions_of,
)
from quantship.exporter.split import HeldOut
from quantship.measure.run import Candidate, bench_candidates, float_candidates, make_feeds
from quantship.measure.timing import p50_by_key
from quantship.types import Feed
from quantship.ui import SILENT, UI

MARGIN = 0.02  # a variant must be this much faster than the rule plan to replace it
SECONDS_PER_CANDIDATE = 2.0
PROFILE_RUNS = 20
SEARCH = "search"
GUIDED = "profile-guided"  # the rule plan, each region decided from the profiles
REGION_KEYS = ("float_nodes", "symmetric_inputs", "int8_nodes")


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
    ray: str | None = None,
    ui: UI = SILENT,
) -> Choice:
    """The fastest variant within the budget (``min_cosine``; None: the rule plan's
    cosine), measured here; or the cached decision for the same inputs. With ``ray``
    (a Ray cluster's address), the variants' builds (plan, QDQ, compile: OpenVINO's
    compiles and static-shape checks are most of it) run as parallel tasks and their
    files come back here; fidelity and the interleaved timing stay here, where the
    candidates must be measured side by side."""
    from quantship.exporter.pipeline import build_artifact, measure_fidelity

    variants = variants_of(backend)
    if len(variants) == 1:
        return Choice(variants[0])
    if held.data is None:
        raise QuantshipError(
            "--plan search measures fidelity on held-out samples: give more calibration "
            "samples than --samples, or --held-out data"
        )
    key = cache_key(backend, fm, table, options, variants, min_cosine, threads, held, sample,
                    [MARGIN, SECONDS_PER_CANDIDATE, PROFILE_RUNS])  # fmt: skip
    cached = cache_read(key)
    by_name = {v.name: v for v in variants}
    if cached is not None and isinstance(cached.get("chosen"), str):
        name = cached["chosen"]
        regions_ = cached.get("regions")
        if name == GUIDED and isinstance(regions_, dict):
            sets = [names_of(regions_.get(k)) for k in REGION_KEYS]
            if all(x is not None for x in sets):
                nodes, sym, int8 = (x or frozenset() for x in sets)
                by_name[GUIDED] = make_guided(GUIDED, variants[0], nodes, sym, int8)
        if name in by_name:
            ui.note(f"{backend.name}: plan {name!r} from the plan cache (measured earlier)")
            return Choice(by_name[name], {**cached, "cached": True})
    floats = [
        c for c in float_candidates(float_art, [backend]) if c.default
    ]  # the float model as the runtime runs it by default, for scale and the profile
    guided = bool(floats) and backend.capabilities().profile
    n = len(variants) + len(floats) + int(guided)
    ui.note(
        f"{backend.name}: plan search over {len(variants)} plans"
        + (" and one from the rule plan's per-layer profile" if guided else "")
        + f": a build and fidelity pass each, then up to {SECONDS_PER_CANDIDATE * n:.0f} s "
        "of interleaved timing (plans that give this model the same artifact as another "
        "are not timed)"
    )
    t0 = time.perf_counter()
    shutil.rmtree(work, ignore_errors=True)
    cands: list[Candidate] = []

    built: dict[str, str] = {}  # the artifact's files' digest -> the first plan that made it
    same: dict[str, str] = {}  # a plan -> the earlier plan whose artifact it repeats

    failed: dict[str, str] = {}  # a plan -> why it could not be built here

    prebuilt: dict[int, Artifact | str] = {}
    if ray is not None:
        from quantship.fleet import map_tasks

        args = [(v.backend, fm, table, v.options(options, fm)) for v in variants]
        for i, got in enumerate(map_tasks(_build_remote, args, ray, ui, "plan builds")):
            if isinstance(got, str):
                prebuilt[i] = got
            else:
                files, meta = got
                for rel, data in files.items():
                    (work / str(i) / rel).parent.mkdir(parents=True, exist_ok=True)
                    (work / str(i) / rel).write_bytes(data)
                prebuilt[i] = Artifact(root=work / str(i), **meta)

    def add(i: int, v: PlanVariant) -> Candidate | None:
        try:
            got = prebuilt.get(i)
            if isinstance(got, str):
                raise QuantshipError(got)
            art = got if got is not None else build_artifact(
                v.backend, fm, table, v.options(options, fm), work / str(i), SILENT
            )[0]  # fmt: skip
        except QuantshipError as e:
            if v.name == RULES:
                raise
            failed[v.name] = str(e).splitlines()[0]  # the others are still measured
            return None
        digest = "".join(sha256_file(art.root / f) for f in art.files)
        label = f"{v.backend.describe(art, SessionSettings())} [{v.name}]"
        cand = Candidate(label, v.backend, art, variant=v.name)
        if digest in built:  # nothing this model has for the variant to change: not timed
            same[v.name] = built[digest]
        else:
            built[digest] = v.name
            cands.append(cand)
        return cand

    try:
        for i, v in enumerate(list(variants)):
            add(i, v)
        if guided:
            feeds = make_feeds(fm.inputs, fm.fixed_batch or 1, sample, examples=fm.example_shapes)
            regional = regional_plan(fm, variants, cands, floats[0], feeds, threads)
            if regional is not None:
                variants.append(regional)
                add(len(variants) - 1, regional)
        fidelity, _ = measure_fidelity(fm, float_art, cands, held, threads, ui)
        seconds = SECONDS_PER_CANDIDATE * (len(cands) + len(floats))
        settings = dataclasses.replace(export_bench(fm, threads), warmup=3, duration=seconds)
        stats = bench_candidates(
            [*floats, *cands], fm.inputs, settings, sample=sample,
            examples=fm.example_shapes, ui=ui,
        )  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    p50 = p50_by_key(stats, settings.batches[0])
    rows: list[dict[str, Any]] = []
    by_plan = {c.variant: c for c in cands}
    for v in variants:
        if v.name in same:
            rows.append({"plan": v.name, "what": v.what, "same_as": same[v.name]})
            continue
        if v.name in failed:
            rows.append({"plan": v.name, "what": v.what, "error": failed[v.name]})
            continue
        c = by_plan[v.name]
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
    guided_variant = next((v for v in variants if v.name == GUIDED), None)
    if guided_variant is not None:
        v = guided_variant
        record["regions"] = dict(zip(REGION_KEYS, (sorted(v.float_nodes), sorted(
            v.symmetric_inputs), sorted(v.int8_nodes)), strict=True))  # fmt: skip
    cache_write(key, record)
    for r in rows:
        ui.note(
            f"{backend.name}: plan {r['plan']:<22} "
            + (
                f"the same model as {r['same_as']!r} here"
                if "same_as" in r
                else f"not built here: {r['error']}"
                if "error" in r
                else f"p50 {_ms(r['p50_ms'])}  cosine {_num(r['cosine'])}"
            )
            + ("   <- chosen" if r["plan"] == chosen else "")
        )
    return Choice(next(v for v in variants if v.name == chosen), record)


def regional_plan(
    fm: FloatModel,
    variants: list[PlanVariant],
    built: list[Candidate],
    float_default: Candidate,
    feeds: Feed,
    threads: int | None,
) -> PlanVariant | None:
    """The rule plan decided region by region (``plan_regions``) from the per-layer
    profiles of the rule plan, of each variant a region can take alone, and of the
    default float model. None when every region keeps the rule plan."""
    names = region_names(fm.proto)
    by_name = {c.variant: c for c in built}

    def times(c: Candidate) -> dict[str, float]:
        with c.backend.session(c.artifact, c.settings(threads)) as s:
            return region_ms(s.profile(feeds, PROFILE_RUNS), names)

    base = variants[0]
    alts = {k: v for k, v in regional(variants, base).items() if k in by_name}
    rules, flt = times(by_name[RULES]), times(float_default)
    choices = decide(rules, flt, {k: times(by_name[k]) for k in alts}, MARGIN)
    return guided_variant(GUIDED, base, regions_of(fm.proto), choices, alts)


def _build_remote(
    backend: Backend, fm: FloatModel, table: CalibrationTable, options: PlanOptions
) -> tuple[dict[str, bytes], dict[str, Any]] | str:
    """A variant's build as a Ray task: its files and what describes the artifact, or
    why it could not be built."""
    import tempfile

    from quantship.exporter.pipeline import build_artifact

    with tempfile.TemporaryDirectory(prefix="quantship-plan-") as tmp:
        try:
            art, _ = build_artifact(backend, fm, table, options, Path(tmp), SILENT)
        except QuantshipError as e:
            return str(e)
        files = {rel: (Path(tmp) / rel).read_bytes() for rel in art.files}
    meta = {"backend": art.backend, "format": art.format, "files": art.files,
            "precision": art.precision, "metadata": dict(art.metadata), "notes": art.notes}  # fmt: skip
    return files, meta


def _choose(rows: list[dict[str, Any]], min_cosine: float | None) -> str:
    """The fastest plan within the budget; the rule plan (first) unless a plan beats
    it by more than ``MARGIN``."""
    rules = rows[0]
    floor = min_cosine if min_cosine is not None else rules["cosine"]
    if floor is None or rules["p50_ms"] is None:
        return str(rules["plan"])
    ok = [r for r in rows if r.get("cosine") is not None and r["cosine"] >= floor and r["p50_ms"]]
    best = min(ok, key=lambda r: r["p50_ms"], default=rules)
    if best is rules or best["p50_ms"] > (1 - MARGIN) * rules["p50_ms"]:
        return str(rules["plan"])
    return str(best["plan"])


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f} ms"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.6f}"
