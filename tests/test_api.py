"""The Python API as a notebook uses it: models and data held in objects, results read
from the returned object, every entry point importable from ``quantship``."""

from __future__ import annotations

import doctest
import importlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from models import images, run_ort, tiny_cnn

import quantship
from quantship import api
from quantship.errors import QuantshipError

ROOT = Path(__file__).resolve().parent.parent


def test_every_entry_point_is_importable_from_the_package() -> None:
    for name in ("export", "bench", "profile", "sensitivity", "build_engine"):
        fn = getattr(quantship, name)
        assert callable(fn) and fn is getattr(api, name), name
        assert fn.__doc__, f"quantship.{name} has no docstring"
    # Importing the measuring code (as an export does) leaves quantship.bench the function.
    importlib.import_module("quantship.measure.run")
    assert quantship.bench is api.bench
    # quantship.distill is the function, or once the distill subpackage is imported
    # (Python then binds the name to it) the subpackage, callable as the function.
    assert api.distill.__doc__
    importlib.import_module("quantship.distill.loss")
    for fn in (quantship.distill, api.distill):
        with pytest.raises(QuantshipError, match="epochs must be >= 0"):
            fn("t:t", "s:s", "d.npz", "out", epochs=-1)


def test_a_model_proto_and_arrays_in_memory(tmp_path: Path) -> None:
    proto = tiny_cnn(batch="N")
    before = proto.SerializeToString()
    x = images(48)
    res = quantship.export(proto, x, tmp_path / "a", held_out=x[32:], samples=32, bench=False)
    assert proto.SerializeToString() == before  # the caller's model is left alone
    (art,) = res.artifacts
    assert (art.backend, art.precision) == ("onnxruntime", "int8") and art.path.exists()
    assert res.manifest["calibration"]["data"] == "an array 48x3x16x16 float32"
    assert res.manifest["input_model"]["source"] == "the onnx.ModelProto passed in"
    assert res.verdict is not None and res.verdict["choice"] is None  # not timed: no choice
    # The same data as a dict, as a list of one-sample feeds, and through a transform:
    # the same calibration table, so the same bytes.
    want = art.path.read_bytes()
    for i, data in enumerate(
        [{"images": x}, [{"images": x[j : j + 1]} for j in range(48)], iter(list(x[:, None]))]
    ):
        out = tmp_path / f"b{i}"
        r = quantship.export(proto, data, out, samples=32, bench=False)
        assert r.artifacts[0].path.read_bytes() == want, type(data)
    r = quantship.export(proto, [(x[j], j % 10) for j in range(48)], tmp_path / "t", samples=32,
                         bench=False, transform=lambda item: {"images": item[0][None]})  # fmt: skip
    assert r.artifacts[0].path.read_bytes() == want


def test_a_torch_module_and_a_dataloader_in_a_notebook(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch", reason="torch is not installed")
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 4)).eval()  # fmt: skip
    x = torch.from_numpy(images(64))
    loader = DataLoader(TensorDataset(x, torch.zeros(64, dtype=torch.int64)), batch_size=16)
    res = quantship.export(net, loader, tmp_path / "m", held_out=x[48:].numpy(), samples=48,
                           backends="onnxruntime", threads=1)  # fmt: skip
    # The verdict, read from the object: timed, and the INT8 model named or the reason why not.
    v = res.verdict
    assert v is not None and isinstance(v["line"], str) and v["line"]
    entries = res.manifest["artifacts"] + res.manifest["baselines"]
    assert v["choice"] in {e["key"] for e in entries}, v
    best = res.recommended
    assert best is not None and best["key"] == v["choice"] and best["p50_ms"] > 0
    (art,) = res.artifacts
    got = run_ort(art.path, {"input": x[:4].numpy()})[0]
    with torch.no_grad():
        ref = net(x[:4]).numpy()
    assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max() + 1e-3


def test_objects_that_are_not_data_or_models_get_one_line(tmp_path: Path) -> None:
    x = images(8)
    with pytest.raises(QuantshipError, match="model of type dict: pass a path"):
        quantship.export({"not": "a model"}, x, tmp_path / "a", bench=False)
    with pytest.raises(QuantshipError, match="calibration data of type int is not data"):
        quantship.export(tiny_cnn(batch="N"), 3, tmp_path / "b", bench=False)
    with pytest.raises(QuantshipError, match="yielded str; yield dicts of arrays"):
        quantship.export(tiny_cnn(batch="N"), ["a", "b"], tmp_path / "c", bench=False)
    for d in ("a", "b", "c"):
        assert not (tmp_path / d).exists()


