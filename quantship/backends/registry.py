"""The one place that maps backend names to implementations.

Built-in backends are imported lazily (their runtimes are optional); third-party
backends register under the ``quantship.backends`` entry-point group, the value being
``module:attribute`` of a Backend instance or a zero-argument factory.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import cast

from quantship.backends import DEFAULT_BACKEND
from quantship.backends.base import Backend
from quantship.errors import BackendError, closest

BUILTIN: dict[str, str] = {
    "onnxruntime": "quantship.backends.onnxruntime:OnnxRuntimeBackend",
    "openvino": "quantship.backends.openvino:OpenVINOBackend",
    "tensorrt": "quantship.backends.tensorrt:TensorRTBackend",
}
DEFAULT = DEFAULT_BACKEND
# What the export side needs beyond numpy and a runtime (the ``export`` extra).
EXPORT_DEPS = frozenset({"onnx", "onnxslim", "rich"})


def _entry_points() -> dict[str, str]:
    found: dict[str, str] = {}
    for ep in entry_points(group="quantship.backends"):
        if ep.name not in BUILTIN:
            found[ep.name] = ep.value
    return found


def names() -> list[str]:
    """Every known backend name, built-in first."""
    existing = [n for n in BUILTIN if _module_exists(BUILTIN[n])]
    return existing + sorted(_entry_points())


def _module_exists(target: str) -> bool:
    mod = target.partition(":")[0]
    return importlib.util.find_spec(mod) is not None


def get(name: str) -> Backend:
    """The backend called ``name``; an unknown name lists the known ones."""
    target = BUILTIN.get(name) or _entry_points().get(name)
    if target is None or not _module_exists(target):
        raise BackendError(f"unknown backend {name!r}; {closest(name, names())}")
    mod_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name not in EXPORT_DEPS:
            raise
        raise BackendError(
            f"backend {name!r} needs {e.name}, which a runtime-only install leaves out: "
            "pip install 'quantship[export]'"
        ) from None
    obj = getattr(module, attr)
    if isinstance(obj, type) or (callable(obj) and not hasattr(obj, "plan")):
        obj = obj()
    return cast(Backend, obj)


def parse(spec: str) -> list[Backend]:
    """``"onnxruntime,openvino"`` → backends, in order, without duplicates."""
    out: list[Backend] = []
    seen: set[str] = set()
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if part in seen:
            continue
        seen.add(part)
        out.append(get(part))
    if not out:
        raise BackendError(f"no backend named in {spec!r}; available: {', '.join(names())}")
    return out


def available(spec: str | Sequence[str]) -> tuple[list[Backend], list[str]]:
    """The backends named in ``spec`` that can run here, and for the others one line
    each saying why and which extra to install. None usable at all is an error."""
    text = spec if isinstance(spec, str) else ",".join(spec)
    ok, missing = [], []
    for b in parse(text):
        reason = b.available()
        if reason is None:
            ok.append(b)
        else:
            missing.append(
                f"backend {b.name!r} is not available: {reason} (pip install 'quantship[{b.extra}]')"
            )
    if not ok:
        raise BackendError(missing[0])
    return ok, missing
