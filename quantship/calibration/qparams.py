"""Scale and zero-point arithmetic: pure numpy, no graph, no runtime.

The arithmetic that counts is ONNX's, because ONNX runtimes execute our artifacts:

    QuantizeLinear:    q = saturate(round_half_to_even(r / S) + Z)
    DequantizeLinear:  r ≈ (q - Z) · S

The seed note writes the quantizer as Q(r) = ⌊r/S⌋ − Z. Two differences: ONNX rounds
to the nearest integer (ties to even) instead of flooring, which halves the worst-case
error to S/2; and ONNX *adds* Z, so a note-style zero point Z' is ONNX's −Z'.

Symmetric int8:     Z = 0,  S = max|r| / 127   (−128 is never produced from the range,
                    which keeps the grid symmetric as TensorRT requires)
Asymmetric uint8:   the range is first widened to include 0 so that 0 is exact, then
                    S = (max − min) / 255,  Z = round(−min / S)
Asymmetric int8:    as uint8, with Z shifted by −128.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

QDType = Literal["int8", "uint8", "int32"]

# Smallest scale we emit. A range narrower than this (a tensor that is 0 to within
# 1e-12) is represented with this scale: zero stays exact, and kernels that compute
# S_x·S_w / S_y never see a subnormal.
MIN_SCALE = 2.0**-40

_QRANGE: dict[str, tuple[int, int]] = {
    "int8": (-128, 127),
    "uint8": (0, 255),
    "int32": (-(2**31), 2**31 - 1),
}
_NP_DTYPE: dict[str, type[np.integer[Any]]] = {
    "int8": np.int8,
    "uint8": np.uint8,
    "int32": np.int32,
}


def qrange(dtype: QDType) -> tuple[int, int]:
    """The saturation bounds of QuantizeLinear for ``dtype``."""
    return _QRANGE[dtype]


@dataclass(frozen=True, eq=False)
class QuantParams:
    """Scale and zero-point of one tensor: per tensor (``axis is None``, scalars) or per
    channel along ``axis`` (1-D arrays, one entry per channel)."""

    scale: npt.NDArray[np.float32]
    zero_point: npt.NDArray[np.integer[Any]]
    dtype: QDType
    axis: int | None = None
    symmetric: bool = field(default=False)

    def __post_init__(self) -> None:
        scale = np.asarray(self.scale, dtype=np.float32)
        if self.dtype not in _QRANGE:
            raise ValueError(f"dtype must be one of {sorted(_QRANGE)}, got {self.dtype!r}")
        lo, hi = _QRANGE[self.dtype]
        zpi = np.asarray(self.zero_point)
        if zpi.size and (np.any(zpi < lo) or np.any(zpi > hi)):
            raise ValueError(f"zero_point outside [{lo}, {hi}] for {self.dtype}")
        zp = zpi.astype(_NP_DTYPE[self.dtype])
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "zero_point", zp)
        if self.axis is None and scale.ndim != 0:
            raise ValueError(f"per-tensor params need a scalar scale, got shape {scale.shape}")
        if self.axis is not None and scale.ndim != 1:
            raise ValueError(f"per-channel params need a 1-D scale, got shape {scale.shape}")
        if zp.shape != scale.shape:
            raise ValueError(f"zero_point shape {zp.shape} differs from scale shape {scale.shape}")
        if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            raise ValueError(f"scales must be finite and positive, got {scale!r}")
        if self.symmetric and np.any(zp != 0):
            raise ValueError("symmetric params must have zero_point 0")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QuantParams):
            return NotImplemented
        return (
            self.dtype == other.dtype
            and self.axis == other.axis
            and self.symmetric == other.symmetric
            and np.array_equal(self.scale, other.scale)
            and np.array_equal(self.zero_point, other.zero_point)
        )

    def __hash__(self) -> int:
        return hash((self.dtype, self.axis, self.scale.tobytes(), self.zero_point.tobytes()))

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    def representable_range(self) -> tuple[float, float]:
        """The real interval [min, max] that quantization maps onto without saturating
        (per-tensor params only)."""
        if self.axis is not None:
            raise ValueError("representable_range is defined for per-tensor params only")
        lo, hi = _QRANGE[self.dtype]
        s = float(self.scale)
        z = int(self.zero_point)
        return (lo - z) * s, (hi - z) * s

    def to_json(self) -> dict[str, Any]:
        return {
            "dtype": self.dtype,
            "axis": self.axis,
            "symmetric": self.symmetric,
            "scale": self.scale.tolist(),
            "zero_point": self.zero_point.tolist(),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> QuantParams:
        return cls(
            scale=np.asarray(d["scale"], dtype=np.float32),
            zero_point=np.asarray(d["zero_point"]),
            dtype=d["dtype"],
            axis=d["axis"],
            symmetric=bool(d["symmetric"]),
        )

    def __repr__(self) -> str:
        body = json.dumps(self.to_json())
        return f"QuantParams({body if len(body) < 200 else body[:200] + '…'})"


def _safe_scale(s: npt.ArrayLike) -> npt.NDArray[np.float32]:
    return np.maximum(np.asarray(s, dtype=np.float64), MIN_SCALE).astype(np.float32)


def params_from_range(
    lo: float, hi: float, dtype: QDType = "uint8", *, symmetric: bool = False
) -> QuantParams:
    """Per-tensor params that cover the real range [lo, hi].

    The range is widened to include 0 so that 0 (padding, ReLU's floor) is exact. A
    tensor whose range is a single value c is represented exactly: the widened range
    is [min(c, 0), max(c, 0)], whose end point is a grid point. A range of only zeros
    gets scale 1.
    """
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"range must be finite, got [{lo}, {hi}]")
    if lo > hi:
        raise ValueError(f"range minimum {lo} exceeds maximum {hi}")
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if symmetric and dtype == "uint8":
        # "Unsigned symmetric" (NNCF's term): zero point 0 on a uint8 grid, for tensors
        # that are never negative, such as ReLU outputs. S = max / 255.
        if lo < 0:
            raise ValueError(f"symmetric uint8 needs a non-negative range, got [{lo}, {hi}]")
        scale = _safe_scale(np.float64(hi / 255.0 if hi > 0 else 1.0))
        return QuantParams(scale, np.zeros((), np.uint8), "uint8", None, symmetric=True)
    if symmetric:
        if dtype != "int8":
            raise ValueError(f"symmetric quantization is defined for int8 and uint8, not {dtype}")
        amax = max(-lo, hi)
        scale = _safe_scale(np.float64(amax / 127.0 if amax > 0 else 1.0))
        return QuantParams(scale, np.zeros((), np.int8), "int8", None, symmetric=True)
    if dtype not in ("int8", "uint8"):
        raise ValueError(f"activations quantize to int8 or uint8, not {dtype}")
    span = hi - lo
    scale = _safe_scale(np.float64(span / 255.0 if span > 0 else 1.0))
    # Z from the exact ratio, not from the float32-rounded S: the same range gives the
    # same Z on every machine, and a tie (−min/S = k + ½) rounds to even as ONNX does.
    zp = float(np.clip(np.round(255.0 * -lo / span), 0, 255)) if span > 0 else 0.0
    if dtype == "int8":
        zp -= 128
    return QuantParams(scale, np.asarray(zp), dtype, None, symmetric=False)


def weight_params(w: npt.NDArray[np.floating[Any]], axis: int | None) -> QuantParams:
    """Symmetric int8 params for a weight tensor, per channel along ``axis`` (the output
    channel axis) or per tensor when ``axis`` is None. A channel of zeros gets scale 1."""
    w = np.asarray(w, dtype=np.float64)
    if axis is None:
        amax = np.asarray(np.max(np.abs(w)) if w.size else 0.0)
    else:
        axis = axis % w.ndim
        reduce = tuple(i for i in range(w.ndim) if i != axis)
        amax = np.max(np.abs(w), axis=reduce) if reduce else np.abs(w)
    scale = np.where(amax > 0, amax / 127.0, 1.0)
    scale32 = _safe_scale(scale)
    return QuantParams(scale32, np.zeros(scale32.shape, np.int8), "int8", axis, symmetric=True)


def bias_params(
    bias: npt.NDArray[np.floating[Any]],
    input_scale: float,
    weight: QuantParams,
) -> tuple[QuantParams, QuantParams]:
    """int32 params for a Conv/Gemm bias, whose scale must be S_x · S_w for an integer
    kernel to add it to the int32 accumulator directly.

    Returns ``(weight, bias)``: where a bias is too large for int32 at that scale (a tiny
    weight channel with a large bias), the weight scale of that channel is raised just
    enough to fit, rather than saturating the bias.
    """
    b = np.asarray(bias, dtype=np.float64).reshape(-1)
    w_scale = np.asarray(weight.scale, dtype=np.float64)
    if w_scale.ndim == 0:
        w_scale = np.full(b.shape, float(w_scale))
    if w_scale.shape != b.shape:
        raise ValueError(f"bias has {b.size} channels, weight scale {w_scale.size}")
    limit = 2.0**31 - 1
    needed = np.abs(b) / (float(input_scale) * limit)
    w_scale_adj = np.maximum(w_scale, needed * 1.0001)
    if weight.axis is None:
        # A per-tensor weight has one scale: raise it for every channel alike.
        w_scale_adj = np.full(b.shape, float(np.max(w_scale_adj)))
        new_w = QuantParams(
            _safe_scale(np.asarray(w_scale_adj[0])),
            np.zeros((), np.int8),
            "int8",
            None,
            symmetric=True,
        )
    else:
        new_w = QuantParams(
            _safe_scale(w_scale_adj), np.zeros(b.shape, np.int8), "int8", weight.axis, True
        )
    b_scale = np.asarray(float(input_scale) * new_w.scale.astype(np.float64)).astype(np.float32)
    if b_scale.ndim == 0:
        b_scale = np.full(b.shape, float(b_scale), dtype=np.float32)
    b_scale = np.maximum(b_scale, np.float32(np.finfo(np.float32).tiny))
    return new_w, QuantParams(b_scale, np.zeros(b.shape, np.int32), "int32", 0, symmetric=True)


def _broadcast(p: QuantParams, ndim: int) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    if p.axis is None:
        return p.scale, p.zero_point
    shape = [1] * ndim
    shape[p.axis % ndim] = p.scale.size
    return p.scale.reshape(shape), p.zero_point.reshape(shape)


def quantize(x: npt.ArrayLike, p: QuantParams) -> npt.NDArray[np.integer[Any]]:
    """ONNX QuantizeLinear: saturate(round_half_to_even(x / S) + Z)."""
    arr = np.asarray(x, dtype=np.float32)
    s, z = _broadcast(p, arr.ndim)
    lo, hi = _QRANGE[p.dtype]
    if p.dtype == "int32":
        q = np.rint(arr.astype(np.float64) / s.astype(np.float64)) + z.astype(np.float64)
    else:
        q = np.rint(arr / s) + z.astype(np.float32)
    out: npt.NDArray[np.integer[Any]] = np.clip(q, lo, hi).astype(_NP_DTYPE[p.dtype])
    return out


def dequantize(q: npt.ArrayLike, p: QuantParams) -> npt.NDArray[np.float32]:
    """ONNX DequantizeLinear: (q − Z) · S."""
    arr = np.asarray(q)
    s, z = _broadcast(p, arr.ndim)
    out: npt.NDArray[np.float32] = (
        (arr.astype(np.int64) - z.astype(np.int64)).astype(np.float32) * s
    ).astype(np.float32)
    return out
