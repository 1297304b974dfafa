"""An encoder from raw text to INT8: sentences tokenized by a local tokenizer, sequence
length left dynamic, sentence-embedding fidelity (--pooling), timing at several lengths
(bench --lengths) and a TensorRT profile over the calibrated lengths."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "corpus"))

import families

from quantship.backends import registry
from quantship.backends.base import SessionSettings
from quantship.backends.tensorrt_shapes import engine_profiles, profile_shapes
from quantship.errors import BackendError
from quantship.exporter.manifest import artifacts_in

for _module in ("torch", "transformers", "tokenizers", "openvino"):
    if importlib.util.find_spec(_module) is None:
        pytest.skip(f"{_module} is not installed", allow_module_level=True)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quantship", *args], capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("encoder")
    fam = families.bert(root, "test", dynamo=False)
    tok = families.save_tokenizer(root / "tokenizer", families.sentences(300, 0))
    calib, held = root / "calib.txt", root / "held.txt"
    calib.write_text("\n".join(families.sentences(40, 1)) + "\n", encoding="utf-8")
    held.write_text("\n".join(families.sentences(16, 2)) + "\n", encoding="utf-8")
    out = root / "out"
    p = _cli(
        "export", str(fam.model), "--calib", str(calib), "--held-out", str(held),
        "--tokenizer", str(tok), "--pooling", "mean", "--backend", "onnxruntime,openvino,tensorrt",
        "--no-bench", "--out", str(out),
    )  # fmt: skip
    return {"p": p, "out": out, "tok": tok, "held": held, "root": root}


def test_text_export_reports_sentence_fidelity(exported: dict[str, Any]) -> None:
    p = exported["p"]
    assert p.returncode == 0, p.stderr
    assert "sentence cos (mean)" in p.stdout and "same nearest" in p.stdout
    manifest = json.loads((exported["out"] / "manifest.json").read_text())
    sizes = manifest["calibration"]["input_sizes"]["input_ids"]
    assert sizes[0] == [1, 1] and sizes[1][0] < sizes[1][1]  # several lengths calibrated
    assert manifest["calibration"]["samples"] == 40
    assert "tokenized by" in manifest["calibration"]["data"]
    for entry in manifest["artifacts"]:
        s = entry["fidelity"]["sentence"]
        assert s["pooling"] == "mean" and s["output"] == "last_hidden_state"
        assert 0.98 < s["cosine"] <= 1.0 + 1e-9
        assert s["same_nearest"] is not None and 0.0 <= s["same_nearest"] <= 1.0
    fp32 = next(b for b in manifest["baselines"] if b["precision"] == "fp32")
    assert fp32["fidelity"]["sentence"]["same_nearest"] == 1.0


def test_int8_runs_at_any_length(exported: dict[str, Any]) -> None:
    manifest = json.loads((exported["out"] / "manifest.json").read_text())
    for art in artifacts_in(exported["out"], manifest):
        b = registry.get(art.backend)
        if b.available() is not None or art.backend == "tensorrt":
            continue
        with b.session(art, SessionSettings()) as s:
            for t in (3, 200):
                ids = np.full((2, t), 7, np.int64)
                feed = {"input_ids": ids, "attention_mask": np.ones_like(ids),
                        "token_type_ids": np.zeros_like(ids)}  # fmt: skip
                (h,) = s.run(feed)
                assert h.shape == (2, t, 64) and np.isfinite(h).all()


def test_tensorrt_profile_spans_calibrated_lengths(exported: dict[str, Any]) -> None:
    manifest = json.loads((exported["out"] / "manifest.json").read_text())
    trt = next(a for a in manifest["artifacts"] if a["backend"] == "tensorrt")
    inputs = trt["metadata"]["inputs"]
    ids = next(i for i in inputs if i["name"] == "input_ids")
    lo, hi = manifest["calibration"]["input_sizes"]["input_ids"][1]
    assert ids["min"][1] == lo and ids["max"][1] == hi and lo <= ids["profile"][1] <= hi
    assert profile_shapes(ids, 8) == ([1, lo], [1, ids["profile"][1]], [8, hi])
    names = [i["name"] for i in inputs]
    given = {n: ([1, 16], [1, 128], [8, 384]) for n in names}
    assert engine_profiles(inputs, 8, given) == given
    with pytest.raises(BackendError, match="inputs are"):
        engine_profiles(inputs, 8, {**given, "input_idz": ([1, 1], [1, 2], [1, 3])})
    with pytest.raises(BackendError, match="min <= opt <= max"):
        engine_profiles(inputs, 8, {**given, "input_ids": ([1, 64], [1, 16], [1, 384])})
    with pytest.raises(BackendError, match="rank"):
        engine_profiles(inputs, 8, {**given, "input_ids": ([1], [1], [1])})
    with pytest.raises(BackendError, match="give one for every dynamic input"):
        engine_profiles(inputs, 8, {"input_ids": given["input_ids"]})


def test_bench_at_several_lengths(exported: dict[str, Any]) -> None:
    out, js = exported["out"], exported["root"] / "lengths.json"
    p = _cli(
        "bench", str(out), "--backend", "onnxruntime", "--lengths", "8,48", "--batch", "1,2",
        "--iterations", "3", "--warmup", "1", "--throughput-seconds", "0", "--json", str(js),
        "--data", str(exported["held"]), "--tokenizer", str(exported["tok"]),
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    rows = json.loads(js.read_text())["results"]
    points = {(r["key"], r["batch"], r["length"]) for r in rows}
    keys = {r["key"] for r in rows}
    assert "onnxruntime:int8" in keys
    assert points == {(k, b, n) for k in keys for b in (1, 2) for n in (8, 48)}
    assert "length" in p.stdout
    clash = _cli("bench", str(out), "--lengths", "8", "--input-shape", "input_ids=1x8")
    assert clash.returncode == 2 and "give one of them" in clash.stderr


def test_cli_rejects_bad_shapes_and_pooling(exported: dict[str, Any]) -> None:
    p = _cli("build-engine", str(exported["out"]), "--shapes", "input_ids=1x8:1x16")
    assert p.returncode == 2 and "NAME=MIN:OPT:MAX" in p.stderr and "Traceback" not in p.stderr
    p = _cli("export", "m.onnx", "--calib", "x.npz", "--pooling", "max", "--out", "o")
    assert p.returncode == 2 and "invalid choice" in p.stderr
