"""The plan search's decisions, cached per everything they depend on (the model, the
calibration table and options, the held-out data and timing sample, each plan, the
budget, the runtime, the CPU, the threads, quantship's version), so a second export on
the same machine builds only the chosen plan. ``$QUANTSHIP_CACHE_DIR``, default
``~/.cache/quantship/plans``; a cache that cannot be read or written costs a
re-measurement, nothing else."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from quantship.backends.base import Backend, PlanOptions
    from quantship.backends.variants import PlanVariant
    from quantship.calibration.table import CalibrationTable
    from quantship.exporter.load import FloatModel
    from quantship.exporter.split import HeldOut
    from quantship.types import Feed


def cache_dir() -> Path:
    base = os.environ.get("QUANTSHIP_CACHE_DIR")
    if base:
        return Path(base) / "plans"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "quantship" / "plans"


def cache_key(
    backend: Backend,
    fm: FloatModel,
    table: CalibrationTable,
    options: PlanOptions,
    variants: list[PlanVariant],
    min_cosine: float | None,
    threads: int | None,
    held: HeldOut,
    sample: Feed | None,
    search_settings: list[float],
) -> str:
    """Everything the decision depends on: the model, calibration table and options,
    the held-out data it was judged on and the sample it was timed with, each plan,
    the budget, the runtime, the CPU, the threads and quantship's own version."""
    what = {
        **_inputs(backend, fm, table, options, threads, held),
        "sample": {k: list(v.shape) for k, v in (sample or {}).items()},
        "plans": [[v.name, v.what, *map(sorted, _sets(v))] for v in variants],
        "min_cosine": min_cosine,
        "search": search_settings,
    }
    return _digest(what)


def guard_key(
    backend: Backend,
    fm: FloatModel,
    table: CalibrationTable,
    options: PlanOptions,
    threads: int | None,
    held: HeldOut,
    max_drop: float,
    metric: str | None,
) -> str:
    """The accuracy guard's decision: its ranking uses latencies measured here, so a
    second export reuses the first's regions and its artifacts are byte-identical."""
    return _digest(
        {**_inputs(backend, fm, table, options, threads, held), "guard": [max_drop, metric]}
    )


def _digest(what: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def _inputs(
    backend: Backend,
    fm: FloatModel,
    table: CalibrationTable,
    options: PlanOptions,
    threads: int | None,
    held: HeldOut,
) -> dict[str, Any]:
    from quantship import __version__
    from quantship.measure.machine import cpu_info

    return {
        "model": fm.sha256,
        "table": hashlib.sha256(table.to_text().encode()).hexdigest(),
        "options": options.to_json(),
        "held": [held.note, held.start, held.stop],
        "backend": backend.name,
        "runtime": backend.version(),
        "quantship": __version__,
        "machine": cpu_info(),
        "threads": threads,
    }


def _sets(v: PlanVariant) -> tuple[frozenset[str], ...]:
    return (v.float_nodes, v.symmetric_inputs, v.int8_nodes, v.float_ops)


def names_of(value: object) -> frozenset[str] | None:
    """A cached list of node names, or None when the cache holds something else."""
    if isinstance(value, list) and all(isinstance(x, str) for x in value):
        return frozenset(value)
    return None


def cache_read(key: str) -> dict[str, Any] | None:
    path = cache_dir() / f"{key}.json"
    try:
        got = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return got if isinstance(got, dict) else None


def cache_write(key: str, record: dict[str, Any]) -> None:
    """Best effort: a cache that cannot be written costs a re-measurement, nothing else."""
    from quantship.exporter.output import write_json

    try:
        cache_dir().mkdir(parents=True, exist_ok=True)
        write_json(cache_dir() / f"{key}.json", record)
    except OSError:
        pass
