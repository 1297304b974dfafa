"""Plans chosen by measurement: each backend's variants built and measured on this
machine, the fastest within the budget kept, the decision cached; variants by name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from models import images, save, tiny_cnn

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


def test_profile_guided_decides_each_layer_from_the_profiles(tmp_path: Path) -> None:
    """Layers map to ONNX nodes by name, by a name the runtime fused in, or by a tensor
    the node (or an activation fused after it) writes; a layer holding two weighted
    nodes is not attributed to either. A layer stays float where INT8 is no faster,
    takes symmetric inputs where that kernel is faster by more than the margin, and
    otherwise keeps the rule plan."""
    from quantship.backends.base import LayerTime
    from quantship.exporter.load import load_model
    from quantship.exporter.plan_search import _node_ms, regions, weighted_names

    names = weighted_names(load_model(save(tiny_cnn(), tmp_path / "m.onnx")).proto)
    assert names["conv1"] == names["r1"] == "conv1" and names["logits"] == "fc"
    int8 = [
        LayerTime("conv1_token_1", "QLinearConv", "QLinearConv (CPU)", "int8", 0.5),
        LayerTime("conv2/WithoutBiases", "Convolution", "brgconv_I8", "u8", 0.9, ("conv2",)),
        LayerTime("both", "Convolution", "k", "u8", 0.1, ("conv3", "fc")),
        LayerTime("images.q", "Subgraph", "jit", "f32", 0.2),
    ]
    flt = [
        LayerTime("r1_nchwc", "Conv", "Conv (CPU)", "float", 1.0),
        LayerTime("conv2", "Convolution", "brgconv_bf16", "bf16", 0.6),
        LayerTime("logits", "FullyConnected", "gemm", "bf16", 0.05),
    ]
    q, f = _node_ms(int8, names), _node_ms(flt, names)
    assert q == {"conv1": 0.5, "conv2": 0.9} and f == {"conv1": 1.0, "conv2": 0.6, "fc": 0.05}
    none: frozenset[str] = frozenset()
    assert regions(q, f, {}) == (frozenset({"conv2"}), none)
    # symmetric: conv1 much faster (taken); conv2 faster too, but its float layer faster still
    sym = {"conv1": 0.3, "conv2": 0.65}
    assert regions(q, f, sym) == (frozenset({"conv2"}), frozenset({"conv1"}))
    # within the margin the rule plan stays
    assert regions(q, f, {"conv1": 0.495}) == (frozenset({"conv2"}), none)


def test_real_profiles_attribute_every_weighted_layer(tmp_path: Path) -> None:
    """In each runtime's own profile, float and INT8, every Conv and Gemm of the model
    gets a time: the search can decide every layer."""
    from quantship.backends.base import Artifact, SessionSettings
    from quantship.exporter.manifest import artifacts_in
    from quantship.exporter.plan_search import _node_ms, weighted_names

    model = save(tiny_cnn(), tmp_path / "cnn.onnx")
    np.savez(tmp_path / "calib.npz", images=images(32))
    backends = [b for b in ("onnxruntime", "openvino") if registry.get(b).available() is None]
    res = api.export(model, tmp_path / "calib.npz", tmp_path / "o", backends=",".join(backends),
                     samples=24, bench=False)  # fmt: skip
    names = weighted_names(onnx.load(str(tmp_path / "o/float/model.onnx")))
    weighted = set(names.values())
    float_art = Artifact("", "onnx", tmp_path / "o", ("float/model.onnx",), "float")
    feeds = {"images": images(1)}
    for art in artifacts_in(tmp_path / "o", res.manifest):
        b = registry.get(art.backend)
        for a, prec in ((art, None), (float_art, b.capabilities().default_precision)):
            with b.session(a, SessionSettings(threads=1, precision=prec)) as s:
                got = _node_ms(s.profile(feeds, 2), names)
            assert set(got) == weighted, (art.backend, prec, sorted(weighted - set(got)))


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
