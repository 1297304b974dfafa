"""quantship: a trained network to INT8 on real inference runtimes, measured there.

``import quantship`` stays light: numpy, onnx and onnxruntime are imported only by
the functions that use them, and torch, openvino and tensorrt only on their own paths.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from quantship.errors import QuantshipError

__all__ = [
    "QuantshipError",
    "__version__",
    "bench",
    "build_engine",
    "distill",
    "export",
    "profile",
    "sensitivity",
]
API = frozenset(__all__[2:])

if TYPE_CHECKING:
    from quantship.api import bench, build_engine, distill, export, profile, sensitivity


def __getattr__(name: str) -> Any:
    if name in API:
        from quantship import api

        return getattr(api, name)
    raise AttributeError(f"module 'quantship' has no attribute {name!r}")
