from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from models import images, save, tiny_cnn


@pytest.fixture
def cnn_path(tmp_path: Path) -> Path:
    return save(tiny_cnn(), tmp_path / "cnn.onnx")


@pytest.fixture
def calib_npz(tmp_path: Path) -> Path:
    path = tmp_path / "calib.npz"
    np.savez(path, images=images(40))
    return path


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own decision cache (plan search, accuracy guard): nothing measured
    by one test is reused by another, and nothing is written to the user's cache."""
    monkeypatch.setenv("QUANTSHIP_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
