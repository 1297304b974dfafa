"""Data sources and their checks against the model's inputs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from quantship.calibration.images import ImageOptions
from quantship.calibration.sources import open_data
from quantship.errors import DataError
from quantship.exporter.load import InputSpec

IMG = [InputSpec("images", (None, 3, 8, 8), "float32")]


def test_uncompressed_npz_is_read_sample_by_sample(tmp_path: Path) -> None:
    x = np.arange(5 * 3 * 8 * 8, dtype=np.float32).reshape(5, 3, 8, 8)
    np.savez(tmp_path / "d.npz", images=x)
    data = open_data(tmp_path / "d.npz", IMG)
    assert data.num_samples == 5
    feeds = list(data.samples())
    assert len(feeds) == 5 and feeds[3]["images"].shape == (1, 3, 8, 8)
    np.testing.assert_array_equal(feeds[3]["images"][0], x[3])
    from quantship.calibration.data import StoredArray, stored_npz

    stored = stored_npz(tmp_path / "d.npz")["images"]
    assert isinstance(stored, StoredArray)  # nothing loaded until a slice is read
    np.testing.assert_array_equal(stored[1:3], x[1:3])


def test_compressed_npz_and_npy_work(tmp_path: Path) -> None:
    x = np.arange(4 * 3 * 8 * 8, dtype=np.float32).reshape(4, 3, 8, 8)
    np.savez_compressed(tmp_path / "c.npz", images=x)
    np.save(tmp_path / "a.npy", x)
    assert open_data(tmp_path / "c.npz", IMG).num_samples == 4
    npy = open_data(tmp_path / "a.npy", IMG)
    assert npy.num_samples == 4
    np.testing.assert_array_equal(next(iter(npy.samples(2, 3)))["images"][0], x[2])
    np.testing.assert_array_equal(
        next(iter(open_data(tmp_path / "c.npz", IMG).samples(3)))["images"][0], x[3]
    )


def test_samples_range(tmp_path: Path) -> None:
    x = np.arange(10, dtype=np.float32)[:, None, None, None] * np.ones((10, 3, 8, 8), np.float32)
    np.savez(tmp_path / "d.npz", images=x)
    got = [float(f["images"][0, 0, 0, 0]) for f in open_data(tmp_path / "d.npz", IMG).samples(3, 6)]
    assert got == [3.0, 4.0, 5.0]


def test_missing_input_name_is_named(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", image=np.zeros((2, 3, 8, 8), np.float32), labels=np.zeros(2))
    with pytest.raises(
        DataError, match=r"no array for model input\(s\) 'images'; it has 'image', 'labels'"
    ):
        open_data(tmp_path / "d.npz", IMG)


def test_only_the_unnamed_array_binds_by_position_and_says_so(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", np.zeros((2, 3, 8, 8), np.float32))  # saved as arr_0
    data = open_data(tmp_path / "d.npz", IMG)
    assert set(data.first()) == {"images"}
    assert len(data.notes) == 1 and "arr_0" in data.notes[0] and "'images'" in data.notes[0]


def test_a_misnamed_array_is_not_bound_by_position(tmp_path: Path) -> None:
    """A one-input model given an archive whose one array is named for something else
    (the model's input is ``images``, the array ``pixels``) fails naming both."""
    np.savez(tmp_path / "d.npz", pixels=np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(DataError, match=r"no array for model input\(s\) 'images'; it has 'pixels'"):
        open_data(tmp_path / "d.npz", IMG)


def test_shape_mismatch_is_reported_before_any_work(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", images=np.zeros((2, 3, 9, 9), np.float32))
    with pytest.raises(
        DataError, match=r"shape \(3, 9, 9\) per sample; the model expects \(3, 8, 8\)"
    ):
        open_data(tmp_path / "d.npz", IMG).first()


def test_rank_mismatch(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", images=np.zeros((2, 3, 8), np.float32))
    with pytest.raises(DataError, match="rank 2 per sample"):
        open_data(tmp_path / "d.npz", IMG).first()


def test_nan_sample_is_named(tmp_path: Path) -> None:
    x = np.zeros((3, 3, 8, 8), np.float32)
    x[2, 0, 0, 0] = np.nan
    np.savez(tmp_path / "d.npz", images=x)
    data = open_data(tmp_path / "d.npz", IMG)
    with pytest.raises(DataError, match="sample 2 of input 'images' contains NaN"):
        list(data.samples())


def test_empty_data_set(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", images=np.zeros((0, 3, 8, 8), np.float32))
    with pytest.raises(DataError, match="holds no samples"):
        open_data(tmp_path / "d.npz", IMG)


def test_dtypes_cast_where_safe_and_refused_otherwise(tmp_path: Path) -> None:
    np.savez(tmp_path / "f64.npz", images=np.zeros((1, 3, 8, 8), np.float64))
    assert open_data(tmp_path / "f64.npz", IMG).first()["images"].dtype == np.float32
    ids = [InputSpec("ids", (None, 4), "int64")]
    np.savez(tmp_path / "ids.npz", ids=np.zeros((1, 4), np.float32))
    with pytest.raises(DataError, match="is float32; the model expects int64"):
        open_data(tmp_path / "ids.npz", ids).first()


def test_not_found_and_wrong_kind(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        open_data(tmp_path / "nope.npz", IMG)
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match=r"is text: say how to tokenize it with --tokenizer"):
        open_data(tmp_path / "x.txt", IMG)
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(DataError, match=r"neither \.npz, \.npy, a text file nor a folder"):
        open_data(tmp_path / "x.csv", IMG)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"not a readable \.npz"):
        open_data(tmp_path / "bad.npz", IMG)


def test_image_folder_preprocessing(tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    Image.new("RGB", (20, 10), (255, 0, 51)).save(folder / "b.png")
    Image.new("RGB", (8, 8), (0, 255, 0)).save(folder / "sub" / "a.png")
    opts = ImageOptions(mean=(0.5,), std=(0.5,), channel_order="BGR")
    data = open_data(folder, IMG, images=opts)
    assert data.num_samples == 2
    b, a = list(data.samples())  # sorted by relative path: "b.png" < "sub/a.png"
    assert b["images"].shape == (1, 3, 8, 8)
    # BGR of (255, 0, 51): B=51/255=0.2 -> (0.2-0.5)/0.5 = -0.6; G=0 -> -1; R=1 -> 1
    np.testing.assert_allclose(b["images"][0, :, 4, 4], [-0.6, -1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(a["images"][0, :, 0, 0], [-1.0, 1.0, -1.0], atol=1e-6)


def test_image_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        open_data(tmp_path / "empty", IMG)


def test_unreadable_image_is_named(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match=r"broken\.png"):
        open_data(tmp_path / "imgs", IMG).first()


def test_callable_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mydata.py").write_text(
        "import numpy as np\n"
        "def feeds():\n"
        "    for i in range(3):\n"
        "        yield {'images': np.full((2, 3, 8, 8), i, np.float32)}\n"
        "def broken():\n"
        "    raise RuntimeError('boom')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    data = open_data("mydata:feeds", IMG)
    got = [float(f["images"][0, 0, 0, 0]) for f in data.samples()]
    assert got == [0, 0, 1, 1, 2, 2]  # batches of 2 split into samples
    with pytest.raises(DataError, match="boom"):
        open_data("mydata:broken", IMG).first()
    with pytest.raises(DataError, match="has no function 'nope'"):
        open_data("mydata:nope", IMG)
    with pytest.raises(DataError, match="cannot import 'no_such_mod'"):
        open_data("no_such_mod:feeds", IMG)
    sys.modules.pop("mydata", None)


def test_arrays_matching_no_input_are_named(tmp_path: Path) -> None:
    np.savez(
        tmp_path / "d.npz",
        images=np.zeros((2, 3, 8, 8), np.float32),
        atention_mask=np.ones((2, 8)),
        labels=np.zeros(2),
    )
    data = open_data(tmp_path / "d.npz", IMG)
    assert len(data.notes) == 1 and "'atention_mask'" in data.notes[0]
    assert "labels" not in data.notes[0]  # read by --metric
