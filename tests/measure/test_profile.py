"""Per-layer profiles from the runtimes' own profilers: every layer with the kernel it
ran on, float beside INT8, on the command line and as JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from models import images, save, tiny_cnn

from quantship import api
from quantship.backends import registry

INTEGER = {"int8", "uint8", "i8", "u8"}


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("profile")
    model = save(tiny_cnn(), tmp / "cnn.onnx")
    np.savez(tmp / "calib.npz", images=images(48))
    backends = [b for b in ("onnxruntime", "openvino") if registry.get(b).available() is None]
    api.export(
        model, tmp / "calib.npz", tmp / "out", backends=",".join(backends), samples=24, bench=False
    )
    return tmp / "out"


def test_profile_shows_integer_kernels_in_int8_and_none_in_float(export_dir: Path) -> None:
    out = export_dir.parent / "profile.json"
    profiles = api.profile(export_dir, runs=3, threads=1, json_path=out)
    by_key = {p.key: p for p in profiles}
    for key, p in by_key.items():
        assert p.layers and p.total_ms > 0, key
        assert all(layer.kernel and layer.ms >= 0 for layer in p.layers), key
        if ":float:" in key:
            assert p.integer_ms == 0, key  # a float model runs no integer kernel
        else:
            assert p.integer_ms > 0.3 * p.total_ms, key  # its convolutions are integer
            convs = [x for x in p.layers if "Conv" in x.op_type]
            assert convs and all(x.precision.lower() in INTEGER for x in convs), key
    assert "onnxruntime:int8" in by_key and "onnxruntime:float:fp32" in by_key
    saved = json.loads(out.read_text())
    assert [p["key"] for p in saved["profiles"]] == list(by_key)
    assert saved["machine"]["cpu"] and saved["runs"] == 3
    first = saved["profiles"][0]
    assert first["total_ms"] == pytest.approx(sum(x["ms"] for x in first["layers"]), rel=1e-3)


def test_openvino_profile_names_the_fused_layers(export_dir: Path) -> None:
    if registry.get("openvino").available() is not None:
        pytest.skip("OpenVINO is not installed")
    (p,) = api.profile(export_dir, backends="openvino", runs=2, threads=1, top=0)[-1:]
    assert p.key == "openvino:int8"
    # ReLUs and dequantization are fused into the convolutions that produce them
    fused = {name for layer in p.layers for name in layer.fused}
    assert {"relu1", "r1.DequantizeLinear"} & fused


def test_profile_on_the_command_line(export_dir: Path) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "quantship", "profile", str(export_dir), "--runs", "2",
         "--backend", "onnxruntime", "--top", "2"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "QLinearConv" in p.stdout and "by op type" in p.stdout and "slowest layers" in p.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "quantship", "profile", str(export_dir / "nope")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_onnxruntime_profile_events_are_averaged_without_the_warm_up() -> None:
    from quantship.backends.onnxruntime import _node_times

    def ev(node: str, dur: int, op: str) -> dict[str, object]:
        return {
            "cat": "Node",
            "name": f"{node}_kernel_time",
            "dur": dur,
            "args": {"op_name": op, "provider": "CPUExecutionProvider",
                     "output_type_shape": [{"float": [1, 8]}]},
        }  # fmt: skip

    events = [ev("c", 900, "QLinearConv"), ev("r", 900, "Relu")]  # the warm-up run
    events += [ev("c", 100, "QLinearConv"), ev("r", 30, "Relu")] * 2
    events.append({"cat": "Session", "name": "model_run", "dur": 5000})
    got = {x.name: x for x in _node_times(events, runs=2)}
    assert got["c"].ms == pytest.approx(0.1) and got["c"].precision == "int8"
    assert got["r"].ms == pytest.approx(0.03) and got["r"].precision == "float"
    assert got["c"].kernel == "QLinearConv (CPU)"
