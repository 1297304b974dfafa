"""Plans chosen by measurement: each backend's variants built and measured on this
machine, the fastest within the budget kept, the decision cached; variants by name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from models import images, save, silu_cnn, tiny_cnn

from quantship import api
from quantship.backends import registry
from quantship.exporter.plan_search import _choose


def _row(plan: str, p50: float, cos: float) -> dict[str, object]:
    return {"plan": plan, "what": "", "p50_ms": p50, "cosine": cos}


def test_the_choice_holds_the_budget_and_needs_a_real_margin() -> None:
    rules = _row("rules", 10.0, 0.9990)
    # faster but less faithful than the rule plan: not without a budget that allows it
    lossy = _row("symmetric", 8.0, 0.9980)
    assert _choose([rules, lossy], None) == "rules"
    assert _choose([rules, lossy], 0.997) == "symmetric"
    assert _choose([rules, lossy], 0.999) == "rules"
    # as faithful, but within the timing noise: the rule plan stays
    assert _choose([rules, _row("a", 9.9, 0.9995)], None) == "rules"
    # clearly faster and as faithful: chosen; the fastest of several
    assert _choose([rules, _row("a", 9.0, 0.9991), _row("b", 8.5, 0.9990)], None) == "b"
    # a plan that failed to measure is never chosen
    assert _choose([rules, {"plan": "x", "what": "", "p50_ms": 1.0, "cosine": None}], None) == (
        "rules"
    )


def test_regions_and_the_names_runtimes_give_their_layers(tmp_path: Path) -> None:
    """A region is a weighted node with its activation (SiLU's gate and Mul, or Relu).
    A runtime layer counts for a region by its name less the runtime's suffixes, a name
    it fused in, a tensor the region writes or that tensor's Q/DQ, or (a reorder) the
    layer it feeds; a layer holding two regions counts for neither."""
    from quantship.backends.base import LayerTime
    from quantship.exporter.plan_regions import region_ms, region_names, regions_of

    model = silu_cnn()
    regions = regions_of(model)
    assert set(regions) == {"conv0", "conv1", "conv2", "fc"}
    assert regions["conv0"].activations == ("sig0", "mul0")
    assert regions["conv2"].activations == ("relu2",) and regions["fc"].activations == ()
    names = region_names(model)
    assert names["a0"] == names["s0"] == names["c0"] == names["mul0"] == "conv0"
    layers = [
        LayerTime("conv0_token_3", "QLinearConv", "QLinearConv (CPU)", "int8", 0.5),  # ORT
        LayerTime("sig0", "QLinearSigmoid", "QLinearSigmoid (CPU)", "int8", 0.1),
        LayerTime("mul0/QuickGeluFusion/", "QuickGelu", "QuickGelu (CPU)", "float", 0.2),
        LayerTime("a0.QuantizeLinear", "QuantizeLinear", "Q (CPU)", "int8", 0.05),
        LayerTime("c1.DequantizeLinear/duplicated", "DequantizeLinear", "DQ", "float", 0.07),
        LayerTime("conv1/WithoutBiases", "Convolution", "brgconv_I8", "u8", 0.9,
                  ("Multiply_1", "conv1")),  # OpenVINO
        LayerTime("conv1/WithoutBiases_bf16_acdb_f32_aBcd16b_c1.DequantizeLinear", "Reorder",
                  "jit_uni_bf16", "bf16", 0.03),
        LayerTime("a1.DequantizeLinear_abcd_acdb_conv2/WithoutBiases", "Reorder", "jit_uni_I8",
                  "u8", 0.02),
        LayerTime("both", "Convolution", "k", "u8", 0.4, ("conv2", "fc")),
        LayerTime("images.QuantizeLinear", "QuantizeLinear", "Q (CPU)", "int8", 0.2),
    ]  # fmt: skip
    got = region_ms(layers, names)
    assert got.keys() == {"conv0", "conv1", "conv2"}
    assert got["conv0"] == pytest.approx(0.85) and got["conv1"] == pytest.approx(1.0)
    assert got["conv2"] == pytest.approx(0.02)


def test_each_region_takes_its_fastest_choice() -> None:
    """A region keeps the rule plan unless a variant is faster there by more than the
    margin, and stays float where the float model's layers are no slower; the guided
    plan applies each choice to that region's nodes alone."""
    from quantship.backends.openvino import OpenVINOBackend
    from quantship.backends.variants import ALL, PlanVariant
    from quantship.exporter.plan_regions import FLOAT, decide, guided_variant, regions_of

    rules = {"conv0": 1.0, "conv1": 1.0, "conv2": 1.0, "fc": 0.1}
    flt = {"conv0": 1.5, "conv1": 1.5, "conv2": 1.5, "fc": 0.05}
    alts = {"symmetric": {"conv0": 0.6, "conv1": 0.99, "conv2": 0.97},
            "silu-int8": {"conv0": 0.7, "conv1": 0.8, "conv2": 0.995}}  # fmt: skip
    choices = decide(rules, flt, alts, 0.02)
    assert choices == {"conv0": "symmetric", "conv1": "silu-int8", "conv2": "symmetric",
                       "fc": FLOAT}  # fmt: skip
    assert decide(rules, flt, {}, 0.02) == {**dict.fromkeys(rules, "rules"), "fc": FLOAT}
    b = OpenVINOBackend()
    base = PlanVariant("rules", "", b)
    variants = {
        "symmetric": PlanVariant("symmetric", "", b, symmetric_inputs=ALL),
        "silu-int8": PlanVariant("silu-int8", "", b, int8_nodes=ALL),
        "silu-float": PlanVariant("silu-float", "", b, float_ops=frozenset({"Sigmoid", "Mul"})),
    }
    guided = guided_variant("g", base, regions_of(silu_cnn()), choices, variants)
    assert guided is not None
    assert guided.symmetric_inputs == {"conv0", "conv2"} and guided.int8_nodes == {"sig1", "mul1"}
    assert guided.float_nodes == {"fc"}
    choices = {"conv0": "silu-float", "conv1": "rules", "conv2": "rules", "fc": "rules"}
    guided = guided_variant("g", base, regions_of(silu_cnn()), choices, variants)
    assert guided is not None and guided.float_nodes == {"sig0", "mul0"}
    assert guided_variant("g", base, regions_of(silu_cnn()), {"conv0": "rules"}, variants) is None


def test_optional_ops_are_quantized_only_where_asked(tmp_path: Path) -> None:
    """OpenVINO's rules quantize SiLU's Mul only in the nodes ``int8_nodes`` names (or
    every node for ``*``); ``float_ops`` keeps an op type float everywhere."""
    from quantship.backends.base import Backend, PlanOptions
    from quantship.backends.onnxruntime import OnnxRuntimeBackend
    from quantship.backends.openvino import OpenVINOBackend
    from quantship.backends.variants import ALL, PlanVariant
    from quantship.calibration.runner import calibrate
    from quantship.calibration.sources import open_data
    from quantship.exporter.load import load_model

    fm = load_model(save(silu_cnn(), tmp_path / "m.onnx"))
    np.savez(tmp_path / "calib.npz", images=images(16))
    table = calibrate(fm, open_data(tmp_path / "calib.npz", fm.inputs), samples=16)
    ov = OpenVINOBackend()

    def quantized(b: Backend, int8: frozenset[str] = frozenset()) -> set[str]:
        return set(b.plan(fm, table, PlanOptions(int8_nodes=int8)).compute_nodes)

    assert not {"mul0", "mul1"} & quantized(ov)
    one = quantized(ov, frozenset({"mul1"}))
    assert "mul1" in one and "mul0" not in one
    assert {"mul0", "mul1"} <= quantized(ov, ALL)
    ort = OnnxRuntimeBackend()
    v = PlanVariant("silu-float", "", ort, float_ops=frozenset({"Sigmoid", "Mul"}))
    opts = v.options(PlanOptions(), fm)
    assert opts.float_nodes == {"sig0", "mul0", "sig1", "mul1"}
    assert not {"sig0", "mul0"} & set(ort.plan(fm, table, opts).compute_nodes)
    assert {"sig0", "mul0"} <= quantized(ort)


def test_real_profiles_attribute_every_region(tmp_path: Path) -> None:
    """In each runtime's own profile, float and every INT8 plan variant, every weighted
    layer with its activation gets a time: the search can decide every region."""
    from quantship.backends.base import Artifact, SessionSettings
    from quantship.exporter.manifest import artifacts_in
    from quantship.exporter.plan_regions import region_ms, region_names
    from quantship.types import Precision

    model = save(silu_cnn(), tmp_path / "silu.onnx")
    np.savez(tmp_path / "calib.npz", images=images(32))
    float_art = Artifact("", "onnx", tmp_path / "f", ("float/model.onnx",), "float")
    names = region_names(onnx.load(str(model)))
    feeds = {"images": images(1)}
    for backend in ("onnxruntime", "openvino"):
        b = registry.get(backend)
        if b.available() is not None:
            continue
        for plan in ["rules", *(v.name for v in b.plan_variants())]:
            out = tmp_path / f"{backend}-{plan}"
            res = api.export(model, tmp_path / "calib.npz", out, backends=backend, samples=24,
                             bench=False, plan=plan)  # fmt: skip
            (art,) = artifacts_in(out, res.manifest)
            runs: list[tuple[Artifact, Precision | None]] = [(art, None)]
            if plan == "rules":
                float_art = Artifact("", "onnx", out, ("float/model.onnx",), "float")
                runs.append((float_art, b.capabilities().default_precision))
            for a, prec in runs:
                with b.session(a, SessionSettings(threads=1, precision=prec)) as s:
                    got = region_ms(s.profile(feeds, 2), names)
                assert set(got) == {"conv0", "conv1", "conv2", "fc"}, (backend, plan, prec)


@pytest.fixture
def inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    monkeypatch.setenv("QUANTSHIP_CACHE_DIR", str(tmp_path / "cache"))
    model = save(tiny_cnn(), tmp_path / "cnn.onnx")
    np.savez(tmp_path / "calib.npz", images=images(48))
    return model, tmp_path / "calib.npz"


def test_search_measures_every_plan_then_reuses_the_decision(
    tmp_path: Path, inputs: tuple[Path, Path]
) -> None:
    model, calib = inputs
    backends = [b for b in ("onnxruntime", "openvino") if registry.get(b).available() is None]
    first = api.export(
        model, calib, tmp_path / "a", backends=",".join(backends), samples=32, threads=1,
        bench=False, plan="search",
    )  # fmt: skip
    for entry in first.manifest["artifacts"]:
        rec = entry["plan_search"]
        names = ["rules", *(v.name for v in registry.get(entry["backend"]).plan_variants())]
        got = [r["plan"] for r in rec["plans"]]
        # and the profile-guided plan, where the profile showed an INT8 layer no faster
        assert got in (names, [*names, "profile-guided"])
        assert ("regions" in rec) == ("profile-guided" in got)
        timed = [r for r in rec["plans"] if "same_as" not in r]
        assert timed[0]["plan"] == "rules" and all(
            r["p50_ms"] > 0 and r["cosine"] > 0.99 for r in timed
        )
        # a variant this model gives nothing to change (no SiLU here) is not timed twice
        repeats = {r["plan"]: r["same_as"] for r in rec["plans"] if "same_as" in r}
        silu = {"openvino": "silu-int8", "onnxruntime": "silu-float"}[entry["backend"]]
        assert repeats[silu] == "rules"
        assert rec["chosen"] == entry["plan_variant"] and not rec["cached"]
        chosen = next(r for r in rec["plans"] if r["plan"] == rec["chosen"])
        assert chosen["cosine"] >= rec["plans"][0]["cosine"]  # the rule plan's, the budget
    assert not (tmp_path / "a" / ".search").exists()
    assert list((tmp_path / "cache" / "plans").glob("*.json"))
    second = api.export(
        model, calib, tmp_path / "b", backends=",".join(backends), samples=32, threads=1,
        bench=False, plan="search",
    )  # fmt: skip
    for e1, e2 in zip(first.manifest["artifacts"], second.manifest["artifacts"], strict=True):
        assert e2["plan_search"]["cached"] and e2["plan_variant"] == e1["plan_variant"]
        assert [f["sha256"] for f in e1["files"]] == [f["sha256"] for f in e2["files"]]


def test_a_plan_by_name(tmp_path: Path, inputs: tuple[Path, Path]) -> None:
    model, calib = inputs
    res = api.export(model, calib, tmp_path / "o", samples=32, threads=1, bench=False, plan="s8s8")
    (entry,) = res.manifest["artifacts"]
    assert entry["plan_variant"] == "s8s8" and "plan_search" not in entry
    # the artifact says what it holds, not what the rule table would have made
    assert entry["metadata"]["activations"] == "int8 symmetric, per tensor"
    rules = api.export(model, calib, tmp_path / "r", samples=32, threads=1, bench=False)
    assert rules.manifest["artifacts"][0]["metadata"]["activations"] == (
        "uint8 asymmetric, per tensor"
    )
    q = onnx.load(str(tmp_path / "o" / entry["path"]))
    inits = {i.name: i for i in q.graph.initializer}
    zps = [inits[n.input[2]] for n in q.graph.node if n.op_type == "QuantizeLinear"]
    assert zps and all(z.data_type == onnx.TensorProto.INT8 for z in zps)

    p = subprocess.run(
        [sys.executable, "-m", "quantship", "export", str(model), "--calib", str(calib),
         "--out", str(tmp_path / "x"), "--plan", "symetric"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "--plan 'symetric' is not a plan of onnxruntime" in p.stderr and "s8s8" in p.stderr
    assert not (tmp_path / "x").exists()


def test_symmetric_inputs_per_node_and_for_all(tmp_path: Path) -> None:
    """``symmetric_inputs`` makes what the named nodes read int8 symmetric (zero point 0)
    and leaves the rest to the rules; ``*`` gives the same plan as rules that say
    symmetric int8 for every activation."""
    from dataclasses import replace

    from quantship.backends.base import PlanOptions
    from quantship.backends.onnxruntime import OnnxRuntimeBackend
    from quantship.calibration.runner import calibrate
    from quantship.calibration.sources import open_data
    from quantship.exporter.load import load_model

    model = save(tiny_cnn(), tmp_path / "cnn.onnx")
    np.savez(tmp_path / "calib.npz", images=images(16))
    fm = load_model(model)
    table = calibrate(fm, open_data(tmp_path / "calib.npz", fm.inputs), samples=16)
    ort = OnnxRuntimeBackend()
    conv2_input = next(n.input[0] for n in fm.proto.graph.node if n.name == "conv2")

    def dtypes(opts: PlanOptions, backend: OnnxRuntimeBackend = ort) -> dict[str, str]:
        plan = backend.plan(fm, table, opts)
        return {a.tensor: a.params.dtype for a in plan.activations}

    base = dtypes(PlanOptions())
    one = dtypes(PlanOptions(symmetric_inputs=frozenset({"conv2"})))
    assert set(base.values()) == {"uint8"} and one[conv2_input] == "int8"
    # what other nodes read keeps the rules' uint8 (conv2's input shares its params with
    # the tensor MaxPool moves it from, so that one goes along)
    conv3_input = next(n.input[0] for n in fm.proto.graph.node if n.name == "conv3")
    assert one["images"] == one[conv3_input] == "uint8"
    sym_rules = OnnxRuntimeBackend(replace(ort.rules, act_dtype="int8", symmetric=True))
    star = ort.plan(fm, table, PlanOptions(symmetric_inputs=frozenset({"*"})))
    assert star == sym_rules.plan(fm, table, PlanOptions())


def test_a_plan_that_cannot_be_built_is_reported_and_a_bad_cache_is_ignored(
    tmp_path: Path, inputs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One variant failing to build does not stop the export: its row says why and the
    others are measured. A cache file holding something else is read as no cache."""
    import json

    from quantship.backends.base import Artifact
    from quantship.backends.onnxruntime import OnnxRuntimeBackend
    from quantship.backends.variants import PlanVariant
    from quantship.errors import BackendError
    from quantship.exporter.load import FloatModel

    class Broken(OnnxRuntimeBackend):
        def compile(self, qdq: onnx.ModelProto, out_dir: Path, model: FloatModel) -> Artifact:
            raise BackendError("this runtime cannot compile it here")

    monkeypatch.setattr(
        OnnxRuntimeBackend,
        "plan_variants",
        lambda self: (PlanVariant("broken", "fails to build", Broken()),),
    )
    model, calib = inputs
    res = api.export(model, calib, tmp_path / "a", samples=32, threads=1, bench=False,
                     plan="search")  # fmt: skip
    rec = res.manifest["artifacts"][0]["plan_search"]
    rows = {r["plan"]: r for r in rec["plans"]}
    assert rows["broken"]["error"] == "this runtime cannot compile it here"
    assert rec["chosen"] in ("rules", "profile-guided") and rows["rules"]["p50_ms"] > 0
    for f in (tmp_path / "cache" / "plans").glob("*.json"):
        f.write_text(json.dumps({"chosen": [], "regions": "x"}))
    again = api.export(model, calib, tmp_path / "b", samples=32, threads=1, bench=False,
                       plan="search")  # fmt: skip
    assert not again.manifest["artifacts"][0]["plan_search"]["cached"]
