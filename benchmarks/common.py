"""Shared helpers for the benchmark scripts: models and data, memory-watched workers,
fidelity and interleaved latency of many artifacts, and result files.

Every tool's quantization runs in its own subprocess, watched from here every 20 ms: a
child past the memory limit is killed, so that a calibrator that keeps every activation
of every sample cannot take the machine down. Memory is reported two ways: anonymous
memory (``RssAnon``, what the process itself holds: the figure compared) and resident
memory (``RSS``, which also counts pages of files the process reads, such as the
calibration data, that the kernel can drop at any time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
WORK = Path(os.environ.get("QUANTSHIP_BENCH_WORK", "/tmp/quantship-bench")).resolve()


@dataclass(frozen=True)
class Watched:
    ok: bool
    returncode: int | None
    wall_s: float
    peak_rss_mb: float
    peak_anon_mb: float
    killed: str | None
    report: dict[str, Any]
    stderr_tail: str


def run_watched(
    args: list[str], limit_mb: float, timeout_s: float, command: list[str] | None = None
) -> Watched:
    """Run ``python benchmarks/worker.py *args`` (or ``command``); kill it past
    ``limit_mb`` of RSS.

    The job runs in a fresh temporary working directory, removed afterwards: some
    tools leave files in the current directory (ONNX Runtime's quantizer writes
    ``<uuid>.data`` there when it is killed mid-way), and they must not land in
    the checkout."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="quantship-job-") as cwd:
        return _run_watched(args, limit_mb, timeout_s, command, cwd)


def _run_watched(
    args: list[str], limit_mb: float, timeout_s: float, command: list[str] | None, cwd: str
) -> Watched:
    import psutil

    cmd = command or [sys.executable, str(ROOT / "worker.py"), *args]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
    ps = psutil.Process(proc.pid)
    peak = 0.0
    peak_anon = 0.0
    killed = None
    while proc.poll() is None:
        try:
            procs = [ps, *ps.children(recursive=True)]
            rss = sum(p.memory_info().rss for p in procs)
            anon = sum(_anon_bytes(p.pid) for p in procs)
        except psutil.Error:
            rss = anon = 0
        peak = max(peak, rss / 2**20)
        peak_anon = max(peak_anon, anon / 2**20)
        if peak_anon > limit_mb:
            killed = f"killed at {limit_mb / 1024:.0f} GB of memory after {time.perf_counter() - t0:.0f} s"
            proc.kill()
            break
        if time.perf_counter() - t0 > timeout_s:
            killed = f"killed after {timeout_s:.0f} s"
            proc.kill()
            break
        time.sleep(0.02)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    report: dict[str, Any] = {}
    for line in out.splitlines()[::-1]:
        if line.startswith("{"):
            report = json.loads(line)
            break
    if "peak_rss_mb" in report:
        peak = max(peak, float(report["peak_rss_mb"]))
    ok = killed is None and proc.returncode == 0 and (bool(report) or command is not None)
    return Watched(ok, proc.returncode, wall, peak, peak_anon, killed, report, err[-2000:])


def _anon_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


CNNS = "resnet18,mobilenetv2,detector640"


def parser(
    doc: str | None, models: str = CNNS, samples: int = 256, held: int = 32
) -> argparse.ArgumentParser:
    """The options every model benchmark takes: which models, how many calibration
    and held-out samples; the script adds its own."""
    ap = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", default=models)
    ap.add_argument("--samples", type=int, default=samples)
    ap.add_argument("--held", type=int, default=held)
    return ap


# Another input size of a fully convolutional example: (its architecture, the size).
ALIASES = {"detector320": ("detector640", 320)}


def prepare(name: str, n_calib: int, n_held: int) -> dict[str, Path]:
    """Float ONNX model (trained on a proxy task from real images, BN statistics from
    real images at its input size: see pretrain.py), calibration and held-out image
    sets, cached under WORK by name and sizes."""
    from pretrain import pretrain

    from quantship import examples

    arch, size = ALIASES.get(
        name, (name, examples.MODELS[name][1] if name in examples.MODELS else 0)
    )
    if not size:
        raise SystemExit(
            f"unknown model {name!r}; known: {', '.join([*examples.MODELS, *ALIASES])}"
        )
    d = WORK / f"{name}-trained-{n_calib}-{n_held}"
    paths = {"model": d / "float.onnx", "calib": d / "calib.npz", "held": d / "held.npz"}
    if all(p.exists() for p in paths.values()):
        return paths
    d.mkdir(parents=True, exist_ok=True)
    print(
        f"[{name}] preparing model and {n_calib}+{n_held} real-image samples at {size}x{size}",
        flush=True,
    )
    bn_images = examples.sample_images(64 if size <= 256 else 32, size, seed=1)
    net = examples.calibrate_batchnorm(
        pretrain(arch, log=lambda m: print(m, flush=True)), bn_images
    )
    examples.to_onnx(net, size, str(paths["model"]))
    # Calibration data written in chunks, uncompressed: both tools read it memory-mapped.
    _save_images(paths["calib"], n_calib, size, seed=2)
    _save_images(paths["held"], n_held, size, seed=3)
    return paths


def _save_images(path: Path, n: int, size: int, seed: int) -> None:
    from quantship import examples

    arr = np.lib.format.open_memmap(
        str(path) + ".npy", mode="w+", dtype=np.float32, shape=(n, 3, size, size)
    )
    for i in range(0, n, 32):
        k = min(32, n - i)
        arr[i : i + k] = examples.sample_images(k, size, seed=seed * 1000 + i)
    arr.flush()
    del arr
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        zf.write(str(path) + ".npy", "images.npy")
    Path(str(path) + ".npy").unlink()


