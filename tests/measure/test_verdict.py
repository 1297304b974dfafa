"""The verdict: the fastest option within the budget, float or INT8, and a warning for
every INT8 artifact slower than a float option."""

from __future__ import annotations

import pytest

from quantship.measure.verdict import Budget, Option, decide


def _opt(key: str, is_float: bool, p50: float | None, cos: float | None) -> Option:
    return Option(key, key.replace(":", " "), is_float, p50, cos)


def test_int8_faster_than_every_float_within_budget_wins() -> None:
    v = decide(
        [
            _opt("ov:float:fp32", True, 8.0, 1.0),
            _opt("ov:float:bf16", True, 3.5, 0.9995),
            _opt("ov:int8", False, 2.5, 0.9992),
        ],
        Budget(),
    )
    assert v.choice == "ov:int8" and v.fastest_float == "ov:float:bf16"
    assert v.speedup["ov:int8"] == pytest.approx(3.5 / 2.5)
    assert v.speedup["ov:float:fp32"] == pytest.approx(3.5 / 8.0)
    assert not v.warnings


def test_a_slower_int8_loses_to_the_float_the_user_has_and_is_named() -> None:
    """The case the old table hid: bf16 float faster than our INT8."""
    v = decide(
        [
            _opt("ov:float:fp32", True, 8.5, 1.0),
            _opt("ov:float:bf16", True, 3.5, 0.9995),
            _opt("ov:int8", False, 4.8, 0.9992),
        ],
        Budget(),
    )
    assert v.choice == "ov:float:bf16"
    assert "no INT8 artifact within the budget beats it" in v.line
    assert len(v.warnings) == 1 and "slower than the float model" in v.warnings[0]


def test_options_outside_the_budget_are_not_chosen() -> None:
    v = decide(
        [
            _opt("ort:float:fp32", True, 10.0, 1.0),
            _opt("ov:float:bf16", True, 4.0, 0.998),  # bf16 costs too much here
            _opt("ort:int8", False, 3.0, 0.9991),
        ],
        Budget.from_max_drop(0.001),
    )
    assert v.fastest_float == "ort:float:fp32" and v.choice == "ort:int8"
    assert v.speedup["ort:int8"] == pytest.approx(10.0 / 3.0)


def test_without_latency_there_is_no_verdict() -> None:
    v = decide(
        [_opt("ort:float:fp32", True, None, 1.0), _opt("ort:int8", False, None, 0.99)], Budget()
    )
    assert v.choice is None and "not measured" in v.line


def test_without_fidelity_there_is_no_choice_and_no_budget_warnings() -> None:
    """No held-out data: nothing is known to keep a budget; speedups still compare
    against the fastest float option, and a slower INT8 is still named."""
    v = decide(
        [
            _opt("ort:float:fp32", True, 10.0, None),
            _opt("ov:float:bf16", True, 4.0, None),
            _opt("ov:int8", False, 5.0, None),
            _opt("ort:int8", False, 3.0, None),
        ],
        Budget(),
    )
    assert v.choice is None and v.fastest_float == "ov:float:bf16"
    assert "fidelity not measured" in v.line and "ort int8" in v.line
    assert v.speedup["ort:int8"] == pytest.approx(4.0 / 3.0)
    assert v.warnings == ("ov int8 (5 ms) is slower than the float model in ov float bf16 (4 ms)",)


def test_a_faster_option_outside_the_budget_is_named_in_the_line() -> None:
    v = decide(
        [
            _opt("ort:float:fp32", True, 10.0, 1.0),
            _opt("ort:int8", False, 6.0, 0.9995),
            _opt("ov:int8", False, 2.0, 0.95),
        ],
        Budget(),
    )
    assert v.choice == "ort:int8"
    assert "ov int8 is faster (2 ms) but misses the budget (cosine 0.9500)" in v.line


def test_int8_is_warned_against_the_fastest_float_within_the_budget() -> None:
    """A bf16 float outside the budget is no yardstick: INT8 faster than fp32 but
    slower than that bf16 gets no 'slower than float' warning."""
    v = decide(
        [
            _opt("ov:float:fp32", True, 8.0, 1.0),
            _opt("ov:float:bf16", True, 3.0, 0.99),
            _opt("ov:int8", False, 4.0, 0.9995),
        ],
        Budget(),
    )
    assert v.choice == "ov:int8" and v.fastest_float == "ov:float:fp32"
    assert not any("slower" in w for w in v.warnings)
    assert "ov float bf16 is faster (3 ms) but misses the budget" in v.line
