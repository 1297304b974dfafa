"""The backend contract (v2) and the objects passed to and from backends.

A backend is one module implementing ``Backend``: it decides *where* and *how* to
quantize (``plan``), turns the QDQ model into its runtime's artifact (``compile``) and
runs that artifact, or the float model at a float precision (``session``). It
*declares* what it can do (``capabilities``): core code never asks for a backend by
name nor probes for methods. The calibration table it plans from is shared.

Members, all required (``BaseBackend`` gives the optional ones a default):

- ``name``, ``extra`` (the pip extra that brings its runtime), ``formats``;
- ``available()`` → None, or why its runtime cannot be used here and how to fix it;
- ``version()``; ``capabilities()`` → ``Capabilities`` on this machine;
- ``plan(model, table, options)`` → ``QuantPlan``, from the rules the instance holds;
- ``compile(qdq, out_dir, model)`` → ``Artifact``;
- ``describe(artifact, settings)`` → what actually runs, named for tables;
- ``session(artifact, settings)`` → a ``Session`` (a context manager that frees what
  it holds), for an INT8 artifact or the float model (``settings.precision``);
- ``qdq_session(qdq, model, settings)`` → a session on a QDQ model as the target
  runtime runs it, without writing an artifact (the accuracy guard's evaluations);
- ``build(artifact, max_batch, float_layers)`` → the artifact with its engine (float
  layers at ``float_layers``, default the runtime's fastest), and
  ``engine_unavailable()``, where ``engine``;
  ``validate(qdq)`` where ``validator``; ``plan_variants()`` → the other plans worth
  measuring on the target (``variants.PlanVariant``), none by default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, Self, runtime_checkable

import numpy.typing as npt

from quantship.backends.plan_types import ActivationQuant as ActivationQuant
from quantship.backends.plan_types import ConstantQuant as ConstantQuant
from quantship.backends.plan_types import FloatNode as FloatNode
from quantship.backends.plan_types import PlanOptions as PlanOptions
from quantship.backends.plan_types import QuantPlan as QuantPlan
from quantship.backends.plan_types import Use as Use
from quantship.errors import BackendError
from quantship.types import PRECISIONS, Feed, Precision

if TYPE_CHECKING:
    import onnx

    from quantship.backends.variants import PlanVariant
    from quantship.calibration.table import CalibrationTable
    from quantship.exporter.load import FloatModel

# An engine's shape profile per input: (min, opt, max) shapes (``build-engine --shapes``).
ShapeRanges = dict[str, tuple[list[int], list[int], list[int]]]


@dataclass(frozen=True)
class Artifact:
    """Files a runtime loads, relative to ``root``, with what made them."""

    backend: str
    format: str
    root: Path
    files: tuple[str, ...]
    precision: Literal["int8", "float"] = "int8"
    metadata: Mapping[str, Any] = field(default_factory=dict)
    # What the backend wants the user told about it (an engine not built and how to
    # build it, a runtime setting it needs, how many layers run on integer kernels).
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.files:
            raise ValueError("an artifact has at least one file")

    @property
    def path(self) -> Path:
        """The file a runtime opens."""
        return self.root / self.files[0]

    def size_bytes(self) -> int:
        return sum((self.root / f).stat().st_size for f in self.files if (self.root / f).exists())


@dataclass(frozen=True)
class SessionSettings:
    """How to run: CPU threads (None: the runtime's default), the optimisation goal,
    and for the float model the float precision (None: the runtime's default)."""

    threads: int | None = None
    mode: Literal["latency", "throughput"] = "latency"
    streams: int | None = None  # parallel infer requests in throughput mode
    precision: Precision | None = None

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.mode not in ("latency", "throughput"):
            raise ValueError(f"mode must be latency or throughput, got {self.mode!r}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do on this machine, declared."""

    device: str  # where its artifacts run: "CPU", "GPU"
    # Float precisions it runs the float model in here (empty: it cannot run it here),
    # and the one it picks when told nothing.
    float_precisions: tuple[Precision, ...]
    default_precision: Precision
    runs_here: bool = True  # its INT8 artifacts run natively on this machine
    device_timing: bool = False  # sessions time themselves on the device
    profile: bool = False  # sessions report per-layer kernels and times (profile())
    engine: bool = False  # build(artifact) makes a runtime engine
    validator: bool = False  # validate(qdq) checks the runtime's QDQ rules

    def __post_init__(self) -> None:
        bad = [p for p in self.float_precisions if p not in PRECISIONS]
        if bad:
            raise ValueError(f"unknown float precision(s) {bad}; known: {PRECISIONS}")
        if self.float_precisions and self.default_precision not in self.float_precisions:
            raise ValueError(
                f"default precision {self.default_precision!r} is not among {self.float_precisions}"
            )


@dataclass(frozen=True)
class Finding:
    """A rule of a runtime that a QDQ model breaks, at a node."""

    rule: str
    node: str
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        return f"{self.severity}: [{self.rule}] {self.node}: {self.message}"


@dataclass(frozen=True)
class LayerTime:
    """One layer as the runtime ran it: its name (a runtime layer may fuse several ONNX
    nodes; ``fused`` names the others where the runtime says), its op type, the kernel
    the runtime chose and that kernel's precision as the runtime names it (empty where
    the runtime does not say), and the mean time per run."""

    name: str
    op_type: str
    kernel: str
    precision: str
    ms: float
    fused: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "op_type": self.op_type,
            "kernel": self.kernel,
            "precision": self.precision,
            "ms": round(self.ms, 5),
        }
        if self.fused:
            out["fused"] = list(self.fused)
        return out


@runtime_checkable
class Session(Protocol):
    """A loaded artifact, ready to run feeds of the model's inputs. A context manager:
    leaving it frees what the runtime holds (device buffers, streams, compiled models).
    ``queue`` gives parallel requests for the offline and server scenarios (the
    runtime's own async queue where it has one, else threads); ``profile`` (per-layer
    kernels and times, from a separate profiling load of the same artifact) works where
    the backend's capabilities say;
    ``device_latency_ms`` where the session has a ``device_clock`` (a GPU engine; a
    TensorRT artifact without its engine runs in ONNX Runtime on the CPU and has none)."""

    device_clock: bool

    def run(self, feeds: Feed) -> list[npt.NDArray[Any]]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Session: ...

    def __exit__(self, *exc: object) -> None: ...

    def device_latency_ms(self, feeds: Feed, warmup: int, iterations: int) -> list[float]: ...

    def profile(self, feeds: Feed, runs: int) -> list[LayerTime]: ...

    def queue(self, feeds: Feed, streams: int | None) -> RequestQueue: ...


class RequestQueue(Protocol):
    """Parallel requests on one loaded artifact, for the offline and server scenarios:
    ``start`` begins one run of the queue's feeds and returns at once if a request is
    free (else when one frees up); ``done`` is called, from another thread, when that
    run has finished. ``size`` requests run at a time."""

    size: int
    what: str  # how the requests run, for the table ("4 OpenVINO infer requests")

    def start(self, done: Callable[[], None]) -> None: ...

    def wait_all(self) -> None: ...

    def close(self) -> None: ...


class ThreadQueue:
    """``size`` threads calling ``run`` (a runtime whose sessions may be run from
    several threads at once, as ONNX Runtime's may); 1 by default: its own intra-op
    threads already use the cores."""

    def __init__(self, run: Callable[[], object], size: int, what: str) -> None:
        from concurrent.futures import ThreadPoolExecutor
        from threading import Semaphore

        self.size, self.what = size, what
        self._run = run
        self._free = Semaphore(size)
        self._pool = ThreadPoolExecutor(max_workers=size)
        self._pending: list[Any] = []
        self._error: BaseException | None = None

    def _one(self, done: Callable[[], None]) -> None:
        try:
            self._run()
            done()
        except BaseException as e:  # re-raised in wait_all, on the caller's thread
            self._error = e
        finally:
            self._free.release()

    def start(self, done: Callable[[], None]) -> None:
        if self._error is not None:
            raise self._error
        self._free.acquire()
        self._pending.append(self._pool.submit(self._one, done))

    def wait_all(self) -> None:
        for f in self._pending:
            f.result()
        self._pending.clear()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class BaseSession:
    """Defaults for a ``Session``: nothing to free, no optional modes."""

    device_clock = False

    def run(self, feeds: Feed) -> list[npt.NDArray[Any]]:
        raise NotImplementedError

    def close(self) -> None:
        return None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def device_latency_ms(self, feeds: Feed, warmup: int, iterations: int) -> list[float]:
        raise BackendError("this session has no device clock (see the backend's capabilities)")

    def profile(self, feeds: Feed, runs: int) -> list[LayerTime]:
        raise BackendError("this session has no per-layer profile (see the backend's capabilities)")

    def queue(self, feeds: Feed, streams: int | None) -> RequestQueue:
        """``streams`` threads (default 1) running this session."""
        n = streams or 1
        return ThreadQueue(lambda: self.run(feeds), n, f"{n} thread{'s' if n > 1 else ''}")


class Backend(Protocol):
    """What every backend implements (see the module's docstring)."""

    name: str
    extra: str
    formats: tuple[str, ...]

    def available(self) -> str | None: ...

    def version(self) -> str: ...

    def capabilities(self) -> Capabilities: ...

    def plan(
        self, model: FloatModel, table: CalibrationTable, options: PlanOptions
    ) -> QuantPlan: ...

    def compile(self, qdq: onnx.ModelProto, out_dir: Path, model: FloatModel) -> Artifact: ...

    def describe(self, artifact: Artifact, settings: SessionSettings) -> str: ...

    def session(self, artifact: Artifact, settings: SessionSettings) -> Session: ...

    def qdq_session(
        self, qdq: onnx.ModelProto, model: FloatModel, settings: SessionSettings
    ) -> Session: ...

    def build(
        self,
        artifact: Artifact,
        max_batch: int,
        float_layers: Precision | None = None,
        shapes: ShapeRanges | None = None,
    ) -> Artifact: ...

    def engine_unavailable(self) -> str | None: ...

    def validate(self, qdq: onnx.ModelProto) -> list[Finding]: ...

    def plan_variants(self) -> tuple[PlanVariant, ...]: ...


class BaseBackend:
    """Defaults for the members a backend may not need: no engine to build, no rules to
    validate, QDQ evaluation through a compiled artifact in a temporary folder."""

    name = "base"

    def version(self) -> str:
        return "unknown"

    def qdq_session(
        self, qdq: onnx.ModelProto, model: FloatModel, settings: SessionSettings
    ) -> Session:
        import tempfile

        backend: Any = self
        tmp = tempfile.TemporaryDirectory()
        art = backend.compile(qdq, Path(tmp.name), model)
        return _Owning(backend.session(art, settings), tmp)

    def build(
        self,
        artifact: Artifact,
        max_batch: int,
        float_layers: Precision | None = None,
        shapes: ShapeRanges | None = None,
    ) -> Artifact:
        raise BackendError(f"backend {self.name!r} builds no engine")

    def engine_unavailable(self) -> str | None:
        return f"backend {self.name!r} builds no engine"

    def plan_variants(self) -> tuple[PlanVariant, ...]:
        return ()  # only the rule table

    def validate(self, qdq: onnx.ModelProto) -> list[Finding]:
        return []


class _Owning(BaseSession):
    """A session that also owns a temporary folder, removed on close."""

    def __init__(self, inner: Session, tmp: Any) -> None:
        self.inner, self.tmp = inner, tmp

    def run(self, feeds: Feed) -> list[npt.NDArray[Any]]:
        return self.inner.run(feeds)

    def close(self) -> None:
        self.inner.close()
        self.tmp.cleanup()
