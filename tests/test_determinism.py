"""The same model, data and options give byte-identical artifacts."""

from __future__ import annotations

from pathlib import Path

from quantship import api


def test_two_exports_are_byte_identical(tmp_path: Path, cnn_path: Path, calib_npz: Path) -> None:
    for name in ("a", "b"):
        api.export(cnn_path, calib_npz, tmp_path / name, method="entropy", bench=False)
    for rel in ("onnxruntime/model.int8.onnx", "calibration.json", "float/model.onnx"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
