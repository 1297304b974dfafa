"""The per-backend steps of an export: building an artifact, and measuring every
candidate (each float option and each INT8 artifact) against the fp32 model on the
held-out samples."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy.typing as npt

from quantship.backends.base import Artifact, Backend, PlanOptions, Session, SessionSettings
from quantship.calibration.runner import batches
from quantship.calibration.table import CalibrationTable
from quantship.errors import QuantshipError
from quantship.exporter.load import FloatModel
from quantship.exporter.qdq import write_qdq
from quantship.exporter.split import FIDELITY_BATCH, HeldOut
from quantship.measure.fidelity import FidelityMeter
from quantship.measure.run import Candidate
from quantship.types import Feed
from quantship.ui import UI


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
    del qdq
    ui.note(
        f"{backend.name}: {len(plan.quantized_nodes)} nodes in INT8, "
        f"{len(plan.float_nodes)} quantizable nodes left in float"
    )
    for note in art.notes:
        ui.note(f"{backend.name}: {note}")
    return art, plan.summary()


Outputs = list[dict[str, npt.NDArray[Any]]]


def measure_fidelity(
    fm: FloatModel,
    float_art: Artifact,
    candidates: Sequence[Candidate],
    held: HeldOut,
    threads: int | None,
    ui: UI,
    drift_check: tuple[list[Feed], Outputs] = ([], []),
    pooling: str | None = None,
) -> tuple[dict[str, dict[str, Any] | None], dict[str, float | None]]:
    """Fidelity of every candidate (float options and INT8 artifacts) against the fp32
    model in the default runtime, on the held-out samples, by candidate key. Also returns how
    far the prepared float model's outputs are from the user's model's (``drift_check``:
    feeds and the user's model's outputs on them). ``pooling`` ("mean", "cls"): also
    the sentence embeddings' cosine and nearest-neighbour agreement.

    Memory: the fp32 model runs first and its outputs are kept, unless they would take
    more memory than the model itself; then it is freed before each candidate runs, one
    at a time. A model of several GB is so never in memory twice."""
    import contextlib

    from quantship.backends import registry
    from quantship.exporter.prepare import max_abs_diff

    data = held.data
    names = list(fm.outputs)
    with contextlib.ExitStack() as stack:
        # The reference: fp32 in the default runtime, the float model as exported.
        reference = registry.get(registry.DEFAULT)
        ref: Session | None = stack.enter_context(
            reference.session(float_art, SessionSettings(threads=threads, precision="fp32"))
        )
        assert ref is not None
        feeds, theirs = drift_check
        ours = [dict(zip(names, ref.run(f), strict=True)) for f in feeds]
        drift = max_abs_diff(theirs, ours)
        if data is None:
            return {}, drift
        fixed = fm.fixed_batch

        def samples() -> Iterator[tuple[Feed, int]]:
            assert data is not None
            feeds = data.samples(held.start, held.stop)
            yield from batches(feeds, fixed or FIDELITY_BATCH, full_only=fixed is not None)

        total = None
        if data.num_samples is not None and held.stop is not None:
            total = max(0, min(held.stop, data.num_samples) - held.start)

        budget = float_art.size_bytes()
        kept: list[list[npt.NDArray[Any]]] | None = []
        with ui.progress("measuring fidelity: fp32 reference", total) as advance:
            for feed, n in samples():
                out = ref.run(feed)
                assert kept is not None
                kept.append(out)
                advance(n)
                if sum(a.nbytes for o in kept for a in o) > budget:
                    kept = None  # outputs outgrow the model: run it beside each candidate
                    break
        if kept is not None:
            stack.close()  # the reference is no longer needed: free it
            ref = None
        return (
            _compare(fm, candidates, held, threads, ui, samples, total, kept, ref, pooling),
            drift,
        )


def _compare(
    fm: FloatModel,
    candidates: Sequence[Candidate],
    held: HeldOut,
    threads: int | None,
    ui: UI,
    samples: Callable[[], Iterator[tuple[Feed, int]]],
    total: int | None,
    kept: list[list[npt.NDArray[Any]]] | None,
    ref: Session | None,
    pooling: str | None = None,
) -> dict[str, dict[str, Any] | None]:
    result: dict[str, dict[str, Any] | None] = {}
    for c in candidates:
        meter = FidelityMeter(fm.outputs, pooling)
        with (
            c.backend.session(c.artifact, c.settings(threads)) as session,
            ui.progress(f"measuring fidelity: {c.label}", total) as advance,
        ):
            for k, (feed, n) in enumerate(samples()):
                expected = kept[k] if kept is not None else ref.run(feed)  # type: ignore[union-attr]
                got = session.run(feed)
                try:
                    meter.update(expected, got, feed)
                except ValueError as e:
                    raise QuantshipError(str(e)) from None
                advance(n)
        result[c.key] = meter.result(held.note).to_json() if meter.samples else None
    return result
