"""How close the INT8 model's outputs are to the float model's, on held-out samples.

Per output: cosine similarity (mean over samples, and the worst sample), SQNR in dB
(signal power over error power, over all samples), max absolute error, relative L2
error, and top-1 agreement when the output looks like class scores (2-D, N × C).
Accumulated batch by batch, so memory does not grow with the number of samples.

For encoders (``pooling`` "mean" or "cls"), also the sentence embeddings: the first
output of shape (batch, tokens, hidden) pooled over the tokens the attention mask keeps
(mean) or at the first token (cls), or a (batch, hidden) output as it is; their cosine
to the reference's, and how often each sample keeps its nearest neighbour among the
others (what retrieval and clustering see). Those embeddings are kept, one vector a
sample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

POOLINGS = ("mean", "cls")
MASK_INPUT = "attention_mask"


@dataclass(frozen=True)
class SentenceFidelity:
    """Pooled sentence embeddings against the reference's."""

    pooling: str
    output: str
    cosine: float
    cosine_min: float
    same_nearest: float | None  # None: fewer than 3 samples
    masked: bool = True  # mean pooling over the attention mask's tokens (False: all)

    def to_json(self) -> dict[str, Any]:
        return {
            "pooling": self.pooling,
            "output": self.output,
            "masked": self.masked,
            "cosine": self.cosine,
            "cosine_min": self.cosine_min,
            "same_nearest": self.same_nearest,
        }


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
    sentence: SentenceFidelity | None = None

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
            **({"sentence": self.sentence.to_json()} if self.sentence is not None else {}),
        }


def _per_sample(a: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 0:
        return a.reshape(1, 1)
    return a.reshape(a.shape[0], -1)


class FidelityMeter:
    """Accumulates fidelity of one candidate against the reference, batch by batch."""

    def __init__(self, names: Sequence[str], pooling: str | None = None) -> None:
        if pooling is not None and pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        self.pooling = pooling
        self.pooled: tuple[list[npt.NDArray[np.float64]], list[npt.NDArray[np.float64]]] = ([], [])
        self.pooled_output: str | None = None
        self.unmasked = False  # mean pooling over every token: no attention_mask input
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

    def update(
        self,
        ref: Sequence[npt.NDArray[Any]],
        test: Sequence[npt.NDArray[Any]],
        feed: dict[str, npt.NDArray[Any]] | None = None,
    ) -> None:
        """One batch: the reference's and the candidate's outputs, and (for pooling) the
        feed they ran on, whose attention mask says which tokens count."""
        if len(ref) != len(self.names) or len(test) != len(self.names):
            raise ValueError("reference and candidate give different numbers of outputs")
        for name, r, t in zip(self.names, ref, test, strict=True):
            if r.shape != t.shape:
                raise ValueError(f"output {name!r}: shapes differ, {r.shape} vs {t.shape}")
        if self.pooling is not None:
            self._pool(ref, test, feed or {})
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

    def _pool(
        self,
        ref: Sequence[npt.NDArray[Any]],
        test: Sequence[npt.NDArray[Any]],
        feed: dict[str, npt.NDArray[Any]],
    ) -> None:
        index = next((i for i, r in enumerate(ref) if r.ndim == 3), None)
        if index is None:
            index = next((i for i, r in enumerate(ref) if r.ndim == 2), None)
        if index is None:
            shapes = ", ".join(
                f"{n} {tuple(r.shape)}" for n, r in zip(self.names, ref, strict=True)
            )
            raise ValueError(
                "--pooling needs an output of (batch, tokens, hidden) or (batch, hidden); "
                f"the model's outputs are {shapes}"
            )
        self.pooled_output = self.names[index]
        mask = feed.get(MASK_INPUT)
        if mask is not None and mask.shape != ref[index].shape[:2]:
            mask = None
        if mask is None and ref[index].ndim == 3 and self.pooling == "mean":
            self.unmasked = True
        for dest, arr in zip(self.pooled, (ref[index], test[index]), strict=True):
            h = np.asarray(arr, dtype=np.float64)
            if h.ndim == 3 and self.pooling == "cls":
                e = h[:, 0, :]
            elif h.ndim == 3:
                m = (
                    np.asarray(mask, dtype=np.float64)[:, :, None]
                    if mask is not None
                    else np.ones((*h.shape[:2], 1))
                )
                e = (h * m).sum(1) / np.maximum(m.sum(1), 1.0)
            else:
                e = h
            norm = np.linalg.norm(e, axis=1, keepdims=True)
            dest.append(e / np.where(norm > 0, norm, 1.0))

    def sentence(self) -> SentenceFidelity | None:
        if self.pooling is None or not self.pooled[0] or self.pooled_output is None:
            return None
        a, b = (np.concatenate(p) for p in self.pooled)
        cos = np.sum(a * b, axis=1)
        nearest = None
        if len(a) >= 3:

            def neighbour(e: npt.NDArray[np.float64]) -> npt.NDArray[np.intp]:
                s = e @ e.T
                np.fill_diagonal(s, -np.inf)
                out: npt.NDArray[np.intp] = s.argmax(1)
                return out

            nearest = float(np.mean(neighbour(a) == neighbour(b)))
        return SentenceFidelity(
            self.pooling,
            self.pooled_output,
            float(cos.mean()),
            float(cos.min()),
            nearest,
            masked=not self.unmasked,
        )

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
        return Fidelity(self.samples, source, tuple(outs), self.sentence())
