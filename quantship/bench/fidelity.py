"""How close the INT8 model's outputs are to the float model's, on held-out samples.

Per output: cosine similarity (mean over samples, and the worst sample), SQNR in dB
(signal power over error power, over all samples), max absolute error, relative L2
error, and top-1 agreement when the output looks like class scores (2-D, N × C).
Accumulated batch by batch, so memory does not grow with the number of samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class OutputFidelity:
    name: str
    cosine: float
    cosine_min: float
    sqnr_db: float | None  # None: the outputs are identical (no error at all)
    max_abs_error: float
    rel_l2: float
    top1_agreement: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cosine": self.cosine,
            "cosine_min": self.cosine_min,
            "sqnr_db": self.sqnr_db,
            "max_abs_error": self.max_abs_error,
            "rel_l2": self.rel_l2,
            "top1_agreement": self.top1_agreement,
        }


@dataclass(frozen=True)
class Fidelity:
    """Fidelity of every output, over ``samples`` samples of ``source``."""

    samples: int
    source: str
    outputs: tuple[OutputFidelity, ...]

    @property
    def cosine(self) -> float:
        """The headline figure: the lowest mean cosine over outputs."""
        return min(o.cosine for o in self.outputs)

    @property
    def sqnr_db(self) -> float | None:
        vals = [o.sqnr_db for o in self.outputs if o.sqnr_db is not None]
        return min(vals) if vals else None

    @property
    def top1_agreement(self) -> float | None:
        vals = [o.top1_agreement for o in self.outputs if o.top1_agreement is not None]
        return vals[0] if vals else None

    def to_json(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "source": self.source,
            "cosine": self.cosine,
            "sqnr_db": self.sqnr_db,
            "top1_agreement": self.top1_agreement,
            "outputs": [o.to_json() for o in self.outputs],
        }


def _per_sample(a: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 0:
        return a.reshape(1, 1)
    return a.reshape(a.shape[0], -1)


class FidelityMeter:
    """Accumulates fidelity of one candidate against the reference, batch by batch."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        k = len(self.names)
        self.samples = 0
        self.cos_sum = [0.0] * k
        self.cos_min = [math.inf] * k
        self.signal = [0.0] * k
        self.noise = [0.0] * k
        self.max_abs = [0.0] * k
        self.top1_hits = [0] * k
        self.top1_total = [0] * k
        self.classy = [True] * k

    def update(self, ref: Sequence[npt.NDArray[Any]], test: Sequence[npt.NDArray[Any]]) -> None:
        if len(ref) != len(self.names) or len(test) != len(self.names):
            raise ValueError("reference and candidate give different numbers of outputs")
        n = None
        for i, (r, t) in enumerate(zip(ref, test, strict=True)):
            if r.shape != t.shape:
                raise ValueError(f"output {self.names[i]!r}: shapes differ, {r.shape} vs {t.shape}")
            rs, ts = _per_sample(r), _per_sample(t)
            n = rs.shape[0]
            dot = np.einsum("ij,ij->i", rs, ts)
            nr = np.linalg.norm(rs, axis=1)
            nt = np.linalg.norm(ts, axis=1)
            denom = nr * nt
            cos = np.where(
                denom > 0, dot / np.where(denom > 0, denom, 1.0), np.where(nr == nt, 1.0, 0.0)
            )
            self.cos_sum[i] += float(cos.sum())
            self.cos_min[i] = min(self.cos_min[i], float(cos.min()))
            self.signal[i] += float(np.sum(rs * rs))
            err = rs - ts
            self.noise[i] += float(np.sum(err * err))
            self.max_abs[i] = max(self.max_abs[i], float(np.max(np.abs(err))) if err.size else 0.0)
            looks_like_scores = (
                r.ndim == 2 and r.shape[1] >= 2 and np.issubdtype(r.dtype, np.floating)
            )
            if looks_like_scores and self.classy[i]:
                self.top1_hits[i] += int(np.sum(np.argmax(r, axis=1) == np.argmax(t, axis=1)))
                self.top1_total[i] += r.shape[0]
            else:
                self.classy[i] = False
        self.samples += n or 0

    def result(self, source: str) -> Fidelity:
        if self.samples == 0:
            raise ValueError("no samples were measured")
        outs = []
        for i, name in enumerate(self.names):
            sqnr = (
                None
                if self.noise[i] == 0
                else 10.0 * math.log10(max(self.signal[i], 1e-300) / self.noise[i])
            )
            rel = (
                math.sqrt(self.noise[i] / self.signal[i])
                if self.signal[i] > 0
                else (0.0 if self.noise[i] == 0 else math.inf)
            )
            top1 = (
                self.top1_hits[i] / self.top1_total[i]
                if self.classy[i] and self.top1_total[i]
                else None
            )
            outs.append(
                OutputFidelity(
                    name,
                    self.cos_sum[i] / self.samples,
                    self.cos_min[i],
                    sqnr,
                    self.max_abs[i],
                    rel if math.isfinite(rel) else 1e30,
                    top1,
                )
            )
        return Fidelity(self.samples, source, tuple(outs))
