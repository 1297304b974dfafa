"""The contract every backend passes: export a tiny model, run the artifact, fidelity
against float, and a manifest entry that describes the files truthfully. A backend
whose runtime is not installed is skipped with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from models import images, save, tiny_cnn

from quantship import api
from quantship.backends import registry
from quantship.backends.base import Artifact, SessionSettings
from quantship.exporter.manifest import artifacts_in
from quantship.exporter.output import sha256_file

BACKENDS = ["onnxruntime", "openvino", "tensorrt"]


def _require(name: str) -> None:
    try:
        backend = registry.get(name)
    except Exception as e:  # not implemented in this checkout
        pytest.skip(f"backend {name!r} unavailable: {e}")
    reason = backend.available()
    if reason is not None:
        pytest.skip(f"backend {name!r} unavailable: {reason}")


@pytest.mark.parametrize("name", BACKENDS)
def test_backend_contract(name: str, tmp_path: Path) -> None:
    _require(name)
    model = save(tiny_cnn(), tmp_path / "cnn.onnx")
    np.savez(tmp_path / "calib.npz", images=images(48))
    out = tmp_path / "build"
    result = api.export(model, tmp_path / "calib.npz", out, backends=name, samples=32, bench=False)

    manifest = json.loads((out / "manifest.json").read_text())
    entries = [a for a in manifest["artifacts"] if a["backend"] == name]
    assert len(entries) == 1
    entry = entries[0]
    for f in entry["files"]:
        assert sha256_file(out / f["path"]) == f["sha256"]
    assert entry["size_bytes"] == sum((out / f["path"]).stat().st_size for f in entry["files"])

    # fidelity was measured on the 16 held-out samples, and is good on this model
    fid = entry["fidelity"]
    assert fid["samples"] == 16
    assert fid["cosine"] > 0.99
    assert fid["top1_agreement"] >= 0.8

    # the artifact runs, and agrees with the float model on fresh inputs
    (art,) = [a for a in artifacts_in(out, manifest) if a.backend == name]
    backend = registry.get(name)
    session = backend.session(art, SessionSettings(threads=1))
    float_s = registry.get("onnxruntime").session(
        Artifact("onnxruntime", "onnx", out, (manifest["float_model"]["path"],), "float"),
        SessionSettings(threads=1),
    )
    x = {"images": images(4, seed=99)}
    got, ref = session.run(x)[0], float_s.run(x)[0]
    assert got.shape == ref.shape == (4, 10)
    cos = float((got * ref).sum() / np.linalg.norm(got) / np.linalg.norm(ref))
    assert cos > 0.99
    assert result.artifacts[0].backend == name
