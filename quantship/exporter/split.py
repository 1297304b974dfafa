"""Which samples calibrate and which measure fidelity (the held-out split)."""

from __future__ import annotations

from dataclasses import dataclass

from quantship.calibration.data import CalibrationData

DEFAULT_SAMPLES = 256
DEFAULT_HELD_OUT = 100
# Held-out samples run together when fidelity is measured (the export's, the guard's).
FIDELITY_BATCH = 8


@dataclass(frozen=True)
class HeldOut:
    """Calibration uses samples ``0 … calib_stop`` of the calibration data; fidelity is
    measured on samples ``start … stop`` of ``data`` (held-out data, or the calibration
    data's samples that calibration did not use). ``note`` says which, for reports."""

    calib_stop: int | None
    start: int
    stop: int | None
    data: CalibrationData | None
    note: str


def split_data(
    data: CalibrationData | None, samples: int | None, held: CalibrationData | None
) -> HeldOut:
    """Held-out data given: all of the calibration data (up to ``samples``) calibrates.
    Otherwise the samples after the calibration ones are held out; if there are none,
    the last fifth."""
    cap = samples or DEFAULT_SAMPLES
    if held is not None:
        return HeldOut(cap, 0, DEFAULT_HELD_OUT, held, f"held-out data {held.description}")
    if data is None:
        return HeldOut(None, 0, 0, None, "no held-out data: fidelity not measured")
    n = data.num_samples
    if n is None or n > cap:
        note = f"samples {cap}.. of the calibration data"
        return HeldOut(cap, cap, cap + DEFAULT_HELD_OUT, data, note)
    if n >= 5:
        h = min(DEFAULT_HELD_OUT, n // 5)
        note = f"the last {h} of {n} calibration samples (not used to calibrate)"
        return HeldOut(n - h, n - h, n, data, note)
    return HeldOut(n, 0, n, data, "the calibration samples themselves (too few to hold any out)")
