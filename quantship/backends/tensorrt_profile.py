"""Per-layer kernels and times of a TensorRT engine: layer times from an ``IProfiler``
on the execution context (reported once per layer for each ``execute_async_v3``), the
tactic and the input/output formats of each layer from the engine inspector (engines
are built with detailed profiling verbosity, so the inspector has them).

Written against TensorRT's documented Python API; it runs only where TensorRT and an
NVIDIA GPU are, and is not exercised on machines without them.
"""

from __future__ import annotations

import json
import re
from typing import Any

from quantship.backends.base import LayerTime
from quantship.types import Feed


def engine_profile(session: Any, feeds: Feed, runs: int) -> list[LayerTime]:
    """Mean per-layer time over ``runs`` runs of a ``TensorRTSession`` (after one
    warm-up run), with each layer's type, tactic and output precision."""
    trt = session.trt
    totals: dict[str, float] = {}
    order: list[str] = []

    class Collect(trt.IProfiler):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.IProfiler.__init__(self)

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            if layer_name not in totals:
                order.append(layer_name)
                totals[layer_name] = 0.0
            totals[layer_name] += ms

    session.run(feeds)  # warm-up, and buffers for this shape
    session.context.profiler = Collect()
    try:
        for _ in range(max(runs, 1)):
            session.run(feeds)
    finally:
        session.context.profiler = None
    details = _inspect(session)
    out = []
    for name in order:
        kind, tactic, precision = details.get(name, ("", "", ""))
        out.append(LayerTime(name, kind, tactic, precision, totals[name] / max(runs, 1)))
    return out


def _inspect(session: Any) -> dict[str, tuple[str, str, str]]:
    """Layer name → (layer type, tactic, the first output's data type)."""
    trt = session.trt
    inspector = session.engine.create_engine_inspector()
    inspector.execution_context = session.context
    info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    out: dict[str, tuple[str, str, str]] = {}
    for layer in info.get("Layers", []):
        if not isinstance(layer, dict):  # built without detailed verbosity: names only
            continue
        outputs = layer.get("Outputs") or [{}]
        fmt = str(outputs[0].get("Format/Datatype", ""))
        out[str(layer.get("Name", ""))] = (
            str(layer.get("LayerType", "")),
            str(layer.get("TacticName", layer.get("TacticValue", ""))),
            data_type(fmt),
        )
    return out


# The inspector names a tensor's type inside a format description, short ("Half",
# "Int8 NC/32HW32") or long ("Row major linear FP32 format", "Channel major FP16 format
# where channel % 8 == 0"), depending on whether an execution context is attached.
_TYPES = [(re.compile(p, re.IGNORECASE), name) for p, name in (
    (r"\bint8\b", "int8"), (r"\bint4\b", "int4"), (r"\bfp8\b", "fp8"),
    (r"\b(fp16|half)\b", "fp16"), (r"\bbf16\b", "bf16"), (r"\b(fp32|float)\b", "fp32"),
    (r"\bint32\b", "int32"), (r"\bint64\b", "int64"), (r"\bbool\b", "bool"),
)]  # fmt: skip


def data_type(fmt: str) -> str:
    """The data type in an inspector's ``Format/Datatype`` text ("" if none is named)."""
    for pattern, name in _TYPES:
        if pattern.search(fmt):
            return name
    return ""
