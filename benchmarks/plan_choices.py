"""The placement and precision choices in quantship's ONNX Runtime and OpenVINO plans,
each measured against the alternative on the same model, calibration table and held-out
data: fidelity in the backend's own runtime, latency interleaved in one run.

    python benchmarks/plan_choices.py [--models resnet18,mobilenetv2,detector640]

Variants (each changes one thing in the shipped plan):
- onnxruntime: graph outputs of Conv left float (no Q after a detector's heads);
- openvino: quantization not moved above Concat; symmetric int8 activations; SiLU's Mul
  quantized (both inputs, as ONNX Runtime's plan does).

Each variant is a backend instance made with the rules changed in one place: the same
planner, one rule changed. Every runtime's float options (its default precision and
every other one it has here) are timed beside them. Results:
benchmarks/results/plan_choices.{json,md}.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import WORK, machine, machine_line, md_table, parser, prepare, write_results

THREADS = 2


def variants() -> list[tuple[str, Any]]:
    """(label, a backend instance with its rules)."""
    from quantship.backends import onnxruntime_rules as qort
    from quantship.backends import openvino_rules as qov
    from quantship.backends.onnxruntime import OnnxRuntimeBackend
    from quantship.backends.op_rules import binary_check
    from quantship.backends.openvino import OpenVINOBackend
    from quantship.backends.planning import OpRule

    ort, ov = OnnxRuntimeBackend, OpenVINOBackend
    mul = OpRule("compute", act_inputs=(0, 1), check=binary_check)
    return [
        ("ort plan", ort()),
        ("ort: graph outputs float", ort(replace(qort.RULES, quantize_graph_outputs=False))),
        ("ov plan", ov()),
        ("ov: not above Concat", ov(replace(qov.RULES, hoist=qov.RULES.hoist - {"Concat"}))),
        ("ov: symmetric int8", ov(replace(qov.RULES, act_dtype="int8", symmetric=True))),
        ("ov: Mul quantized", ov(replace(qov.RULES, ops={**qov.RULES.ops, "Mul": mul}))),
    ]


def main() -> int:
    from quantship.backends.base import Artifact, PlanOptions, SessionSettings
    from quantship.backends.onnxruntime import OrtSession
    from quantship.calibration.runner import calibrate
    from quantship.calibration.sources import open_data
    from quantship.exporter.pipeline import build_artifact
    from quantship.exporter.source import load_float_model
    from quantship.measure.fidelity import FidelityMeter
    from quantship.measure.run import Candidate, bench_candidates, float_candidates
    from quantship.measure.timing import BenchSettings
    from quantship.ui import SILENT

    ap = parser(__doc__)
    ap.add_argument(
        "--duration", type=float, default=10.0, help="timed seconds, all variants interleaved"
    )
    args = ap.parse_args()
    results: list[dict[str, Any]] = []
    rows: list[list[str]] = []
    settings = SessionSettings(threads=THREADS)
    chosen = variants()
    for name in args.models.split(","):
        paths = prepare(name, args.samples, args.held)
        fm, data, _ = load_float_model(
            paths["model"], paths["calib"], input_shapes=None, images=None, weights=None
        )
        print(f"[{name}] calibrating ...", flush=True)
        assert data is not None
        table = calibrate(fm, data, samples=args.samples, histograms=True)
        held = list(open_data(paths["held"], fm.inputs, role="held-out").samples())
        float_art = Artifact("", "onnx", paths["model"].parent, (paths["model"].name,), "float")
        with OrtSession(paths["model"], settings) as ref:  # the fp32 reference
            ref_out = [ref.run(f) for f in held]
        root = WORK / "plan-choices" / name
        shutil.rmtree(root, ignore_errors=True)
        cands: list[Candidate] = []
        fid: dict[str, float] = {}
        runtimes: dict[str, Any] = {}
        for label, b in chosen:
            runtimes.setdefault(b.name, b)
            art, _ = build_artifact(
                b, fm, table, PlanOptions(), root / label.replace(" ", "_"), SILENT
            )
            meter = FidelityMeter(fm.outputs)
            with b.session(art, settings) as s:
                for f, out in zip(held, ref_out, strict=True):
                    meter.update(out, s.run(f))
            fid[label] = 1.0 - meter.result(str(paths["held"])).cosine
            cands.append(Candidate(label, b, art, variant=label))
            print(f"[{name}] {label}: 1 - cosine {fid[label]:.5f}", flush=True)
        floats = float_candidates(float_art, list(runtimes.values()))
        cands = floats + cands
        print(f"[{name}] timing {len(cands)} candidates, interleaved ...", flush=True)
        stats = bench_candidates(
            cands, fm.inputs, BenchSettings(duration=args.duration, threads=THREADS)
        )
        p50 = {st.label: st.p50_ms for st in stats}
        for label, b in chosen:
            plan = "ort plan" if b.name == "onnxruntime" else "ov plan"
            own = [c.label for c in floats if c.backend.name == b.name]
            fastest = min(own, key=lambda k: p50[k])
            r = {
                "model": name,
                "variant": label,
                "backend": b.name,
                "one_minus_cosine": fid[label],
                "p50_ms": p50[label],
                "p50_vs_plan": p50[label] / p50[plan],
                "fastest_float": fastest,
                "p50_float_ms": p50[fastest],
            }
            results.append(r)
            rows.append(
                [
                    name,
                    label,
                    f"{fid[label]:.2e}",
                    f"{p50[label]:.3f}",
                    f"{r['p50_vs_plan']:.3f}",
                    f"{r['p50_float_ms']:.3f}",
                ]
            )
            print(rows[-1], flush=True)
    md = (
        "# Plan choices, each against its alternative\n\n"
        f"Command: `python benchmarks/plan_choices.py --models {args.models} --samples {args.samples}`\n\n"
        f"Machine: {machine_line(machine())}, {THREADS} threads, batch 1. Fidelity: 1 − cosine "
        f"to the fp32 model on {args.held} held-out images, each variant in its backend's own "
        "runtime as a user compiles it. p50 vs plan: the variant's p50 over the shipped plan's, "
        "timed interleaved in the same run (> 1: the variant is slower). Fastest float: the "
        "runtime's fastest float precision here, timed in the same run.\n\n"
        + md_table(
            ["model", "variant", "1 − cosine", "p50 ms", "p50 vs plan", "fastest float p50 ms"],
            rows,
        )
    )
    write_results(
        "plan_choices", {"machine": machine(), "args": vars(args), "results": results}, md
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
