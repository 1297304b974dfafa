"""Calibration over a model: every activation observed, shards merge, JSON round-trips."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from quantship.calibration.runner import calibrate, observed_tensors
from quantship.calibration.sources import open_data
from quantship.calibration.table import CalibrationTable
from quantship.errors import DataError
from quantship.exporter.load import load_model


def test_every_float_activation_is_observed(cnn_path: Path, calib_npz: Path) -> None:
    fm = load_model(cnn_path, data_shapes={"images": (1, 3, 16, 16)})
    data = open_data(calib_npz, fm.inputs)
    table = calibrate(fm, data, samples=10)
    assert table.samples == 10
    assert set(table) == set(observed_tensors(fm))
    assert "images" in table and "logits" in table and "r1" in table
    assert table["r1"].min >= 0.0  # a Relu output
    assert all(st.count > 0 for st in table.values())


def test_two_shards_merge_into_the_whole(cnn_path: Path, calib_npz: Path) -> None:
    fm = load_model(cnn_path, data_shapes={"images": (1, 3, 16, 16)})
    data = open_data(calib_npz, fm.inputs)
    whole = calibrate(fm, data, samples=20, batch_size=3)
    a = calibrate(fm, data, samples=8, batch_size=5)
    b = calibrate(fm, data, start=8, samples=12, batch_size=4)
    merged = a.merge(b)
    assert merged.samples == whole.samples
    for name in whole:
        x, y = whole[name], merged[name]
        assert (x.count, x.min, x.max) == (y.count, y.min, y.max)
        hx, hy = x.histogram(), y.histogram()
        assert hx is not None and hy is not None
        assert (hx.exp, hx.lo) == (hy.exp, hy.lo)
        # float model outputs differ in the last bits between batch sizes, so a value on
        # a bin edge can move by one bin; the totals are exact
        assert hx.total == hy.total
        assert np.abs(hx.counts - hy.counts).sum() <= 0.001 * hx.total + 2


def test_table_json_roundtrip(cnn_path: Path, calib_npz: Path, tmp_path: Path) -> None:
    fm = load_model(cnn_path, data_shapes={"images": (1, 3, 16, 16)})
    table = calibrate(fm, open_data(calib_npz, fm.inputs), samples=5)
    table.save(tmp_path / "calibration.json")
    back = CalibrationTable.load(tmp_path / "calibration.json")
    assert back.to_text() == table.to_text()
    assert back.model_sha256 == fm.sha256
    assert back.input_dims == table.input_dims == {"images": ((1, 1), (3, 3), (16, 16), (16, 16))}


def test_input_sizes_merge_as_ranges() -> None:
    from quantship.calibration.table import feed_dims, merge_dims

    a = feed_dims({"ids": np.zeros((1, 7), np.int64)})
    b = feed_dims({"ids": np.zeros((1, 30), np.int64), "mask": np.zeros((1, 30), bool)})
    assert merge_dims(a, b) == {"ids": ((1, 1), (7, 30)), "mask": ((1, 1), (30, 30))}
    assert merge_dims(b, a)["ids"] == ((1, 1), (7, 30))
    with pytest.raises(ValueError, match="rank"):
        merge_dims(a, {"ids": ((1, 1),)})


def test_table_load_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        CalibrationTable.load(tmp_path / "none.json")
    (tmp_path / "x.json").write_text('{"format": "other"}')
    with pytest.raises(DataError, match="not a quantship calibration table"):
        CalibrationTable.load(tmp_path / "x.json")
    (tmp_path / "y.json").write_text("{not json")
    with pytest.raises(DataError, match="not readable JSON"):
        CalibrationTable.load(tmp_path / "y.json")


def test_data_hash_depends_on_the_samples(cnn_path: Path, calib_npz: Path) -> None:
    fm = load_model(cnn_path, data_shapes={"images": (1, 3, 16, 16)})
    data = open_data(calib_npz, fm.inputs)
    a = calibrate(fm, data, samples=5)
    b = calibrate(fm, data, samples=5)
    c = calibrate(fm, data, start=1, samples=5)
    assert a.data_sha256 == b.data_sha256 != c.data_sha256
    assert a.to_text() == b.to_text()


def test_in_graph_probes_match_observing_whole_tensors(cnn_path: Path, calib_npz: Path) -> None:
    """min/max and the histogram sample computed inside the runtime equal what numpy
    computes from the full tensors."""
    import onnx
    from models import run_ort

    from quantship.calibration.observers import Observer

    fm = load_model(cnn_path, data_shapes={"images": (1, 3, 16, 16)})
    data = open_data(calib_npz, fm.inputs)
    table = calibrate(fm, data, samples=6, batch_size=2)
    full = onnx.ModelProto()
    full.CopyFrom(fm.proto)
    names = [t for t in observed_tensors(fm) if t != "images"]
    del full.graph.output[:]
    full.graph.output.extend(
        onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in names
    )
    obs = {t: Observer(t) for t in names}
    for feed in data.samples(0, 6):
        for t, arr in zip(names, run_ort(full, feed), strict=True):
            obs[t].update(arr)
    for t in names:
        a, b = table[t], obs[t].stats()
        assert a.count == b.count and a.zeros == b.zeros
        assert a.min == pytest.approx(b.min, abs=1e-5) and a.max == pytest.approx(b.max, abs=1e-5)
        ha, hb = a.histogram(), b.histogram()
        assert ha is not None and hb is not None and ha.total == hb.total


def _seq_model(tmp_path: Path, batch: int | None = None) -> tuple[Any, Any]:
    """The where_mask family (dynamic batch and sequence), optionally with its batch
    fixed, and a data function yielding sequences of 8 then 64 tokens."""
    import sys

    import onnx

    sys.path.insert(0, str(Path(__file__).parent.parent / "corpus"))
    import families

    fam = families.build("where_mask", tmp_path)
    path = fam.model
    if batch is not None:
        m = onnx.load(str(path))
        for vi in [*m.graph.input, *m.graph.output]:
            vi.type.tensor_type.shape.dim[0].dim_value = batch
        path = tmp_path / "fixed.onnx"
        onnx.save(m, str(path))
    return load_model(path), fam


def test_batches_are_sized_per_sequence_length(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first sample of each length is measured alone: long sequences (attention
    grows with the square of the length) get smaller batches than short ones."""
    from quantship.calibration import runner
    from quantship.calibration.data import CalibrationData

    fm, _ = _seq_model(tmp_path)
    rng = np.random.default_rng(0)

    def samples() -> Any:
        for t in [8] * 12 + [64] * 12:
            yield {"x": rng.standard_normal((1, t, 32)).astype(np.float32),
                   "mask": np.ones((1, t), bool)}  # fmt: skip

    data = CalibrationData("seq", "calibration", fm.inputs, 24, samples)
    seen: list[tuple[int, int]] = []
    original = runner._observe

    def spy(*args: Any) -> int:
        feed, n = args[-2], args[-1]
        seen.append((feed["x"].shape[1], n))
        return original(*args)

    monkeypatch.setattr(runner, "_observe", spy)
    # A budget that holds a few short samples and only one long one.
    monkeypatch.setattr(runner, "ACTIVATION_BUDGET", 300_000)
    table = calibrate(fm, data)
    assert table.samples == 24
    short = max(n for t, n in seen if t == 8)
    long = max(n for t, n in seen if t == 64)
    assert short > 2 * long


def test_a_fixed_batch_runs_full_batches_of_one_length(tmp_path: Path) -> None:
    """Samples of mixed lengths for a model with a fixed batch of 2: grouped by length,
    full batches only; the leftover is counted, not a crash."""
    from quantship.calibration.data import CalibrationData
    from quantship.ui import UI

    fm, _ = _seq_model(tmp_path, batch=2)
    assert fm.fixed_batch == 2
    rng = np.random.default_rng(0)

    def samples() -> Any:
        for t in [8, 16] * 5 + [8]:
            yield {"x": rng.standard_normal((1, t, 32)).astype(np.float32),
                   "mask": np.ones((1, t), bool)}  # fmt: skip

    notes: list[str] = []

    class Notes(UI):
        def note(self, text: str) -> None:
            notes.append(text)

    table = calibrate(
        fm, CalibrationData("seq", "calibration", fm.inputs, 11, samples), ui=Notes(quiet=True)
    )
    assert table.samples == 10
    assert len(notes) == 1 and "1 sample(s) left out" in notes[0]
