"""Pre-quantization algorithms, each a pure step on the float model (and its
calibration table): ``--algorithms cle,bias-correction`` or a preset.

- ``cle``: cross-layer equalization (``cle.py``) and ``smoothquant`` (``smoothquant.py``)
  change the model every backend plans from; it is calibrated again, since its
  activations' ranges change;
- ``adaround`` (``adaround.py``, needs torch) then ``bias-correction``
  (``bias_correction.py``): per backend, for the plan it will build.

The float model written to ``float/`` and the fp32 reference every figure is measured
against stay the user's prepared model: the algorithms change only what INT8 is made from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from quantship.backends.base import Backend, PlanOptions
from quantship.calibration.data import CalibrationData
from quantship.calibration.table import CalibrationTable
from quantship.errors import DataError, QuantshipError, closest
from quantship.exporter.load import FloatModel
from quantship.types import Feed
from quantship.ui import SILENT, UI

NAMES = ("cle", "smoothquant", "adaround", "bias-correction")
PRESETS: dict[str, tuple[str, ...]] = {"none": (), "auto": ()}
# "auto": SmoothQuant for a model with attention blocks (the ones whose activations
# carry outlier channels; NNCF turns it on for model_type=TRANSFORMER), nothing else.
DEFAULT = "auto"
# Calibration samples bias correction compares float and INT8 outputs on.
BIAS_SAMPLES = 32


@dataclass(frozen=True)
class Algorithms:
    names: tuple[str, ...] = ()
    auto: bool = False  # the "auto" preset: resolved per model by ``for_model``

    def __post_init__(self) -> None:
        for n in self.names:
            if n not in NAMES:
                raise QuantshipError(
                    f"--algorithms: unknown algorithm {n!r} ({closest(n, [*NAMES, *PRESETS])}); "
                    f"known: {', '.join(NAMES)}, or a preset: {', '.join(PRESETS)}"
                )

    @classmethod
    def parse(cls, spec: str | Sequence[str] | None) -> Algorithms:
        """``"cle,bias-correction"``, a preset name, or a list of names; in the order of
        ``NAMES`` whatever order they are given in."""
        if spec is None:
            spec = DEFAULT
        items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
        names: list[str] = []
        for s in filter(None, items):
            names.extend(PRESETS.get(s, (s,)))
        cls(tuple(names))  # unknown names fail here
        auto = "auto" in items
        return cls(tuple(n for n in NAMES if n in names), auto=auto)

    def for_model(self, fm: FloatModel, have_data: bool) -> Algorithms:
        """The "auto" preset made concrete: SmoothQuant where the model has an attention
        block and there is calibration data to smooth on."""
        if not self.auto:
            return self
        from quantship.backends.attention import attention_products

        names = set(self.names)
        if have_data and attention_products(fm.view()):
            names.add("smoothquant")
        return Algorithms(tuple(n for n in NAMES if n in names))

    def __contains__(self, name: str) -> bool:
        return name in self.names


def before_planning(
    fm: FloatModel,
    table: CalibrationTable,
    data: CalibrationData | None,
    calib_stop: int | None,
    algorithms: Algorithms,
    ui: UI = SILENT,
) -> tuple[FloatModel, CalibrationTable, dict[str, Any]]:
    """The model and table every backend plans from."""
    report: dict[str, Any] = {}
    changed = fm
    asked = [n for n in ("cle", "smoothquant") if n in algorithms]
    if asked and data is None:
        raise DataError(
            f"--algorithms {','.join(asked)} calibrates the changed model again: give --calib "
            "data (a --calib-cache table alone is not enough)"
        )
    if "cle" in algorithms:
        from quantship.algorithms.cle import equalize

        changed, rep = equalize(changed, table)
        report["cle"] = rep.to_json()
        ui.note(
            f"cross-layer equalization: {rep.pairs} convolution pair(s), {rep.relu6_replaced} "
            "ReLU6 → ReLU where the data stays below 6"
        )
    if "smoothquant" in algorithms:
        from quantship.algorithms.smoothquant import smooth

        assert data is not None
        before = changed
        changed, sq = smooth(changed, data, calib_stop, ui)
        report["smoothquant"] = sq.to_json()
        ui.note(f"SmoothQuant: {sq.smoothed} of {sq.groups} product input(s) smoothed")
        if before is fm and changed is not fm:
            # Only what SmoothQuant changed is calibrated again: the rest computes what
            # it did (a MiniLM-shaped encoder's export: 13 s of 57 s was the second pass).
            table = _recalibrated(changed, table, data, calib_stop, sq.changed, ui)
            return changed, table, report
    if changed is not fm:
        from quantship.calibration.runner import calibrate

        assert data is not None
        table = calibrate(changed, data, samples=calib_stop, histograms=table.histograms, ui=ui)
    return changed, table, report


def _recalibrated(
    fm: FloatModel,
    table: CalibrationTable,
    data: CalibrationData,
    calib_stop: int | None,
    tensors: Sequence[str],
    ui: UI,
) -> CalibrationTable:
    """``table`` for the changed model ``fm``: ``tensors`` observed again on the same
    samples, every other tensor's statistics kept."""
    import dataclasses

    from quantship.calibration.runner import calibrate

    new = calibrate(fm, data, samples=calib_stop, histograms=table.histograms,
                    only=frozenset(tensors), ui=ui)  # fmt: skip
    return dataclasses.replace(
        table, model_sha256=fm.sha256, tensors={**table.tensors, **new.tensors}
    )


def for_plan(
    fm: FloatModel,
    table: CalibrationTable,
    backend: Backend,
    options: PlanOptions,
    feeds: list[Feed],
    algorithms: Algorithms,
    ui: UI = SILENT,
    learned: dict[str, Any] | None = None,
) -> tuple[FloatModel, dict[str, Any]]:
    """The model ``backend`` builds its plan from. ``learned``: one dict passed for every
    backend of an export, so what AdaRound learned for one backend's weight grid is
    reused by another with the same grid."""
    report: dict[str, Any] = {}
    if "adaround" in algorithms:
        from quantship.algorithms.adaround import adaround

        if not feeds:
            raise DataError("--algorithms adaround needs calibration samples (--calib)")
        fm, ar = adaround(fm, table, backend, options, feeds, ui, learned)
        report["adaround"] = ar.to_json()
        ui.note(
            f"{backend.name}: AdaRound: {ar.done} of {ar.layers} layer(s) in {ar.seconds:.1f} s"
        )
    if "bias-correction" in algorithms:
        from quantship.algorithms.bias_correction import correct_biases

        if not feeds:
            raise DataError("--algorithms bias-correction needs calibration samples (--calib)")
        fm, rep = correct_biases(fm, table, backend, options, feeds, ui)
        report["bias_correction"] = rep.to_json()
        ui.note(f"{backend.name}: bias correction: {rep.layers} layer(s), {rep.samples} samples")
    return fm, report
