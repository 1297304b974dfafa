"""OpenVINO's CPU plugin as a user drives it: ``compile_model(model, "CPU")`` with the
latency (or throughput) hint and a thread count, a compiled model per input shape, and
the plugin's async queue for throughput mode."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from quantship.backends.base import BaseSession, LayerTime, SessionSettings
from quantship.errors import BackendError
from quantship.types import Feed, Precision


def openvino_module() -> Any:
    try:
        import openvino as ov
    except ImportError:
        raise BackendError(
            "backend 'openvino' needs OpenVINO: pip install 'quantship[openvino]'"
        ) from None
    return ov


# quantship's precision names → OpenVINO's element types, and back.
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
_FROM_OV = {"f32": "fp32", "bf16": "bf16", "f16": "fp16", "float32": "fp32",
            "bfloat16": "bf16", "float16": "fp16"}  # fmt: skip


def compile_config(
    settings: SessionSettings, overrides: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """What a user's plain ``compile_model(model, "CPU", ...)`` would pass: the latency
    (or throughput) hint and a thread count; a float precision only when one is asked
    for (otherwise the plugin's default: bf16 on CPUs with AVX-512 BF16 or AMX)."""
    cfg: dict[str, Any] = {
        "PERFORMANCE_HINT": "THROUGHPUT" if settings.mode == "throughput" else "LATENCY",
    }
    if settings.precision is not None:
        cfg["INFERENCE_PRECISION_HINT"] = _OV_PRECISION[settings.precision]
    if settings.threads:
        cfg["INFERENCE_NUM_THREADS"] = settings.threads
    if settings.mode == "throughput" and settings.streams:
        cfg["NUM_STREAMS"] = settings.streams
    cfg.update(overrides or {})
    return cfg


def precision_name(hint: str) -> Precision:
    name = _FROM_OV.get(hint.lower().replace("<type: '", "").rstrip("'>"), "fp32")
    return cast(Precision, name)


class OVSession(BaseSession):
    """A compiled model per input shape: the model is reshaped to the static shape of
    the first feed of each batch size (static shapes compile to faster kernels).
    ``overrides`` are plugin settings the artifact needs (see ``static_shape_check``)."""

    def __init__(
        self,
        source: Path | Any,
        settings: SessionSettings,
        overrides: Mapping[str, str] | None = None,
        *,
        static: bool = True,
    ) -> None:
        ov = openvino_module()
        self.core = ov.Core()
        self.path = source if isinstance(source, Path) else Path("model")
        self.settings = settings
        self.overrides = dict(overrides or {})
        self.static = static
        try:
            self.model = self.core.read_model(str(source)) if isinstance(source, Path) else source
        except Exception as e:
            raise BackendError(
                f"OpenVINO cannot read '{source}': {str(e).splitlines()[0]}"
            ) from None
        self._compiled: dict[tuple[Any, ...], Any] = {}
        self._requests: dict[tuple[Any, ...], Any] = {}

    def close(self) -> None:
        self._requests.clear()
        self._compiled.clear()

    def compiled_for(self, feeds: Feed) -> Any:
        key = tuple(sorted((k, v.shape) for k, v in feeds.items()))
        if key not in self._compiled:
            model = self.model.clone()
            shapes = {}
            for inp in model.inputs:
                name = inp.get_any_name()
                if name in feeds:
                    shapes[name] = list(feeds[name].shape)
            if shapes and self.static:
                model.reshape(shapes)
            try:
                self._compiled[key] = self.core.compile_model(
                    model, "CPU", compile_config(self.settings, self.overrides)
                )
            except Exception as e:
                raise BackendError(f"OpenVINO cannot compile the model: {ov_message(e)}") from None
            self._requests[key] = self._compiled[key].create_infer_request()
        return self._compiled[key]

    def run(self, feeds: Feed) -> list[npt.NDArray[Any]]:
        compiled = self.compiled_for(feeds)
        key = tuple(sorted((k, v.shape) for k, v in feeds.items()))
        req = self._requests[key]
        try:
            req.infer(feeds)
        except Exception as e:
            raise BackendError(
                f"OpenVINO failed to run '{self.path.name}': {str(e).splitlines()[0]}"
            ) from None
        return [np.array(req.get_output_tensor(i).data) for i in range(len(compiled.outputs))]

    def queue(self, feeds: Feed, streams: int | None) -> OVQueue:
        """OpenVINO's own async queue on the model compiled with the THROUGHPUT hint (at
        ``streams`` CPU streams, else the plugin's choice), as many infer requests as the
        plugin finds optimal."""
        tp = OVSession(
            self.model,
            replace(self.settings, mode="throughput", streams=streams),
            self.overrides,
            static=self.static,
        )
        return OVQueue(tp, feeds)

    def profile(self, feeds: Feed, runs: int) -> list[LayerTime]:
        """The plugin's per-layer counters (``PERF_COUNT``) over ``runs`` runs, from a
        compilation of the same model with the same settings and counters on: each
        executed layer's kernel (``exec_type``), the precision the runtime model says
        it ran in, the original layers fused into it, and its mean ``real_time``."""
        with OVSession(
            self.model, self.settings, {**self.overrides, "PERF_COUNT": "YES"}, static=self.static
        ) as prof:
            compiled = prof.compiled_for(feeds)
            key = tuple(sorted((k, v.shape) for k, v in feeds.items()))
            req = prof._requests[key]
            total: dict[str, float] = {}
            info: dict[str, Any] = {}
            for k in range(max(runs, 1) + 1):  # the first is a warm-up, left out
                try:
                    req.infer(feeds)
                except Exception as e:
                    raise BackendError(
                        f"OpenVINO failed to profile '{self.path.name}': {str(e).splitlines()[0]}"
                    ) from None
                if k == 0:
                    continue
                for p in req.get_profiling_info():
                    if str(p.status).endswith("EXECUTED"):
                        total[p.node_name] = (
                            total.get(p.node_name, 0.0) + p.real_time.total_seconds()
                        )
                        info[p.node_name] = p
            runtime = _runtime_layers(compiled)
        out = []
        for name, seconds in total.items():
            p = info[name]
            precision, fused = runtime.get(name, ("", ()))
            out.append(
                LayerTime(
                    name=name,
                    op_type=str(p.node_type),
                    kernel=str(p.exec_type),
                    precision=precision,
                    ms=1e3 * seconds / max(runs, 1),
                    fused=tuple(f for f in fused if f != name),
                )
            )
        return out


def _runtime_layers(compiled: Any) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Runtime layer name → (its runtime precision, the original layers fused into it),
    from the compiled model's execution graph."""
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()

        def get(key: str, rt: Any = rt) -> str:
            try:
                return str(rt[key].astype(str)) if key in rt else ""
            except Exception:  # a value of another type: read it as text
                return str(rt[key])

        names = tuple(n for n in get("originalLayersNames").split(",") if n)
        out[op.get_friendly_name()] = (get("runtimePrecision"), names)
    return out


def ov_message(e: Exception) -> str:
    """The line of an OpenVINO exception that says what went wrong: its messages start
    with "Exception from src/…cpp:N:" lines that name only where it was raised."""
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    useful = [s for s in lines if not s.startswith("Exception from")]
    return (useful or lines or [type(e).__name__])[-1]


class OVQueue:
    """``RequestQueue`` over OpenVINO's ``AsyncInferQueue``."""

    def __init__(self, session: OVSession, feeds: Feed) -> None:
        ov = openvino_module()
        self._session = session
        self._feeds = feeds
        compiled = session.compiled_for(feeds)
        self.size = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        streams = compiled.get_property("NUM_STREAMS")
        self.what = f"{self.size} OpenVINO infer requests, {streams} streams"
        self._queue = ov.AsyncInferQueue(compiled, self.size)
        self._queue.set_callback(lambda request, done: done())

    def start(self, done: Any) -> None:
        self._queue.start_async(self._feeds, done)

    def wait_all(self) -> None:
        self._queue.wait_all()

    def close(self) -> None:
        self._queue.wait_all()
        self._session.close()
