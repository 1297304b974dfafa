"""The accuracy guard on regions: what goes to float together, the order (error taken
away per latency cost, no region free), evaluations in growing batches, the decision
cached, and a verdict that does not recommend a guarded INT8 that does not pay."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from models import attention, images, save, silu_cnn
from onnx import TensorProto, helper, numpy_helper

from quantship import api
from quantship.backends.base import PlanOptions
from quantship.errors import QuantshipError
from quantship.exporter.load import FloatModel, load_model
from quantship.guard import Evaluator, RegionScore, guard, ranked
from quantship.guard_regions import guard_regions
from quantship.measure.verdict import Budget, Option, decide


def test_regions_keep_a_layer_with_its_activation_and_an_attention_block(tmp_path: Path) -> None:
    fm = load_model(save(silu_cnn(), tmp_path / "c.onnx"))
    got = guard_regions(fm, ["conv0", "sig0", "mul0", "conv1", "sig1", "mul1", "conv2", "fc"])
    assert got == [("conv0", "sig0", "mul0"), ("conv1", "sig1", "mul1"), ("conv2",), ("fc",)]
    fm = load_model(save(attention(), tmp_path / "a.onnx"))
    names = ["proj_q", "proj_k", "proj_v", "scores", "context", "proj_o"]
    got = guard_regions(fm, names)
    assert ("scores", "context") in got and ("proj_q",) in got and len(got) == 5


def test_order_is_error_taken_away_per_cost_and_no_region_is_free() -> None:
    def score(name: str, gain: float, cost: float) -> RegionScore:
        return RegionScore((name,), gain + 1e-3, gain, cost)

    scores = [score("a", 0.01, 1.0), score("b", 0.01, 0.1), score("c", 0.05, 10.0),
              score("free", 0.002, -0.1), score("useless", 0.0, -1.0),
              score("useless-dear", 0.0, 1.0)]  # fmt: skip
    # The median |cost| is 1.0, so every region costs at least 0.1: "free" (float
    # profiled faster) is ranked by 0.002 / 0.1, behind "b" (0.01 / 0.1), ahead of "a"
    # (0.01 / 1) and "c" (0.05 / 10); regions that take no error away come last, cheapest
    # first.
    assert [s.nodes[0] for s in ranked(scores)] == [
        "b",
        "free",
        "a",
        "c",
        "useless",
        "useless-dear",
    ]


class Planted(Evaluator):
    """The real model, backend and plans, with the error replaced by a planted one (a
    test of the guard's search, not of a runtime): each region adds its harm while it
    is INT8."""

    def __init__(self, fm: FloatModel, harm: dict[str, float]) -> None:
        from quantship.backends.onnxruntime import OnnxRuntimeBackend
        from quantship.calibration.runner import calibrate
        from quantship.calibration.sources import open_data

        np.savez(Path(str(fm.source)).parent / "calib.npz", images=images(8))
        data = open_data(Path(str(fm.source)).parent / "calib.npz", fm.inputs)
        super().__init__(fm, calibrate(fm, data, samples=8), OnnxRuntimeBackend(),
                         [{"images": images(1)}])  # fmt: skip
        self.harm = harm

    def error(self, options: PlanOptions) -> float:
        self.count += 1
        return sum(h for n, h in self.harm.items() if n not in options.float_nodes)


def chain(n: int) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "images"
    for k in range(n):
        cin = 3 if k == 0 else 4
        w = (rng.standard_normal((4, cin, 3, 3)) * 0.3).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{k}"))
        nodes += [helper.make_node("Conv", [x, f"w{k}"], [f"c{k}"], name=f"conv{k}", pads=[1] * 4),
                  helper.make_node("Relu", [f"c{k}"], [f"r{k}"], name=f"relu{k}")]  # fmt: skip
        x = f"r{k}"
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 4, 16, 16])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_growing_batches_find_the_fewest_regions_within_few_evaluations(tmp_path: Path) -> None:
    fm = load_model(save(chain(16), tmp_path / "chain.onnx"))
    harm = {f"conv{k}": 0.001 for k in range(16)}
    harm.update(conv3=0.05, conv9=0.04, conv12=0.03)  # three fragile layers
    ev = Planted(fm, harm)
    res = guard(ev, PlanOptions(), 0.02)
    assert set(res.float_nodes) == {"conv3", "conv9", "conv12"}
    # all INT8, all float (the floor), 16 sensitivities, batches 1, 2, 4, bisection
    # between 2 and 4
    assert res.evaluations == 1 + 1 + 16 + 3 + 1
    # equally harmful, one costs 10x more in float: the cheap one goes
    ev = Planted(fm, {**{f"conv{k}": 0.0 for k in range(16)}, "conv2": 0.03, "conv5": 0.03})
    res = guard(ev, PlanOptions(), 0.04,
                costs=lambda regions: ({r[0]: 10.0 if r[0] == "conv2" else 1.0 for r in regions},
                                       "planted"))  # fmt: skip
    assert res.float_nodes == ("conv5",) and res.cost_ms == 1.0 and res.cost_source == "planted"


def test_a_budget_below_the_runtimes_own_float_error_is_refused(tmp_path: Path) -> None:
    fm = load_model(save(chain(4), tmp_path / "chain.onnx"))
    # "runtime" is no node: its error is there with every region float, as a runtime's
    # own reduced float precision is.
    ev = Planted(fm, {"conv0": 0.01, "runtime": 0.003})
    with pytest.raises(QuantshipError, match=r"--max-drop 0.002: .* the error is 0.003 "):
        guard(ev, PlanOptions(), 0.002)
    assert ev.count == 1 + 1 + 4  # all INT8, the floor, the sensitivities; no search
    res = guard(Planted(fm, {"conv0": 0.01, "runtime": 0.003}), PlanOptions(), 0.005)
    assert res.float_nodes == ("conv0",) and res.after == 0.003 and res.floor == 0.003


def test_guarded_int8_larger_than_half_the_float_is_not_recommended() -> None:
    opts = [Option("ort:float:fp32", "fp32", True, 10.0, 1.0),
            Option("ort:int8", "int8 guarded", False, 8.0, 0.999, size_ratio=0.7)]  # fmt: skip
    v = decide(opts, Budget(0.99))
    assert v.choice == "ort:float:fp32"
    assert "INT8 does not pay" in v.line and any("0.70x the float model's size" in w
                                                 for w in v.warnings)  # fmt: skip
    v = decide([opts[0], replace(opts[1], size_ratio=0.4)], Budget(0.99))
    assert v.choice == "ort:int8"


def test_the_guards_decision_is_cached_and_artifacts_repeat(tmp_path: Path) -> None:
    model = save(silu_cnn(), tmp_path / "m.onnx")
    rng = np.random.default_rng(1)
    x = images(48)
    x[::12, 0, 2, 2] = 500.0  # rare outliers that ruin the first layer's input grid
    np.savez(tmp_path / "calib.npz", images=x)
    np.savez(tmp_path / "held.npz", images=rng.standard_normal((16, 3, 16, 16)).astype(np.float32))
    runs = []
    for k in range(2):
        res = api.export(model, tmp_path / "calib.npz", tmp_path / f"o{k}", max_drop=0.001,
                         held_out=tmp_path / "held.npz", method="minmax", bench=False)  # fmt: skip
        (a,) = res.manifest["artifacts"]
        runs.append((a["accuracy_guard"], [f["sha256"] for f in a["files"]]))
    assert runs[0] == runs[1]
    g = runs[0][0]
    assert g["float_regions"] and all(isinstance(r, list) for r in g["float_regions"])
    assert g["cost_source"].startswith("ms, from onnxruntime's per-layer profiles")
