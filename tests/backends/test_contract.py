"""The contract every backend passes, built-in or an entry-point plugin: declared
capabilities, an export of a tiny model, its artifact running (and closing), fidelity
against fp32, a manifest entry that describes the files truthfully, and the float model
at every float precision the backend declares. A backend whose runtime is not
installed is skipped with the reason."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from models import images, save, tiny_cnn

from quantship import api
from quantship.backends import registry
from quantship.backends.base import Artifact, Capabilities, SessionSettings
from quantship.exporter.load import load_model
from quantship.exporter.manifest import artifacts_in
from quantship.exporter.output import sha256_file

PLUGIN = '''
from quantship.backends.onnxruntime import OnnxRuntimeBackend


class Plugin(OnnxRuntimeBackend):
    """A third-party backend: ONNX Runtime's, under another name."""

    name = "plugin_ort"
    extra = "plugin"
'''


def contract(name: str, tmp_path: Path) -> None:
    backend = registry.get(name)
    reason = backend.available()
    if reason is not None:
        pytest.skip(f"backend {name!r} unavailable: {reason}")
    caps = backend.capabilities()
    assert isinstance(caps, Capabilities)
    assert caps.device and backend.extra and backend.formats and backend.version()

    model = save(tiny_cnn(), tmp_path / "cnn.onnx")
    np.savez(tmp_path / "calib.npz", images=images(48))
    out = tmp_path / "build"
    # bench=True: the float options and the artifact are timed side by side, under
    # names and keys of their own (a plugin beside the runtime it wraps included)
    result = api.export(model, tmp_path / "calib.npz", out, backends=name, samples=32, threads=1)

    manifest = json.loads((out / "manifest.json").read_text())
    (entry,) = [a for a in manifest["artifacts"] if a["backend"] == name]
    for f in entry["files"]:
        assert sha256_file(out / f["path"]) == f["sha256"]
    assert entry["size_bytes"] == sum((out / f["path"]).stat().st_size for f in entry["files"])
    assert entry["label"] == backend.describe(result.artifacts[0], SessionSettings())
    assert all(f["path"].startswith(f"{name}/") for f in entry["files"])
    assert entry["p50_ms"] > 0 and {r["key"] for r in entry["latency"]} <= {
        entry["key"],
        f"{entry['key']}:device",
    }
    keys = [b["key"] for b in manifest["baselines"]] + [entry["key"]]
    labels = [b["label"] for b in manifest["baselines"]] + [entry["label"]]
    assert len(set(keys)) == len(keys) and len(set(labels)) == len(labels)
    assert {b["backend"] for b in manifest["baselines"]} >= (
        {name} if caps.float_precisions else set()
    )
    assert all(b["p50_ms"] > 0 for b in manifest["baselines"])
    assert manifest["verdict"]["choice"] is not None

    # fidelity was measured on the 16 held-out samples, and is good on this model
    fid = entry["fidelity"]
    assert fid["samples"] == 16
    assert fid["cosine"] > 0.99
    assert fid["top1_agreement"] >= 0.8

    # the artifact runs, agrees with the float model on fresh inputs, and closes
    (art,) = [a for a in artifacts_in(out, manifest) if a.backend == name]
    x = {"images": images(4, seed=99)}
    with backend.session(art, SessionSettings(threads=1)) as session:
        got = session.run(x)[0]
        if caps.profile:  # per-layer kernels and times, from the runtime's profiler
            layers = session.profile(x, 2)
            assert layers and sum(x.ms for x in layers) > 0
            assert all(x.name and x.kernel for x in layers)
    float_art = Artifact("", "onnx", out, (manifest["float_model"]["path"],), "float")
    for precision in caps.float_precisions:  # every float precision it declares runs
        with backend.session(float_art, SessionSettings(threads=1, precision=precision)) as s:
            ref = s.run(x)[0]
        assert got.shape == ref.shape == (4, 10)
        cos = float((got * ref).sum() / np.linalg.norm(got) / np.linalg.norm(ref))
        assert cos > 0.99, precision

    # a QDQ model runs as the target runtime runs it (the accuracy guard's path)
    from quantship.calibration.runner import calibrate
    from quantship.calibration.sources import open_data
    from quantship.exporter.qdq import write_qdq

    fm = load_model(model)
    table = calibrate(fm, open_data(tmp_path / "calib.npz", fm.inputs), samples=16)
    from quantship.backends.base import PlanOptions

    qdq = write_qdq(fm, backend.plan(fm, table, PlanOptions()))
    with backend.qdq_session(qdq, fm, SessionSettings(threads=1)) as s:
        assert s.run(x)[0].shape == (4, 10)


@pytest.mark.parametrize("name", registry.names())
def test_backend_contract(name: str, tmp_path: Path) -> None:
    contract(name, tmp_path)


def test_an_entry_point_plugin_passes_the_contract(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backend registered under the ``quantship.backends`` entry-point group is found
    by name and held to the same contract."""
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "qs_plugin_backend.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    sys.modules.pop("qs_plugin_backend", None)
    monkeypatch.setattr(
        registry, "_entry_points", lambda: {"plugin_ort": "qs_plugin_backend:Plugin"}
    )
    assert "plugin_ort" in registry.names()
    contract("plugin_ort", tmp_path)
