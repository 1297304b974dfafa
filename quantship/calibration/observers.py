"""Streaming statistics of one tensor: running min/max and a mergeable histogram.

Memory is bounded by the histogram, never by the number of samples: each batch
updates the counts and is dropped. Two observers over two shards merge into exactly
the observer over both (same counts, same bin width), so calibration can be split
across batches, workers or runs, and a table can be extended later.

How the histogram stays exactly mergeable: bins have width ``w = 2**e`` and edges at
integer multiples of ``w`` (bin ``i`` holds ``[i·w, (i+1)·w)``). ``e`` is always the
smallest exponent with ``max|x| < w · HALF_BINS``, a function of the data seen and not
of the order it came in. When a new batch widens the range, ``w`` doubles and pairs of
bins are summed, which is exact because edges stay aligned. Merging coarsens the finer
histogram to the coarser width the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

# Bins on each side of zero at the finest width that holds the data. The occupied
# part is between HALF_BINS/2 and HALF_BINS bins, so at least 2048 bins cover max|x|:
# the resolution TensorRT's entropy calibrator uses.
HALF_BINS = 4096
# The histogram is built from a fixed systematic sample of at most this many values of
# each tensor per sample (every k-th value, k fixed by the tensor's size). Min and max
# always see every value. 256 samples give each tensor's histogram ≥ 4M values, plenty
# for 2048 bins and a 99.99th percentile, and histogramming stops dominating the
# calibration time (on a 640×640 detector it was 70% of it).
HIST_VALUES_PER_SAMPLE = 16384


def sample_stride(per_sample: int) -> int:
    """Every k-th value of a sample goes into the histogram; k depends on the number of
    values per sample only, so the same values are picked however samples are batched."""
    return max(1, -(-per_sample // HIST_VALUES_PER_SAMPLE))


def _exponent_for(amax: float) -> int:
    """Smallest e with amax < 2**e * HALF_BINS (amax > 0, finite)."""
    # amax / H = m · 2**e with 0.5 <= m < 1 (division by a power of two is exact), so
    # 2**(e-1) <= amax/H < 2**e: e satisfies the bound and e - 1 does not.
    return math.frexp(amax / HALF_BINS)[1]


@dataclass(frozen=True, eq=False)
class Histogram:
    """Counts of bins ``[i·2**exp, (i+1)·2**exp)`` for ``i`` in ``lo .. lo+len(counts)-1``."""

    exp: int
    lo: int
    counts: npt.NDArray[np.int64]

    @property
    def width(self) -> float:
        return 2.0**self.exp

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def edges(self) -> npt.NDArray[np.float64]:
        idx = np.arange(self.lo, self.lo + self.counts.size + 1, dtype=np.float64)
        return idx * self.width

    def coarsen(self, exp: int) -> Histogram:
        """The same data at a coarser (or equal) bin width ``2**exp``."""
        if exp < self.exp:
            raise ValueError("a histogram can only be coarsened")
        if exp == self.exp:
            return self
        k = exp - self.exp
        idx = np.arange(self.lo, self.lo + self.counts.size, dtype=np.int64) >> k  # floor div
        if idx.size == 0:
            return Histogram(exp, 0, self.counts)
        new_lo = int(idx[0])
        counts = np.zeros(int(idx[-1]) - new_lo + 1, dtype=np.int64)
        np.add.at(counts, idx - new_lo, self.counts)
        return Histogram(exp, new_lo, counts)

    def merge(self, other: Histogram) -> Histogram:
        exp = max(self.exp, other.exp)
        a, b = self.coarsen(exp), other.coarsen(exp)
        lo = min(a.lo, b.lo)
        hi = max(a.lo + a.counts.size, b.lo + b.counts.size)
        out = np.zeros(hi - lo, dtype=np.int64)
        out[a.lo - lo : a.lo - lo + a.counts.size] += a.counts
        out[b.lo - lo : b.lo - lo + b.counts.size] += b.counts
        return Histogram(exp, lo, out).retrim()

    def retrim(self) -> Histogram:
        lo, counts = _trim(self.counts, self.lo)
        return Histogram(self.exp, lo, counts)

    def abs_counts(self) -> npt.NDArray[np.int64]:
        """Counts of |x| in bins ``[k·w, (k+1)·w)``, k = 0, 1, …: bin i < 0 holds values
        in [i·w, (i+1)·w), whose magnitudes lie in ((−i−1)·w, −i·w], i.e. bin −i−1."""
        hi = self.lo + self.counts.size  # exclusive
        n = max(hi, -self.lo, 1)
        out = np.zeros(n, dtype=np.int64)
        idx = np.arange(self.lo, hi)
        pos = idx >= 0
        np.add.at(out, idx[pos], self.counts[pos])
        np.add.at(out, -idx[~pos] - 1, self.counts[~pos])
        return out

    def to_json(self) -> dict[str, Any]:
        return {"exp": self.exp, "lo": self.lo, "counts": self.counts.tolist()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Histogram:
        return cls(int(d["exp"]), int(d["lo"]), np.asarray(d["counts"], dtype=np.int64))


def _trim(counts: npt.NDArray[np.int64], lo: int) -> tuple[int, npt.NDArray[np.int64]]:
    nz = np.flatnonzero(counts)
    if nz.size == 0:
        return 0, np.zeros(0, dtype=np.int64)
    return lo + int(nz[0]), counts[nz[0] : nz[-1] + 1].copy()


@dataclass(frozen=True, eq=False)
class TensorStats:
    """What calibration learned about one float tensor."""

    name: str
    count: int
    min: float
    max: float
    hist: Histogram | None = None  # of the values that are not exactly 0
    zeros: int = 0  # how many values were exactly 0 (ReLU outputs: often half)
    binned: bool = True  # False: only min/max were collected (method minmax)
    # Values that were ±inf or NaN (attention masks). Then min/max span the finite
    # values seen, and the tensor is never quantized.
    nonfinite: int = 0

    def __post_init__(self) -> None:
        if self.count < 0 or self.nonfinite < 0:
            raise ValueError(f"{self.name}: counts must be non-negative")
        if self.count and not (math.isfinite(self.min) and math.isfinite(self.max)):
            raise ValueError(f"{self.name}: min/max must be finite")
        if self.count and self.min > self.max:
            raise ValueError(f"{self.name}: min {self.min} > max {self.max}")

    @property
    def absmax(self) -> float:
        return max(abs(self.min), abs(self.max))

    def histogram(self) -> Histogram | None:
        """The histogram of all values: exact zeros folded into bin 0. None when no
        histogram was collected."""
        if not self.binned:
            return None
        if self.hist is None:
            if self.zeros:
                return Histogram(0, 0, np.asarray([self.zeros], dtype=np.int64))
            return None
        if not self.zeros:
            return self.hist
        return self.hist.merge(Histogram(self.hist.exp, 0, np.asarray([self.zeros], np.int64)))

    def merge(self, other: TensorStats) -> TensorStats:
        if other.name != self.name:
            raise ValueError(f"cannot merge stats of {self.name!r} and {other.name!r}")
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        hist: Histogram | None
        zeros = self.zeros + other.zeros
        if self.hist is not None and other.hist is not None:
            hist = self.hist.merge(other.hist)
        else:
            hist = self.hist or other.hist
        return TensorStats(
            self.name,
            self.count + other.count,
            min(self.min, other.min),
            max(self.max, other.max),
            hist,
            zeros,
            self.binned and other.binned,
            self.nonfinite + other.nonfinite,
        )

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"count": self.count, "min": self.min, "max": self.max}
        if self.hist is not None:
            d["hist"] = self.hist.to_json()
        if self.zeros:
            d["zeros"] = self.zeros
        if not self.binned:
            d["binned"] = False
        if self.nonfinite:
            d["nonfinite"] = self.nonfinite
        return d

    @classmethod
    def from_json(cls, name: str, d: dict[str, Any]) -> TensorStats:
        hist = Histogram.from_json(d["hist"]) if "hist" in d else None
        return cls(
            name,
            int(d["count"]),
            float(d["min"]),
            float(d["max"]),
            hist,
            int(d.get("zeros", 0)),
            bool(d.get("binned", True)),
            int(d.get("nonfinite", 0)),
        )


class Observer:
    """Accumulates ``TensorStats`` for one tensor, one batch at a time."""

    def __init__(self, name: str, histogram: bool = True) -> None:
        self.name = name
        self.histogram = histogram
        self._count = 0
        self._min = math.inf
        self._max = -math.inf
        self._exp: int | None = None
        self._lo = 0
        self._counts = np.zeros(0, dtype=np.int64)
        self._zeros = 0
        self._nonfinite = 0

    def update(self, x: npt.NDArray[Any]) -> None:
        """Observe a batch (first axis: samples)."""
        if x.size == 0:
            return
        arr = np.asarray(x, dtype=np.float32)
        flat = arr.reshape(-1)
        if arr.ndim > 1:
            batch = arr.shape[0]
            stride = sample_stride(flat.size // batch)
            sub = flat if stride == 1 else flat.reshape(batch, -1)[:, ::stride]
        else:
            sub = flat
        self.update_summary(float(flat.min()), float(flat.max()), flat.size, sub)

    def update_summary(self, mn: float, mx: float, count: int, sub: npt.NDArray[Any]) -> None:
        """Observe a batch given as its min, max, number of values and the systematic
        sample ``sample_stride`` picks (computed inside the runtime, see the runner).

        Non-finite values (±inf from attention masks, NaN from fully masked rows) are
        counted apart. The runtime's min/max skip a NaN unless it comes first, so the
        sample is checked too; a tensor with any is never quantized, and its range is
        that of the finite values in the sample."""
        if count == 0:
            return
        sub = np.asarray(sub, dtype=np.float32).reshape(-1)
        finite = np.isfinite(sub)
        if not (math.isfinite(mn) and math.isfinite(mx)) or not finite.all():
            self._nonfinite += max(1, int(sub.size - np.count_nonzero(finite)))
            sub = sub[finite]
            if sub.size == 0:
                self._count += count
                self._min, self._max = min(self._min, 0.0), max(self._max, 0.0)
                return
            mn, mx = float(sub.min()), float(sub.max())
        self._count += count
        self._min = min(self._min, mn)
        self._max = max(self._max, mx)
        if not self.histogram:
            return
        zeros = sub.size - int(np.count_nonzero(sub))
        self._zeros += zeros
        amax = max(-mn, mx)
        if amax == 0.0:
            return
        exp = _exponent_for(amax)
        if self._exp is None:
            self._exp = exp
        elif exp > self._exp:
            self._rebin(exp)
        assert self._exp is not None
        # Scaling by a power of two is exact and floor() is exact, so each value lands in
        # the bin its own value decides, in every batch and every process; the offset is
        # subtracted after flooring (small integers are exact in float32).
        scale = np.float32(2.0 ** (-self._exp))
        lo = math.floor(mn * float(scale))
        buf = np.multiply(sub, scale)
        np.floor(buf, out=buf)
        buf -= np.float32(lo)
        counts = np.bincount(buf.astype(np.intp)).astype(np.int64)
        if zeros and 0 <= -lo < counts.size:
            counts[-lo] -= zeros  # exact zeros are counted apart, not in bin 0
        self._add_counts(counts, lo)

    def _rebin(self, exp: int) -> None:
        assert self._exp is not None
        h = Histogram(self._exp, self._lo, self._counts).coarsen(exp)
        self._exp, self._lo, self._counts = exp, h.lo, h.counts

    def _add_counts(self, counts: npt.NDArray[np.int64], lo: int) -> None:
        if self._counts.size == 0:
            self._lo, self._counts = lo, counts.copy()
            return
        new_lo = min(self._lo, lo)
        new_hi = max(self._lo + self._counts.size, lo + counts.size)
        if new_lo != self._lo or new_hi != self._lo + self._counts.size:
            grown = np.zeros(new_hi - new_lo, dtype=np.int64)
            grown[self._lo - new_lo : self._lo - new_lo + self._counts.size] = self._counts
            self._lo, self._counts = new_lo, grown
        self._counts[lo - self._lo : lo - self._lo + counts.size] += counts

    def stats(self) -> TensorStats:
        if self._count == 0:
            return TensorStats(self.name, 0, 0.0, 0.0, None, 0, self.histogram, self._nonfinite)
        hist = None
        if self.histogram and self._exp is not None:
            hist = Histogram(self._exp, self._lo, self._counts.copy()).retrim()
            if hist.counts.size == 0:
                hist = None
        return TensorStats(
            self.name,
            self._count,
            self._min,
            self._max,
            hist,
            self._zeros,
            self.histogram,
            self._nonfinite,
        )
