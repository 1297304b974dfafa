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
