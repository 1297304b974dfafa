"""Range methods on known distributions."""

from __future__ import annotations

import numpy as np
import pytest

from quantship.calibration.methods import MethodSpec, entropy_threshold, tensor_range
from quantship.calibration.observers import Observer, TensorStats


def _stats(x: np.ndarray, histogram: bool = True) -> TensorStats:
    o = Observer("t", histogram=histogram)
    o.update(x.astype(np.float32))
    return o.stats()


@pytest.fixture(scope="module")
def heavy_tail() -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(200_000)
    x[:10] = [60, -55, 70, 48, -80, 52, 65, -49, 75, 58]  # rare, huge outliers
    return x


def test_minmax_is_the_observed_range(heavy_tail: np.ndarray) -> None:
    lo, hi = tensor_range(
        _stats(heavy_tail, histogram=False), MethodSpec("minmax"), symmetric=False
    )
    assert lo == pytest.approx(-80.0)
    assert hi == pytest.approx(75.0)


def test_percentile_clips_outliers(heavy_tail: np.ndarray) -> None:
    st = _stats(heavy_tail)
    w = st.histogram().width  # type: ignore[union-attr]
    lo, hi = tensor_range(st, MethodSpec("percentile", 99.99), symmetric=False)
    assert hi == pytest.approx(np.percentile(heavy_tail, 99.99), abs=w)
    assert lo == pytest.approx(np.percentile(heavy_tail, 0.01), abs=w)
    lo_s, hi_s = tensor_range(st, MethodSpec("percentile", 99.9), symmetric=True)
    assert hi_s == pytest.approx(np.percentile(np.abs(heavy_tail), 99.9), abs=w)
    assert lo_s == -hi_s


def test_entropy_clips_a_heavy_tail_but_not_a_uniform(heavy_tail: np.ndarray) -> None:
    lo, hi = tensor_range(_stats(heavy_tail), MethodSpec("entropy"), symmetric=True)
    assert 2.0 < hi < 20.0 and lo == -hi
    u = np.random.default_rng(1).uniform(0, 6, 100_000)
    _, hi_u = tensor_range(_stats(u), MethodSpec("entropy"), symmetric=False)
    assert hi_u > 5.5


def test_entropy_threshold_of_few_bins_keeps_everything() -> None:
    assert entropy_threshold(np.asarray([5, 3, 1], np.int64), 0.5) == 1.5


def _real_mse(x: np.ndarray, lo: float, hi: float) -> float:
    from quantship.calibration.qparams import dequantize, params_from_range, quantize

    p = params_from_range(lo, hi, "int8", symmetric=True)
    x32 = x.astype(np.float32)
    return float(np.mean((dequantize(quantize(x32, p), p) - x32) ** 2))


def test_mse_clips_a_lone_outlier_and_beats_minmax_on_the_raw_data() -> None:
    x = np.random.default_rng(0).standard_normal(200_000)
    x[0] = 80.0
    st = _stats(x)
    lo, hi = tensor_range(st, MethodSpec("mse"), symmetric=True)
    assert hi < 0.75 * st.max
    assert _real_mse(x, lo, hi) < 0.8 * _real_mse(x, st.min, st.max)


def test_mse_keeps_the_range_of_a_uniform() -> None:
    u = np.random.default_rng(1).uniform(-1, 1, 100_000)
    lo_u, hi_u = tensor_range(_stats(u), MethodSpec("mse"), symmetric=False)
    assert hi_u > 0.9 and lo_u < -0.9


def test_methods_needing_a_histogram_say_so() -> None:
    st = _stats(np.asarray([0.0, 1.0, 2.0]), histogram=False)
    with pytest.raises(ValueError, match="no histogram"):
        tensor_range(st, MethodSpec("entropy"), symmetric=False)


def test_constant_tensor_range_is_its_value() -> None:
    st = _stats(np.full(10, 3.0))
    for m in ("minmax", "percentile", "entropy", "mse"):
        assert tensor_range(st, MethodSpec(m), symmetric=False) == (3.0, 3.0)


def test_method_spec_validates() -> None:
    with pytest.raises(ValueError, match="unknown calibration method"):
        MethodSpec("kl")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="percentile"):
        MethodSpec("percentile", 101.0)
