"""Is the float baseline quantship reports the float model the user already has?

Per model, the float model is timed four ways, interleaved in one run (batch 1):
quantship's session for each runtime's default float precision (what ``export`` and
``bench`` report as "(default)"), beside the runtime loaded as a user loads it without
us: OpenVINO ``Core().compile_model(path, "CPU")`` with no configuration at all, and
again after ``reshape`` to batch 1 (static shapes, as quantship compiles), and ONNX
Runtime ``InferenceSession(path)`` with default options. Ratios near 1.0 say the
baseline is the user's; a baseline slower than the plain load would flatter INT8.

    python benchmarks/float_baseline.py [--models resnet18,mobilenetv2,detector640]

Results: benchmarks/results/float_baseline.{json,md}.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, machine_line, md_table, parser, prepare, write_results


def measure(model: Path, threads: int) -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort
    import openvino as ov

    from quantship.backends import registry
    from quantship.backends.base import Artifact, SessionSettings
    from quantship.measure.timing import BenchSettings, measure_interleaved

    core = ov.Core()
    plain = core.compile_model(str(model), "CPU")
    m = core.read_model(str(model))
    shape = [1, *list(m.inputs[0].get_partial_shape().get_min_shape())[1:]]
    m.reshape({m.inputs[0].get_any_name(): shape})
    plain_static = core.compile_model(m, "CPU")
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    name = m.inputs[0].get_any_name()
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    art = Artifact("", "onnx", model.parent, (model.name,), precision="float")
    runners: dict[str, Any] = {}
    labels: dict[str, str] = {}
    sessions = []
    for b in (registry.get("openvino"), registry.get("onnxruntime")):
        caps = b.capabilities()
        # --threads N, as the benchmarks run; and, for ONNX Runtime, no --threads: its
        # default thread count also pins its threads to cores, a setting of its own.
        for n in (threads, None) if b.name == "onnxruntime" else (threads,):
            s = b.session(art, SessionSettings(threads=n, precision=caps.default_precision))
            sessions.append(s)
            label = (
                f"quantship: {b.describe(art, SessionSettings(precision=caps.default_precision))}"
            )
            label += f" (--threads {n})" if n else " (runtime's default threads)"
            runners[label] = lambda s=s: s.run({name: x})
            labels[b.name + ("" if n else ":default")] = label
    req, req_static = plain.create_infer_request(), plain_static.create_infer_request()
    runners["openvino compile_model(path, 'CPU')"] = lambda: req.infer({name: x})
    runners["openvino compile_model, reshaped to batch 1"] = lambda: req_static.infer({name: x})
    runners["onnxruntime InferenceSession(path)"] = lambda: sess.run(None, {name: x})
    stats = measure_interleaved(runners, BenchSettings(warmup=10, duration=20.0), batch=1)
    for s in sessions:
        s.close()
    p50 = {k: v.p50_ms for k, v in stats.items()}
    return {
        "p50_ms": p50,
        "openvino_plain_precision": str(plain.get_property("INFERENCE_PRECISION_HINT")),
        "openvino_plain_threads": int(plain.get_property("INFERENCE_NUM_THREADS")),
        "ratio_openvino_vs_plain": p50[labels["openvino"]]
        / p50["openvino compile_model(path, 'CPU')"],
        "ratio_openvino_vs_plain_static": p50[labels["openvino"]]
        / p50["openvino compile_model, reshaped to batch 1"],
        "ratio_onnxruntime_vs_plain": p50[labels["onnxruntime"]]
        / p50["onnxruntime InferenceSession(path)"],
        "ratio_onnxruntime_default_threads_vs_plain": p50[labels["onnxruntime:default"]]
        / p50["onnxruntime InferenceSession(path)"],
    }


def main() -> int:
    ap = parser(__doc__)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    m = machine()
    results = []
    rows = []
    for name in args.models.split(","):
        paths = prepare(name, args.samples, args.held)
        print(f"[{name}] timing the float model four ways, interleaved ...", flush=True)
        r = {"model": name, **measure(paths["model"], args.threads)}
        results.append(r)
        for label, p50 in r["p50_ms"].items():
            rows.append([name, label, f"{p50:.2f}"])
        rows.append([
            name,
            "**ratios**: quantship OpenVINO / plain, / plain static; quantship ORT "
            "(--threads, default threads) / plain",
            f"{r['ratio_openvino_vs_plain']:.3f}, {r['ratio_openvino_vs_plain_static']:.3f}; "
            f"{r['ratio_onnxruntime_vs_plain']:.3f}, "
            f"{r['ratio_onnxruntime_default_threads_vs_plain']:.3f}",
        ])  # fmt: skip
        print(rows[-1][1], rows[-1][2], flush=True)
    md = (
        "# The float baseline is the user's float model\n\n"
        f"Command: `python benchmarks/float_baseline.py --models {args.models}`\n\n"
        f"Machine: {machine_line(m)}, {args.threads} threads for quantship's sessions; the "
        "plain loads take the runtime's own defaults (OpenVINO here: precision "
        f"{results[0]['openvino_plain_precision']}, "
        f"{results[0]['openvino_plain_threads']} threads). Batch 1, p50 ms, all timed "
        "interleaved in one run per model.\n\n"
        + md_table(["model", "how the float model was loaded", "p50 ms"], rows)
        + "\n"
    )
    write_results("float_baseline", {"args": vars(args), "machine": m, "results": results}, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
