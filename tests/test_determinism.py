"""The same model, data and options give byte-identical artifacts."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from quantship import api


def test_two_exports_are_byte_identical(tmp_path: Path, cnn_path: Path, calib_npz: Path) -> None:
    """Two exports in one process: nothing may depend on what ran before (OpenVINO's
    converter numbers the ops it creates process-wide)."""
    backends = ["onnxruntime", "tensorrt"]
    files = ["onnxruntime/model.int8.onnx", "tensorrt/model.qdq.onnx"]
    if importlib.util.find_spec("openvino") is not None:
        backends.append("openvino")
        files += ["openvino/model.int8.xml", "openvino/model.int8.bin"]
    for name in ("a", "b"):
        api.export(
            cnn_path, calib_npz, tmp_path / name, backends=backends, method="entropy", bench=False
        )
    for rel in [*files, "calibration.json", "float/model.onnx", "manifest.json"]:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
