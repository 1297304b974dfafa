"""TensorRT on the GPU: building an engine from a QDQ (or float) ONNX model with
TensorRT's Python API, and running one, with device buffers, a stream and CUDA events.
Everything here needs ``tensorrt`` and ``cuda-python``; ``engine_unavailable`` says
why not where they or a GPU are missing."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx

from quantship.backends.base import BaseSession, LayerTime, SessionSettings, ShapeRanges
from quantship.backends.tensorrt_shapes import engine_profiles
from quantship.errors import BackendError
from quantship.types import Feed, Precision


def _cudart() -> Any:
    """cuda-python's runtime bindings: ``cuda.bindings.runtime`` from 12.6 on,
    ``cuda.cudart`` before."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        from cuda import cudart as runtime
    return runtime


def engine_unavailable() -> str | None:
    """None when an engine can be built and run here, else why not."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed (pip install 'quantship[tensorrt]' on a machine with an NVIDIA GPU)"
    try:
        cudart = _cudart()
    except ImportError:
        return "cuda-python is not installed (pip install 'quantship[tensorrt]')"
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count == 0:
        return "no NVIDIA GPU is visible"
    return None


def fastest_float_layers() -> Precision:
    """fp16 where the GPU has fast fp16 (what trtexec users pass, --int8 --fp16), else
    fp32."""
    import tensorrt as trt

    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    return "fp16" if builder.platform_has_fast_fp16 else "fp32"


def _gpu() -> dict[str, str]:
    cudart = _cudart()
    _, prop = cudart.cudaGetDeviceProperties(0)
    name = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
    return {"gpu": name.strip("\x00 "), "compute_capability": f"{prop.major}.{prop.minor}"}


def build_engine(
    qdq_path: Path,
    engine_path: Path,
    inputs: list[dict[str, Any]],
    *,
    float_precision: Precision | None = None,
    float_layers: Precision = "fp32",
    max_batch: int = 32,
    shapes: ShapeRanges | None = None,
) -> dict[str, Any]:
    """Build a serialized engine with TensorRT's Python API (ONNX parser, builder
    config, timing cache beside the engine so a rebuild is fast and repeatable).
    ``float_precision`` None: an INT8 QDQ model, its float layers (those between no
    Q/DQ pair) in ``float_layers``; "fp32"/"fp16": a float model's engine at that
    precision (a baseline)."""
    profiles = engine_profiles(inputs, max_batch, shapes)
    reason = engine_unavailable()
    if reason is not None:
        raise BackendError(f"cannot build a TensorRT engine here: {reason}")
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # A QDQ model with fp32 float layers is built strongly typed: precisions come from
    # the Q/DQ nodes and the model's types, and precision flags must not be set. Float
    # layers in fp16 (trtexec --int8 --fp16), and a float baseline in fp16, are the
    # builder's precision flags on a weakly typed network.
    strongly_typed = float_precision is None and float_layers == "fp32"
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(qdq_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT's ONNX parser rejected '{qdq_path}': {errors}")
    config = builder.create_builder_config()
    # Layer names, tactics and formats stay readable to the engine inspector (profile).
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if float_precision is None and float_layers == "fp16":
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_flag(trt.BuilderFlag.FP16)
    elif float_precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif float_precision == "fp32":
        # TF32 is on by default on Ampere and later; an fp32 baseline must be fp32.
        config.clear_flag(trt.BuilderFlag.TF32)
    cache_path = engine_path.with_suffix(".timing-cache")
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    # Dynamic dimensions need an optimization profile (min/opt/max per input: batch 1
    # to max_batch tuned for 1, the latency case; sequence lengths over the calibrated
    # range, or --shapes); a static model must not get an empty one.
    if profiles:
        profile = builder.create_optimization_profile()
        for name, bounds in profiles.items():
            profile.set_shape(name, *bounds)
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError("TensorRT failed to build the engine (see its log above)")
    engine_path.write_bytes(bytes(serialized))
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    info = {"tensorrt": trt.__version__, **_gpu(), "host": platform.node(), "max_batch": max_batch,
            "profiles": {k: {"min": v[0], "opt": v[1], "max": v[2]} for k, v in profiles.items()}}  # fmt: skip
    if float_precision is None:
        info["float_layers"] = float_layers
    engine_path.with_suffix(".json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info


class TensorRTSession(BaseSession):
    """An engine on the GPU: buffers allocated once per input shape, runs on one stream;
    ``device_latency_ms`` times ``execute_async_v3`` with CUDA events. ``close`` frees
    the device buffers, the stream, the events and the engine."""

    device_clock = True

    def __init__(self, engine_path: Path, settings: SessionSettings) -> None:
        reason = engine_unavailable()
        if reason is not None:
            raise BackendError(f"cannot run the TensorRT engine here: {reason}")
        import tensorrt as trt

        cudart = _cudart()
        self.trt, self.cudart = trt, cudart
        meta_path = engine_path.with_suffix(".json")
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        here = {"tensorrt": trt.__version__, **_gpu()}
        for key in ("tensorrt", "gpu", "compute_capability"):
            if key in meta and meta[key] != here[key]:
                raise BackendError(
                    f"'{engine_path}' was built for {key} {meta[key]!r}; this machine has {here[key]!r}. "
                    "Engines are specific to the TensorRT version and GPU: rebuild it here with "
                    "`quantship build-engine`"
                )
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise BackendError(
                f"TensorRT cannot deserialize '{engine_path}'; rebuild it with `quantship build-engine`"
            )
        self.context = self.engine.create_execution_context()
        _, self.stream = cudart.cudaStreamCreate()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self._shape_key: tuple[Any, ...] | None = None
        self._buffers: dict[str, tuple[int, npt.NDArray[Any]]] = {}
        self._events: list[Any] = []
        self._graphs: list[Any] = []

    def close(self) -> None:
        cudart = self.cudart
        for ptr, _ in self._buffers.values():
            cudart.cudaFree(ptr)
        self._buffers = {}
        for g in self._graphs:
            cudart.cudaGraphExecDestroy(g)
        self._graphs = []
        for e in self._events:
            cudart.cudaEventDestroy(e)
        self._events = []
        if getattr(self, "stream", None) is not None:
            cudart.cudaStreamDestroy(self.stream)
            self.stream = None
        self.context = None
        self.engine = None

    def _prepare(self, feeds: Feed) -> None:
        key = tuple((n, feeds[n].shape) for n in self.inputs)
        if key == self._shape_key:
            return
        for ptr, _ in self._buffers.values():
            self.cudart.cudaFree(ptr)
        self._buffers = {}
        for n in self.inputs:
            self.context.set_input_shape(n, feeds[n].shape)
        for n in self.inputs + self.outputs:
            shape = tuple(self.context.get_tensor_shape(n))
            dtype = np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(n)))
            host = np.empty(shape, dtype)
            _, ptr = self.cudart.cudaMalloc(max(host.nbytes, 1))
            self.context.set_tensor_address(n, ptr)
            self._buffers[n] = (ptr, host)
        self._shape_key = key

    def run(self, feeds: Feed) -> list[npt.NDArray[Any]]:
        cudart = self.cudart
        self._prepare(feeds)
        h2d, d2h = (
            cudart.cudaMemcpyKind.cudaMemcpyHostToDevice,
            cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost,
        )
        for n in self.inputs:
            ptr, host = self._buffers[n]
            src = np.ascontiguousarray(feeds[n], dtype=host.dtype)
            cudart.cudaMemcpyAsync(ptr, src.ctypes.data, src.nbytes, h2d, self.stream)
        self.context.execute_async_v3(self.stream)
        for n in self.outputs:
            ptr, host = self._buffers[n]
            cudart.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, d2h, self.stream)
        cudart.cudaStreamSynchronize(self.stream)
        return [self._buffers[n][1].copy() for n in self.outputs]

    def profile(self, feeds: Feed, runs: int) -> list[LayerTime]:
        from quantship.backends.tensorrt_profile import engine_profile

        return engine_profile(self, feeds, runs)

    def device_latency_ms(
        self, feeds: Feed, warmup: int, iterations: int, cuda_graph: bool = False
    ) -> list[float]:
        """GPU time of each inference, between CUDA events on the stream (inputs stay on
        the device; copies are not timed). With ``cuda_graph`` the enqueue is captured
        once and replayed, removing launch overhead."""
        cudart = self.cudart
        self.run(feeds)  # uploads the inputs, sizes the buffers
        graph_exec = None
        if cuda_graph:
            cudart.cudaStreamBeginCapture(
                self.stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal
            )
            self.context.execute_async_v3(self.stream)
            _, graph = cudart.cudaStreamEndCapture(self.stream)
            _, graph_exec = cudart.cudaGraphInstantiate(graph, 0)
            cudart.cudaGraphDestroy(graph)
            self._graphs.append(graph_exec)

        def launch() -> None:
            if graph_exec is not None:
                cudart.cudaGraphLaunch(graph_exec, self.stream)
            else:
                self.context.execute_async_v3(self.stream)

        for _ in range(warmup):
            launch()
        cudart.cudaStreamSynchronize(self.stream)
        _, start = cudart.cudaEventCreate()
        _, end = cudart.cudaEventCreate()
        self._events += [start, end]
        out = []
        for _ in range(iterations):
            cudart.cudaEventRecord(start, self.stream)
            launch()
            cudart.cudaEventRecord(end, self.stream)
            cudart.cudaEventSynchronize(end)
            _, ms = cudart.cudaEventElapsedTime(start, end)
            out.append(float(ms))
        return out


class FloatEngineSession(BaseSession):
    """The float model as a TensorRT engine at fp32 or fp16 (a baseline), built in a
    temporary folder at the first run of each shape its feeds have other than the batch
    (a dynamic batch spans 1 … 32): ``bench --lengths`` gets one engine per length."""

    device_clock = True

    def __init__(self, model_path: Path, precision: Precision, settings: SessionSettings) -> None:
        import tempfile

        self.model_path, self.precision, self.settings = model_path, precision, settings
        self._tmp = tempfile.TemporaryDirectory()
        self._inners: dict[tuple[Any, ...], TensorRTSession] = {}

    def _session(self, feeds: Feed) -> TensorRTSession:
        key = tuple((n, feeds[n].shape[1:]) for n in sorted(feeds))
        if key not in self._inners:
            proto = onnx.load(str(self.model_path), load_external_data=False)
            inputs = []
            for vi in proto.graph.input:
                if vi.name not in feeds:
                    continue
                dims = [
                    d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                    for d in vi.type.tensor_type.shape.dim
                ]
                inputs.append(
                    {"name": vi.name, "shape": dims, "profile": list(feeds[vi.name].shape)}
                )
            engine = Path(self._tmp.name) / f"float-{len(self._inners)}.engine"
            build_engine(self.model_path, engine, inputs, float_precision=self.precision)
            self._inners[key] = TensorRTSession(engine, self.settings)
        return self._inners[key]

    def run(self, feeds: Feed) -> list[npt.NDArray[Any]]:
        return self._session(feeds).run(feeds)

    def device_latency_ms(self, feeds: Feed, warmup: int, iterations: int) -> list[float]:
        return self._session(feeds).device_latency_ms(feeds, warmup, iterations)

    def profile(self, feeds: Feed, runs: int) -> list[LayerTime]:
        return self._session(feeds).profile(feeds, runs)

    def close(self) -> None:
        for inner in self._inners.values():
            inner.close()
        self._inners.clear()
        self._tmp.cleanup()
