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
    is slower than a float option the user already has."""
    by = {o.key: o for o in options}
    timed = [o for o in options if o.p50_ms is not None]
    ok = [o for o in timed if budget.meets(o.cosine)]
    floats = sorted((o for o in ok if o.is_float), key=lambda o: o.p50_ms or 0.0)
    best_float = floats[0] if floats else None
    speedup = {
        o.key: best_float.p50_ms / o.p50_ms
        for o in timed
        if best_float is not None and best_float.p50_ms and o.p50_ms
    }
    warnings: list[str] = []
    fastest_float_any = min(
        (o for o in timed if o.is_float), key=lambda o: o.p50_ms or 0.0, default=None
    )
    for o in timed:
        if o.is_float or fastest_float_any is None:
            continue
        assert o.p50_ms is not None and fastest_float_any.p50_ms is not None
        if o.p50_ms > fastest_float_any.p50_ms:
            warnings.append(
                f"{o.label} ({o.p50_ms:.3g} ms) is slower than the float model in "
                f"{fastest_float_any.label} ({fastest_float_any.p50_ms:.3g} ms)"
            )
        if not budget.meets(o.cosine):
            warnings.append(
                f"{o.label} misses the budget ({budget.source}): cosine "
                + ("not measured" if o.cosine is None else f"{o.cosine:.4f}")
            )
    if not timed:
        return Verdict(None, None, {}, tuple(warnings), "latency not measured: no verdict")
    best = min(ok, key=lambda o: o.p50_ms or 0.0, default=None)
    if best is None:
        line = f"nothing measured here keeps the budget ({budget.source})"
    elif best.is_float:
        line = (
            f"fastest within the budget: {best.label}, the float model ({best.p50_ms:.3g} ms); "
            "no INT8 artifact beats it on this machine"
        )
    else:
        assert best.p50_ms is not None
        versus = (
            f", {speedup[best.key]:.2f}x the fastest float ({by[best_float.key].label})"
            if best_float is not None
            else ""
        )
        line = f"fastest within the budget: {best.label} ({best.p50_ms:.3g} ms{versus})"
    return Verdict(
        best.key if best else None,
        best_float.key if best_float else None,
        speedup,
        tuple(warnings),
        line,
    )
