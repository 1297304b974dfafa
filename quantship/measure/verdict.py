"""The answer to "what is the fastest model I can deploy on this target within my
accuracy budget?": every float option the user has without us (each runtime's default
precision, its fastest, fp32) and every INT8 artifact, measured side by side on this
machine; the fastest that keeps the budget wins, whichever it is."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Without --max-drop: INT8 or bf16 must stay this close to fp32 (cosine of outputs on
# held-out data) to count as the same model.
DEFAULT_MIN_COSINE = 0.999
# An INT8 artifact the accuracy guard returned layers to float for must be at most this
# fraction of the float model's size: one larger keeps so much in float that the user
# is better served by the float model (the accuracy issue's rule).
MAX_GUARDED_SIZE = 0.5


@dataclass(frozen=True)
class Budget:
    """How close to fp32 a deployable model must stay: cosine of its outputs to the
    fp32 model's on the held-out data."""

    min_cosine: float = DEFAULT_MIN_COSINE
    source: str = f"cosine to fp32 >= {DEFAULT_MIN_COSINE} (the default)"

    def __post_init__(self) -> None:
        if not 0.0 < self.min_cosine <= 1.0:
            raise ValueError(f"a cosine budget is in (0, 1], got {self.min_cosine}")

    @classmethod
    def from_max_drop(cls, max_drop: float | None) -> Budget:
        if max_drop is None:
            return cls()
        return cls(1.0 - max_drop, f"1 - cosine to fp32 <= {max_drop} (--max-drop)")

    def meets(self, cosine: float | None) -> bool:
        return cosine is not None and cosine >= self.min_cosine


@dataclass(frozen=True)
class Option:
    """One deployable choice as measured: a float model at a precision in a runtime,
    or an INT8 artifact."""

    key: str  # stable: "<backend>:float:<precision>" or "<backend>:int8"
    label: str  # what runs, for people
    is_float: bool
    p50_ms: float | None
    cosine: float | None
    size_ratio: float | None = None  # a guarded INT8 artifact's size / the float model's


@dataclass(frozen=True)
class Verdict:
    choice: str | None  # key of the fastest option within the budget
    fastest_float: str | None  # key of the fastest float option within the budget
    speedup: Mapping[str, float]  # key → p50 of the fastest float / its p50
    warnings: tuple[str, ...]
    line: str

    def to_json(self, budget: Budget) -> dict[str, object]:
        return {
            "choice": self.choice,
            "fastest_float": self.fastest_float,
            "budget": budget.source,
            "min_cosine": budget.min_cosine,
            "warnings": list(self.warnings),
            "line": self.line,
        }


def decide(options: Sequence[Option], budget: Budget) -> Verdict:
    """The fastest option within the budget, and a warning for every INT8 artifact that
    is slower than the fastest float option within it or misses it.

    Without any fidelity measured (no held-out data) there is no verdict: speedups are
    against the fastest float option, and the line says what is missing."""
    timed = [o for o in options if o.p50_ms is not None]
    if not timed:
        return Verdict(None, None, {}, (), "latency not measured: no verdict")
    if all(o.cosine is None for o in options if not _is_reference(o)):
        return _unmeasured(timed)
    too_big = [o for o in timed if not o.is_float and (o.size_ratio or 0.0) > MAX_GUARDED_SIZE]
    ok = [o for o in timed if budget.meets(o.cosine) and o not in too_big]
    best_float = min((o for o in ok if o.is_float), key=_p50, default=None)
    speedup = _speedups(timed, best_float)
    warnings: list[str] = []
    for o in timed:
        if o.is_float:
            continue
        if best_float is not None and _p50(o) > _p50(best_float):
            warnings.append(
                f"{o.label} ({_p50(o):.3g} ms) is slower than the float model in "
                f"{best_float.label} ({_p50(best_float):.3g} ms)"
            )
        if o in too_big:
            warnings.append(
                f"{o.label} is {o.size_ratio:.2f}x the float model's size with the layers the "
                f"accuracy guard kept in float (more than {MAX_GUARDED_SIZE}x): not recommended"
            )
        if not budget.meets(o.cosine):
            warnings.append(
                f"{o.label} misses the budget ({budget.source}): cosine "
                + ("not measured" if o.cosine is None else f"{o.cosine:.4f}")
            )
    best = min(ok, key=_p50, default=None)
    if best is None:
        line = f"nothing measured here keeps the budget ({budget.source})"
    elif best.is_float:
        line = (
            f"fastest within the budget: {best.label}, the float model ({_p50(best):.3g} ms); "
            "no INT8 artifact within the budget beats it on this machine"
        )
        if any(not o.is_float for o in timed):
            line += ": INT8 does not pay for this model within this budget, deploy the float model"
    else:
        versus = (
            f", {speedup[best.key]:.2f}x the fastest float ({best_float.label})"
            if best_float is not None
            else ""
        )
        line = f"fastest within the budget: {best.label} ({_p50(best):.3g} ms{versus})"
    faster = [o for o in timed if o not in ok and (best is None or _p50(o) < _p50(best))]
    if best is not None and faster:
        f = min(faster, key=_p50)
        cos = "not measured" if f.cosine is None else f"{f.cosine:.4f}"
        line += f"; {f.label} is faster ({_p50(f):.3g} ms) but misses the budget (cosine {cos})"
    return Verdict(
        best.key if best else None,
        best_float.key if best_float else None,
        speedup,
        tuple(warnings),
        line,
    )


REFERENCE_PRECISION = "fp32"


def _is_reference(o: Option) -> bool:
    """A float option in fp32: the reference itself (its cosine is 1 by definition
    where it is the fp32 model that every option is compared with)."""
    return o.is_float and o.key.endswith(f":float:{REFERENCE_PRECISION}")


def _p50(o: Option) -> float:
    assert o.p50_ms is not None
    return o.p50_ms


def _speedups(timed: Sequence[Option], against: Option | None) -> dict[str, float]:
    if against is None:
        return {}
    return {o.key: _p50(against) / _p50(o) for o in timed}


def _unmeasured(timed: Sequence[Option]) -> Verdict:
    floats = [o for o in timed if o.is_float]
    best_float = min(floats, key=_p50, default=None)
    warnings = [
        f"{o.label} ({_p50(o):.3g} ms) is slower than the float model in "
        f"{best_float.label} ({_p50(best_float):.3g} ms)"
        for o in timed
        if not o.is_float and best_float is not None and _p50(o) > _p50(best_float)
    ]
    fastest = min(timed, key=_p50)
    line = (
        f"fidelity not measured (no held-out data), so no option is known to keep a "
        f"budget; the fastest here is {fastest.label} ({_p50(fastest):.3g} ms); give "
        "--held-out data for a verdict"
    )
    return Verdict(
        None,
        best_float.key if best_float else None,
        _speedups(timed, best_float),
        tuple(warnings),
        line,
    )
