"""The quantization arithmetic, with exact expected values (ONNX QuantizeLinear)."""

from __future__ import annotations

import numpy as np
import pytest

from quantship.calibration.qparams import (
    MIN_SCALE,
    QuantParams,
    bias_params,
    dequantize,
    params_from_range,
    quantize,
    weight_params,
)


def test_relu_range_uint8_has_zero_point_zero() -> None:
    p = params_from_range(0.0, 2.55, "uint8")
    assert p.scale == np.float32(0.01)
    assert int(p.zero_point) == 0
    assert p.zero_point.dtype == np.uint8


def test_asymmetric_uint8_rounds_zero_point_half_to_even() -> None:
    # S = 2/255, -min/S = 127.5 -> ties to even -> 128
    p = params_from_range(-1.0, 1.0, "uint8")
    assert p.scale == np.float32(2.0 / 255.0)
    assert int(p.zero_point) == 128


def test_asymmetric_int8_shifts_zero_point_by_128() -> None:
    p = params_from_range(-1.0, 1.0, "int8")
    assert int(p.zero_point) == 0
    q = params_from_range(0.0, 2.55, "int8")
    assert int(q.zero_point) == -128


def test_symmetric_int8_uses_127() -> None:
    p = params_from_range(-2.0, 1.0, "int8", symmetric=True)
    assert p.scale == np.float32(2.0 / 127.0)
    assert int(p.zero_point) == 0
    assert p.symmetric


def test_range_is_widened_to_include_zero() -> None:
    p = params_from_range(1.0, 3.0, "uint8")  # as if [0, 3]
    assert int(p.zero_point) == 0
    assert p.scale == np.float32(3.0 / 255.0)
    assert dequantize(quantize(0.0, p), p) == 0.0


@pytest.mark.parametrize("c", [3.0, -0.7, 1e-3, 250.0])
def test_constant_tensor_is_represented_exactly(c: float) -> None:
    for dtype, sym in (("uint8", False), ("int8", False), ("int8", True)):
        p = params_from_range(c, c, dtype, symmetric=sym)  # type: ignore[arg-type]
        back = float(dequantize(quantize(np.float32(c), p), p))
        # exact up to the float32 rounding of S·q
        assert back == pytest.approx(c, rel=2 * float(np.finfo(np.float32).eps))


def test_all_zero_range_gets_scale_one() -> None:
    p = params_from_range(0.0, 0.0, "uint8")
    assert float(p.scale) == 1.0 and int(p.zero_point) == 0
    assert dequantize(quantize(0.0, p), p) == 0.0


def test_tiny_range_gets_minimum_scale_not_nan() -> None:
    p = params_from_range(0.0, 1e-30, "uint8")
    assert float(p.scale) == pytest.approx(MIN_SCALE)


def test_bad_ranges_are_rejected() -> None:
    with pytest.raises(ValueError):
        params_from_range(float("nan"), 1.0)
    with pytest.raises(ValueError):
        params_from_range(2.0, 1.0)
    with pytest.raises(ValueError, match="non-negative"):
        params_from_range(-1.0, 1.0, "uint8", symmetric=True)


def test_unsigned_symmetric_uint8() -> None:
    p = params_from_range(0.5, 2.55, "uint8", symmetric=True)
    assert p.scale == np.float32(0.01) and int(p.zero_point) == 0 and p.symmetric


def test_quantparams_validate_on_construction() -> None:
    with pytest.raises(ValueError, match="positive"):
        QuantParams(np.asarray(0.0, np.float32), np.asarray(0, np.uint8), "uint8")
    with pytest.raises(ValueError, match="zero_point outside"):
        QuantParams(np.asarray(1.0, np.float32), np.asarray(300), "uint8")
    with pytest.raises(ValueError, match="symmetric"):
        QuantParams(np.asarray(1.0, np.float32), np.asarray(3), "int8", symmetric=True)
    with pytest.raises(ValueError, match="1-D"):
        QuantParams(np.asarray(1.0, np.float32), np.asarray(0, np.int8), "int8", axis=0)


def test_quantize_follows_onnx_rounding_and_saturation() -> None:
    p = QuantParams(np.asarray(0.5, np.float32), np.asarray(10), "uint8")
    x = np.asarray([0.25, 0.75, -5.0, -6.0, 200.0], dtype=np.float32)
    # 0.5 -> 0 (even), 1.5 -> 2 (even); +10; -10+10 = 0; -12+10 saturates at 0; 400+10 -> 255
    assert quantize(x, p).tolist() == [10, 12, 0, 0, 255]
    assert dequantize(np.asarray([10, 12, 0, 255], np.uint8), p).tolist() == [0.0, 1.0, -5.0, 122.5]


def test_per_channel_weight_params() -> None:
    w = np.zeros((3, 2, 1, 1), np.float32)
    w[0] = [[[1.27]], [[-0.5]]]
    w[1] = [[[-2.54]], [[2.0]]]
    p = weight_params(w, axis=0)
    assert p.axis == 0 and p.symmetric
    np.testing.assert_array_equal(
        p.scale, np.asarray([0.01, 0.02, 1.0], np.float32)
    )  # zero channel: scale 1
    q = quantize(w, p)
    assert q.dtype == np.int8
    assert q[0].ravel().tolist() == [127, -50]
    assert q[1].ravel().tolist() == [-127, 100]
    assert q[2].ravel().tolist() == [0, 0]


def test_bias_scale_is_input_times_weight_scale() -> None:
    w = weight_params(np.asarray([[1.27], [0.254]], np.float32), axis=0)
    new_w, b = bias_params(np.asarray([0.5, -0.25], np.float32), 0.1, w)
    assert new_w == w
    np.testing.assert_allclose(b.scale, np.asarray([0.001, 0.0002], np.float32), rtol=1e-6)
    assert b.dtype == "int32"
    assert quantize(np.asarray([0.5, -0.25], np.float32), b).tolist() == [500, -1250]


def test_bias_that_would_overflow_int32_raises_weight_scale() -> None:
    w = weight_params(np.asarray([[1e-9], [1.0]], np.float32), axis=0)
    new_w, b = bias_params(np.asarray([100.0, 1.0], np.float32), 1e-3, w)
    assert float(new_w.scale[0]) > float(w.scale[0])  # raised just enough
    assert float(new_w.scale[1]) == float(w.scale[1])  # untouched
    q = quantize(np.asarray([100.0, 1.0], np.float32), b).astype(np.int64)
    assert abs(int(q[0])) < 2**31 - 1
    np.testing.assert_allclose(dequantize(q.astype(np.int32), b), [100.0, 1.0], rtol=1e-6)


def test_json_roundtrip() -> None:
    p = weight_params(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), axis=0)
    assert QuantParams.from_json(p.to_json()) == p
