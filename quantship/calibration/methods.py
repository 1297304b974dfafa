"""Choosing the real range [lo, hi] that a tensor's 8-bit grid covers, from its stats.

Pure functions of ``TensorStats``. A narrower range than min/max clips rare outliers
and buys resolution for the values that occur most; each method decides the trade:

- ``minmax``: the observed range; no clipping.
- ``percentile``: clip at the p-th percentile of the values (of |x| for a symmetric
  grid, of each tail for an asymmetric one).
- ``entropy``: TensorRT's calibrator: the clip threshold whose 8-bit histogram has the
  least Kullback–Leibler divergence from the float histogram.
- ``mse``: the clip that minimises the expected squared quantization error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from quantship.calibration.observers import Histogram, TensorStats
from quantship.calibration.qparams import QDType, QuantParams, params_from_range

Method = Literal["minmax", "percentile", "entropy", "mse"]
METHODS: tuple[Method, ...] = ("minmax", "percentile", "entropy", "mse")
DEFAULT_PERCENTILE = 99.99
ENTROPY_BINS = 2048
ENTROPY_MIN_VALUES = 4 * ENTROPY_BINS


@dataclass(frozen=True)
class MethodSpec:
    """A calibration method and its setting, validated on construction."""

    method: Method = "percentile"
    percentile: float = DEFAULT_PERCENTILE

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            from quantship.errors import closest

            raise ValueError(
                f"unknown calibration method {self.method!r}; {closest(self.method, METHODS)}"
            )
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {self.percentile}")

    @property
    def needs_histogram(self) -> bool:
        return self.method != "minmax"

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"method": self.method}
        if self.method == "percentile":
            d["percentile"] = self.percentile
        return d


def tensor_range(stats: TensorStats, spec: MethodSpec, *, symmetric: bool) -> tuple[float, float]:
    """The clipped real range for a tensor under ``spec``; always within [min, max]."""
    if stats.count == 0:
        raise ValueError(f"tensor {stats.name!r} was never observed")
    lo, hi = stats.min, stats.max
    if spec.method == "minmax" or lo == hi:
        return lo, hi
    hist = stats.histogram()
    if hist is None:
        raise ValueError(
            f"tensor {stats.name!r} has no histogram (calibrated with minmax); "
            f"method {spec.method!r} needs one"
        )
    if spec.method == "percentile":
        return _percentile_range(stats, hist, spec.percentile, symmetric)
    if spec.method == "entropy":
        # Exact zeros are left out: zero is exact on every grid we build, so they carry no
        # quantization error, and a ReLU output's spike of zeros would otherwise dominate
        # the divergence and pull the threshold far in.
        nonzero = stats.hist
        if nonzero is None or nonzero.total < ENTROPY_MIN_VALUES:
            # Too few values for a divergence over 2048 bins to mean anything (a pooled
            # vector over a handful of samples): keep the observed range.
            return lo, hi
        unsigned = lo >= 0 and not symmetric
        t = entropy_threshold(nonzero.abs_counts(), nonzero.width, levels=256 if unsigned else 128)
        return max(lo, -t), min(hi, t)
    return _mse_range(stats, hist, symmetric)


def activation_params(
    stats: TensorStats, spec: MethodSpec, *, dtype: QDType, symmetric: bool
) -> QuantParams:
    lo, hi = tensor_range(stats, spec, symmetric=symmetric)
    return params_from_range(lo, hi, dtype, symmetric=symmetric)


def _percentile_range(
    stats: TensorStats, hist: Histogram, pct: float, symmetric: bool
) -> tuple[float, float]:
    q = pct / 100.0
    if symmetric:
        counts = hist.abs_counts()
        cum = np.cumsum(counts)
        k = int(np.searchsorted(cum, q * cum[-1], side="left"))
        t = min((k + 1) * hist.width, stats.absmax)
        return max(stats.min, -t), min(stats.max, t)
    cum = np.cumsum(hist.counts)
    total = cum[-1]
    k_hi = int(np.searchsorted(cum, q * total, side="left"))
    k_lo = int(np.searchsorted(cum, (1.0 - q) * total, side="left"))
    hi = min((hist.lo + k_hi + 1) * hist.width, stats.max)
    lo = max((hist.lo + k_lo) * hist.width, stats.min)
    return min(lo, hi), max(lo, hi)


def entropy_threshold(abs_counts: npt.NDArray[np.int64], width: float, levels: int = 128) -> float:
    """TensorRT's entropy calibration on a histogram of |x| (bins of ``width`` from 0).

    For each candidate threshold (a bin edge ``i``): the reference P is the histogram
    clipped at ``i`` with the clipped-off mass added to its last bin; the candidate Q is
    P's bins merged into ``levels`` groups and spread back uniformly over each group's
    non-empty bins. The threshold minimising KL(P ‖ Q) wins. Empty Q bins where P has
    mass are smoothed with a small epsilon so a single outlier cannot make KL infinite.
    """
    counts = np.trim_zeros(np.asarray(abs_counts, dtype=np.float64), "b")
    while counts.size > ENTROPY_BINS:  # TensorRT's resolution: 2048 bins up to max|x|
        if counts.size % 2:
            counts = np.append(counts, 0.0)
        counts = counts[0::2] + counts[1::2]
        width *= 2
    n = counts.size
    if n <= levels:
        return n * width  # fewer bins than levels: every value is already exact enough
    total = counts.sum()
    tail = np.concatenate([np.cumsum(counts[::-1])[::-1], [0.0]])  # tail[i] = sum(counts[i:])
    step = max(1, (n - levels) // 1024)
    best_i, best_kl = n, np.inf
    eps = 1e-10
    for i in range(levels, n + 1, step):
        p = counts[:i].copy()
        p[-1] += tail[i]
        nonzero = counts[:i] > 0
        # Group boundaries: `levels` near-equal groups of the first i bins.
        bounds = (np.arange(levels + 1) * i) // levels
        group_sum = np.add.reduceat(counts[:i], bounds[:-1])
        group_nz = np.add.reduceat(nonzero.astype(np.float64), bounds[:-1])
        per_bin = np.divide(group_sum, group_nz, out=np.zeros_like(group_sum), where=group_nz > 0)
        q = np.repeat(per_bin, np.diff(bounds)) * nonzero
        p /= total
        qs = q.sum()
        if qs <= 0:
            continue
        q /= qs
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], eps))))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return (best_i + 0.5) * width if best_i < n else n * width


def _mse_range(stats: TensorStats, hist: Histogram, symmetric: bool) -> tuple[float, float]:
    """Shrink [min, max] by a common factor α ∈ [0.2, 1] to minimise the expected squared
    error of quantize→dequantize over the histogram (values at bin centres)."""
    edges = hist.edges()
    centers = 0.5 * (edges[:-1] + edges[1:])
    w = hist.counts.astype(np.float64)
    centers = np.clip(centers, stats.min, stats.max)
    best = (np.inf, stats.min, stats.max)
    # From wide to narrow, so that a tie keeps the wider range (less clipping).
    for alpha in np.linspace(1.0, 0.2, 81):
        lo, hi = stats.min * alpha, stats.max * alpha
        p = params_from_range(lo, hi, "int8" if symmetric else "uint8", symmetric=symmetric)
        s = float(p.scale)
        z = float(p.zero_point)
        qmin, qmax = (-128, 127) if p.dtype == "int8" else (0, 255)
        q = np.clip(np.rint(centers / s) + z, qmin, qmax)
        err = float(np.sum(w * (centers - (q - z) * s) ** 2))
        if err < best[0]:
            best = (err, lo, hi)
    return best[1], best[2]
