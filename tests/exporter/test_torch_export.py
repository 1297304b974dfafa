"""PyTorch models: package.module:factory (+ --weights) and torch.export .pt2 files,
exported to ONNX with a dynamic batch axis; their errors are one clear line."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from models import images, run_ort

torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0)")

from quantship import api  # noqa: E402

NETS = """
import torch
from torch import nn

def small():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )

def broken():
    raise RuntimeError("factory exploded")
"""


@pytest.fixture
def nets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    pkg = tmp_path / "code"
    pkg.mkdir()
    (pkg / "qs_test_nets.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(pkg))
    sys.modules.pop("qs_test_nets", None)
    np.savez(tmp_path / "calib.npz", images=images(24))
    return tmp_path


def test_factory_with_weights(nets: Path) -> None:
    mod = importlib.import_module("qs_test_nets")
    net = mod.small().eval()
    with torch.no_grad():
        net[5].weight.mul_(3.0)  # weights that differ from the factory's
    torch.save(net.state_dict(), nets / "w.pt")
    res = api.export(
        "qs_test_nets:small", nets / "calib.npz", nets / "o", weights=nets / "w.pt", bench=False
    )
    inp = res.manifest["float_model"]["inputs"][0]
    assert inp["name"] == "images" and inp["shape"][0] is None  # dynamic batch axis
    x = images(3, seed=4)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    got = run_ort(nets / "o/float/model.onnx", {"images": x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    assert res.manifest["artifacts"][0]["fidelity"]["cosine"] > 0.99


def test_torch_export_program_file(nets: Path) -> None:
    net = importlib.import_module("qs_test_nets").small().eval()
    x = torch.zeros(2, 3, 16, 16)
    program = torch.export.export(
        net, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},)
    )
    torch.export.save(program, str(nets / "net.pt2"))
    res = api.export(str(nets / "net.pt2"), nets / "calib.npz", nets / "o", bench=False)
    xs = images(2, seed=5)
    with torch.no_grad():
        ref = net(torch.from_numpy(xs)).numpy()
    got = run_ort(
        nets / "o/float/model.onnx", {res.manifest["float_model"]["inputs"][0]["name"]: xs}
    )[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("model", "extra", "fragment"),
    [
        ("qs_test_nets:broken", [], "the factory failed (RuntimeError: factory exploded)"),
        ("qs_test_nets:nothere", [], "has no callable 'nothere'"),
        ("no_such_pkg.nets:small", [], "cannot import 'no_such_pkg.nets'"),
        ("qs_test_nets:small", ["--weights", "{tmp}/bad.pt"], "do not fit the model"),
    ],
)
def test_errors_are_one_line(nets: Path, model: str, extra: list[str], fragment: str) -> None:
    torch.save({"not": torch.zeros(1)}, nets / "bad.pt")
    cmd = [
        sys.executable,
        "-m",
        "quantship",
        "export",
        model,
        "--calib",
        str(nets / "calib.npz"),
        "--out",
        str(nets / "o"),
        *[e.replace("{tmp}", str(nets)) for e in extra],
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=nets / "code", timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert fragment in p.stderr
    assert not (nets / "o").exists()