def test_the_docstring_examples_run(tmp_path: Path) -> None:
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = [t for t in finder.find(api, "quantship.api") if t.examples]
    assert any(t.name == "quantship.api.export" for t in tests)
    for t in tests:
        t.globs["out_dir"] = tmp_path / t.name
        runner.run(t)
    assert runner.failures == 0


def test_the_readme_api_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert blocks, "README has no python example"
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        env: dict[str, Any] = {}
        exec(compile(code, "README.md", "exec"), env)
    assert (tmp_path / "build" / "manifest.json").exists()
    assert json.loads((tmp_path / "build" / "manifest.json").read_text())["artifacts"]


def test_misspelt_names_get_the_closest_one(tmp_path: Path) -> None:
    x = images(8)
    with pytest.raises(
        QuantshipError, match="unknown calibration method 'minmaxx'; did you mean 'minmax'"
    ):
        quantship.export(tiny_cnn(batch="N"), x, tmp_path / "a", method="minmaxx", bench=False)
    with pytest.raises(QuantshipError, match=r"names 'imges'.*did you mean 'images'"):
        quantship.export(tiny_cnn(batch="N"), x, tmp_path / "b", bench=False,
                         input_shapes={"imges": (1, 3, 16, 16)})  # fmt: skip
    with pytest.raises(QuantshipError, match="unknown backend 'openvno'; did you mean 'openvino'"):
        quantship.export(tiny_cnn(batch="N"), x, tmp_path / "c", backends="openvno", bench=False)


def test_a_module_with_two_inputs_is_fed_by_name_and_keeps_a_dynamic_batch(
    tmp_path: Path,
) -> None:
    torch = pytest.importorskip("torch", reason="torch is not installed")
    from torch import nn

    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(6, 3)

        def forward(self, a: Any, b: Any) -> Any:
            return self.a(a) + self.b(b)

    torch.manual_seed(0)
    net = Two().eval()
    rng = np.random.default_rng(0)
    a, b = rng.random((32, 4), dtype=np.float32), rng.random((32, 6), dtype=np.float32)
    # a dict whose order is not forward's, and a list of such dicts: bound by name
    for i, data in enumerate([{"b": b, "a": a}, [{"b": b[j : j + 8], "a": a[j : j + 8]} for j in range(0, 32, 8)]]):  # fmt: skip
        res = quantship.export(net, data, tmp_path / f"o{i}", samples=24, bench=False)
        fm = res.manifest["float_model"]["inputs"]
        assert [(x["name"], x["shape"][1:]) for x in fm] == [("a", [4]), ("b", [6])]
    # example_inputs trace the module; they do not fix its batch
    res = quantship.export(nn.Linear(4, 2).eval(), a, tmp_path / "e", bench=False,
                           example_inputs=(torch.zeros(8, 4),))  # fmt: skip
    shape = res.manifest["float_model"]["inputs"][0]["shape"]
    assert not isinstance(shape[0], int) and shape[1] == 4, shape  # the batch stays dynamic


def test_data_objects_that_cannot_be_read_twice_alike_are_refused(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch", reason="torch is not installed")
    from torch.utils.data import DataLoader, TensorDataset

    x = images(16)
    loader = DataLoader(TensorDataset(torch.from_numpy(x)), batch_size=4, shuffle=True)
    with pytest.raises(QuantshipError, match=r"RandomSampler.*pass shuffle=False"):
        quantship.export(tiny_cnn(batch="N"), loader, tmp_path / "a", bench=False)
    with pytest.raises(QuantshipError, match="already feeds: transform= applies to the items"):
        quantship.export(tiny_cnn(batch="N"), {"images": x}, tmp_path / "b", bench=False,
                         transform=lambda item: item)  # fmt: skip
    np.savez(tmp_path / "c.npz", images=x)
    with pytest.raises(QuantshipError, match="transform= applies to data passed as an object"):
        quantship.export(tiny_cnn(batch="N"), tmp_path / "c.npz", tmp_path / "c", bench=False,
                         transform=lambda item: item)  # fmt: skip
    assert not any((tmp_path / d).exists() for d in ("a", "b", "c"))
