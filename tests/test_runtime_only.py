"""A target machine with only a runtime: a fresh virtual environment holding quantship's
wheel, numpy and one runtime (nothing of the export side: no onnx, onnxslim or rich)
runs ``quantship bench`` on an export folder written here.

These tests install from the package index pip is configured with (the registry
``make setup`` installs from); they skip, saying so, where it cannot be reached."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from quantship import api

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel .``, as README tells a machine without the package index to do."""
    out = tmp_path_factory.mktemp("wheel")
    r = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", str(out), str(ROOT)],
        out,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    (found,) = out.glob("quantship-*.whl")
    return found


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import numpy as np
    from models import images, save, tiny_cnn

    tmp = tmp_path_factory.mktemp("export")
    model = save(tiny_cnn(), tmp / "cnn.onnx")
    np.savez(tmp / "calib.npz", images=images(24))
    backends = ["onnxruntime"]
    if importlib.util.find_spec("openvino") is not None:
        backends.append("openvino")
    api.export(model, tmp / "calib.npz", tmp / "out", backends=backends, bench=False)
    return tmp / "out"


def _venv(path: Path, wheel: Path, runtime: str) -> Path:
    r = _run([sys.executable, "-m", "venv", str(path)], path.parent)
    assert r.returncode == 0, r.stderr
    py = path / "bin" / "python"
    r = _run([str(py), "-m", "pip", "install", "-q", str(wheel), "numpy", runtime], path.parent)
    unreachable = ("No matching distribution", "Could not find a version", "connection",
                   "Temporary failure in name resolution")  # fmt: skip
    if r.returncode != 0 and any(u in r.stderr for u in unreachable):
        pytest.skip(f"the package index has no {runtime} for this venv: {r.stderr.strip()[-300:]}")
    assert r.returncode == 0, r.stderr  # anything else (our wheel among it) is a failure
    return py


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_bench_runs_with_numpy_and_one_runtime(
    runtime: str, wheel: Path, export_dir: Path, tmp_path: Path
) -> None:
    if runtime == "openvino" and not (export_dir / "openvino").is_dir():
        pytest.skip("OpenVINO is not installed here, so the export has no OpenVINO IR")
    py = _venv(tmp_path / "venv", wheel, runtime)
    missing = _run(
        [str(py), "-c", "import importlib.util as u; "
         "print([m for m in ('onnx', 'onnxslim', 'rich', 'torch') if u.find_spec(m)])"],
        tmp_path,
    )  # fmt: skip
    assert missing.stdout.strip() == "[]", f"the runtime-only venv has {missing.stdout}"
    out = tmp_path / "bench.json"
    r = _run(
        [str(py.parent / "quantship"), "bench", str(export_dir), "--backend", runtime,
         "--duration", "1", "--warmup", "2", "--json", str(out), "--scenario-seconds", "0.5"],
        tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    results = json.loads(out.read_text())["results"]
    keys = {row["key"] for row in results}
    assert f"{runtime}:int8" in keys, keys
    assert any(k.startswith(f"{runtime}:float") for k in keys), keys
    assert all(row["p50_ms"] > 0 for row in results if row["scenario"] == "single-stream")
    assert all(row["samples_per_s"] > 0 for row in results if row["scenario"] == "offline")
    assert {row["scenario"] for row in results} == {"single-stream", "offline"}
    # The export side says what it needs, in one line.
    r = _run([str(py.parent / "quantship"), "export", "m.onnx", "--out", "o"], tmp_path)
    assert r.returncode == 2
    assert "pip install 'quantship[export]'" in r.stderr and "Traceback" not in r.stderr
