"""The export's own measurements on models whose batch is fixed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from models import images, save, tiny_cnn

from quantship import api


def test_a_fixed_batch_model_is_timed_at_its_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model exported with a static batch of 4 is timed and judged at batch 4
    (timing it at batch 1 cannot run: the export used to stop there), and the plan
    search times its plans there too."""
    monkeypatch.setenv("QUANTSHIP_CACHE_DIR", str(tmp_path / "cache"))
    m = tiny_cnn()
    for vi in [*m.graph.input, *m.graph.output]:
        dim = vi.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_param")
        dim.dim_value = 4
    model = save(m, tmp_path / "b4.onnx")
    np.savez(tmp_path / "calib.npz", images=images(48))
    res = api.export(model, tmp_path / "calib.npz", tmp_path / "o", samples=32, threads=1)
    (entry,) = res.manifest["artifacts"]
    assert entry["latency"] and {r["batch"] for r in entry["latency"]} == {4}
    assert entry["p50_ms"] > 0 and res.manifest["verdict"]["choice"] is not None
    assert all(b["p50_ms"] > 0 for b in res.manifest["baselines"])
    searched = api.export(model, tmp_path / "calib.npz", tmp_path / "s", samples=32, threads=1,
                          bench=False, plan="search")  # fmt: skip
    rows = searched.manifest["artifacts"][0]["plan_search"]["plans"]
    assert rows[0]["plan"] == "rules" and rows[0]["p50_ms"] > 0