def fidelity(
    float_model: Path, models: dict[str, Path], held: Path, threads: int
) -> dict[str, dict[str, Any]]:
    from quantship.backends.base import SessionSettings
    from quantship.backends.onnxruntime import OrtSession
    from quantship.calibration.sources import open_data
    from quantship.measure.fidelity import FidelityMeter

    settings = SessionSettings(threads=threads)
    ref = OrtSession(float_model, settings)
    sessions = {k: OrtSession(p, settings) for k, p in models.items()}
    import onnx

    outs = [o.name for o in onnx.load(str(float_model), load_external_data=False).graph.output]
    inp = onnx.load(str(float_model), load_external_data=False).graph.input[0]
    from quantship.exporter.load import InputSpec

    spec = InputSpec(
        inp.name, (None, *[d.dim_value for d in inp.type.tensor_type.shape.dim[1:]]), "float32"
    )
    meters = {k: FidelityMeter(outs) for k in sessions}
    for feed in open_data(held, [spec], role="held-out").samples():
        r = ref.run(feed)
        for k, s in sessions.items():
            meters[k].update(r, s.run(feed))
    return {k: m.result(str(held)).to_json() for k, m in meters.items()}


def candidate_fidelity(
    model: Path, held: Path, cands: list[Any], threads: int, pooling: str | None = None
) -> tuple[dict[str, Any], dict[str, list[Any]], list[Any]]:
    """Every candidate (float options, INT8 artifacts, peers' files) against the fp32
    model in ONNX Runtime on the held-out samples, each in its own runtime: the
    ``Fidelity`` by candidate key (with ``pooling``, its sentence embeddings' too), each
    candidate's first output per sample, and the reference's."""
    import contextlib

    from quantship.backends.base import SessionSettings
    from quantship.backends.onnxruntime import OrtSession
    from quantship.calibration.sources import open_data
    from quantship.exporter.load import load_model
    from quantship.measure.fidelity import FidelityMeter

    fm = load_model(model)
    meters = {c.key: FidelityMeter(fm.outputs, pooling) for c in cands}
    outs: dict[str, list[Any]] = {c.key: [] for c in cands}
    ref_outs: list[Any] = []
    with contextlib.ExitStack() as stack:
        ref = stack.enter_context(OrtSession(model, SessionSettings(threads=threads)))
        sessions = {
            c.key: stack.enter_context(c.backend.session(c.artifact, c.settings(threads)))
            for c in cands
        }
        for feed in open_data(held, fm.inputs, role="held-out").samples():
            r = ref.run(feed)
            ref_outs.append(r[0])
            for k, s in sessions.items():
                o = s.run(feed)
                meters[k].update(r, o, feed)
                outs[k].append(o[0])
    return {k: m.result(str(held)) for k, m in meters.items()}, outs, ref_outs


def latency(
    float_model: Path, models: dict[str, Path], threads: int, duration: float
) -> list[dict[str, Any]]:
    """Float and every model, interleaved in one run, batch 1."""
    import onnx

    from quantship.backends import registry
    from quantship.backends.base import Artifact
    from quantship.exporter.load import InputSpec
    from quantship.measure.run import Candidate, bench_candidates
    from quantship.measure.timing import BenchSettings

    ort_backend = registry.get("onnxruntime")
    inp = onnx.load(str(float_model), load_external_data=False).graph.input[0]
    spec = InputSpec(
        inp.name, (None, *[d.dim_value for d in inp.type.tensor_type.shape.dim[1:]]), "float32"
    )
    cands = [
        Candidate(
            "float",
            ort_backend,
            Artifact("", "onnx", float_model.parent, (float_model.name,), "float"),
            precision="fp32",
        )
    ]
    for k, p in models.items():
        cands.append(
            Candidate(
                k, ort_backend, Artifact("onnxruntime", "onnx-qdq", p.parent, (p.name,)), variant=k
            )
        )
    settings = BenchSettings(warmup=5, duration=duration, min_iterations=20, threads=threads)
    return [s.to_json() for s in bench_candidates(cands, [spec], settings)]


def machine() -> dict[str, Any]:
    """The CPU, its ISA extensions (which decide the kernels), cores, versions."""
    import onnxruntime

    from quantship.measure.machine import cpu_info

    out: dict[str, Any] = {
        **cpu_info(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
    }
    try:
        import openvino

        out["openvino"] = openvino.get_version()
    except ImportError:
        pass
    return out


def machine_line(m: dict[str, Any]) -> str:
    """One line for a results page: CPU, ISA extensions, cores."""
    return f"{m['cpu']} ({', '.join(m['isa']) or 'no AVX2'}), {m['cores']} cores"


def write_results(stem: str, data: dict[str, Any], markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown)
    print(f"wrote {RESULTS / (stem + '.json')} and {stem}.md")


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def job_summary(w: Watched) -> dict[str, Any]:
    """A watched quantization job as it goes into the results JSON."""
    return {
        "ok": w.ok,
        "wall_s": round(w.wall_s, 2),
        "peak_rss_mb": round(w.peak_rss_mb, 1),
        "peak_anon_mb": round(w.peak_anon_mb, 1),
        "killed": w.killed,
        "report": w.report,
        "error": None if w.ok else w.stderr_tail[-600:],
    }
