"""The demo is the main job end to end on real data: teacher → distilled student with
under a quarter of the parameters → INT8 for every installed backend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the demo needs torch")
pytest.importorskip("sklearn", reason="the demo needs scikit-learn")


@pytest.mark.slow
def test_demo(tmp_path: Path) -> None:
    from quantship.cli import main

    assert main(["demo", "--out", str(tmp_path / "d"), "--epochs", "4", "-q"]) == 0
    d = json.loads((tmp_path / "d/demo.json").read_text())
    rows = {r["role"]: r for r in d["rows"] if r["role"] != "student int8"}
    assert rows["student"]["parameters"] <= rows["teacher"]["parameters"] / 4
    assert rows["teacher"]["test_accuracy"] > 0.95
    int8 = [r for r in d["rows"] if r["role"] == "student int8"]
    assert int8 and all("int8" in r["model"] for r in int8), d["rows"]
    for r in int8:
        assert abs(r["test_accuracy"] - rows["student"]["test_accuracy"]) <= 0.02
        assert r["file_bytes"] < rows["student"]["file_bytes"]
    for f in (
        "teacher/teacher.onnx",
        "student/student.onnx",
        "student/metrics.json",
        "build/manifest.json",
    ):
        assert (tmp_path / "d" / f).exists(), f
    assert d["plot"] is None or (tmp_path / "d/latency.png").stat().st_size > 1000
