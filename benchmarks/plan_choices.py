"""The placement and precision choices in quantship's ONNX Runtime and OpenVINO plans,
each measured against the alternative on the same model, calibration table and held-out
data: fidelity in the backend's own runtime, latency interleaved in one run.

    python benchmarks/plan_choices.py [--models resnet18,mobilenetv2,detector640]

Variants (each changes one thing in the shipped plan):
- onnxruntime: graph outputs of Conv left float (no Q after a detector's heads);
- openvino: quantization not moved above Concat; symmetric int8 activations; SiLU's Mul
  quantized (both inputs, as ONNX Runtime's plan does).

The variants are made by swapping the backend module's ``RULES`` for the duration of
one plan: the same planner, one rule changed. Results: benchmarks/results/plan_choices.{json,md}.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import WORK, machine, md_table, parser, prepare, write_results

THREADS = 2


@contextlib.contextmanager
def rules_of(module: Any, rules: Any) -> Iterator[None]:
    saved = module.RULES
    module.RULES = rules
    try:
        yield
    finally:
        module.RULES = saved


def variants() -> list[tuple[str, str, Any, Any]]:
    """(label, backend, backend module, rules)."""
    from quantship.backends import onnxruntime as qort
    from quantship.backends import openvino as qov
    from quantship.backends.op_rules import binary_check
    from quantship.backends.planning import OpRule

    return [
        ("ort plan", "onnxruntime", qort, qort.RULES),
        (
            "ort: graph outputs float",
            "onnxruntime",
            qort,
            replace(qort.RULES, quantize_graph_outputs=False),
        ),
        ("ov plan", "openvino", qov, qov.RULES),
        (
            "ov: not above Concat",
            "openvino",
            qov,
            replace(qov.RULES, hoist=qov.RULES.hoist - {"Concat"}),
        ),
        (
            "ov: symmetric int8",
            "openvino",
            qov,
            replace(qov.RULES, act_dtype="int8", symmetric=True),
        ),
        (
            "ov: Mul quantized",
            "openvino",
            qov,
            replace(
                qov.RULES,
                ops={
                    **qov.RULES.ops,
                    "Mul": OpRule("compute", act_inputs=(0, 1), check=binary_check),
                },
            ),
        ),
    ]


def main() -> int:
    from quantship.backends import registry
    from quantship.backends.base import Artifact, PlanOptions, SessionSettings
    from quantship.bench.fidelity import FidelityMeter
    from quantship.bench.run import Candidate, bench_candidates
    from quantship.bench.timing import BenchSettings
    from quantship.calibration.runner import calibrate
    from quantship.calibration.sources import open_data
    from quantship.exporter.pipeline import build_artifact
    from quantship.exporter.source import load_float_model
    from quantship.ui import SILENT

    ap = parser(__doc__)
    ap.add_argument("--duration", type=float, default=10.0, help="timed seconds per variant")
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
        ref_b = registry.available("onnxruntime")[0][0]
        float_art = Artifact(
            "onnxruntime", "onnx", paths["model"].parent, (paths["model"].name,), "float"
        )
        ref = ref_b.session(float_art, settings)
        ref_out = [ref.run(f) for f in held]
        root = WORK / "plan-choices" / name
        shutil.rmtree(root, ignore_errors=True)
        cands: list[Candidate] = []
        fid: dict[str, float] = {}
        backends: dict[str, Any] = {}
        for label, bname, module, rules in chosen:
            b = registry.available(bname)[0][0]
            backends[bname] = b
            with rules_of(module, rules):
                art, _ = build_artifact(
                    b, fm, table, PlanOptions(), root / label.replace(" ", "_"), SILENT
                )
            s = b.session(art, settings)
            meter = FidelityMeter(fm.outputs)
            for f, out in zip(held, ref_out, strict=True):
                meter.update(out, s.run(f))
            fid[label] = 1.0 - meter.result(str(paths["held"])).cosine
            cands.append(Candidate(label, b, art))
            print(f"[{name}] {label}: 1 - cosine {fid[label]:.5f}", flush=True)
        for bname, b in backends.items():
            # The float model in each runtime, as every INT8 figure is compared in its own.
            cands.insert(0, Candidate(f"float ({bname})", b, float_art))
        print(f"[{name}] timing {len(cands)} candidates, interleaved ...", flush=True)
        stats = bench_candidates(
            cands, fm.inputs, BenchSettings(duration=args.duration, threads=THREADS)
        )
        p50 = {st.label: st.p50_ms for st in stats}
        for label, bname, _, _ in chosen:
            plan = "ort plan" if bname == "onnxruntime" else "ov plan"
            r = {
                "model": name,
                "variant": label,
                "backend": bname,
                "one_minus_cosine": fid[label],
                "p50_ms": p50[label],
                "p50_vs_plan": p50[label] / p50[plan],
                "p50_float_ms": p50[f"float ({bname})"],
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
        f"Machine: {machine()}, {THREADS} threads, batch 1. Fidelity: 1 − cosine to float on "
        f"{args.held} held-out images, in the backend's own runtime. p50 vs plan: the variant's "
        "p50 over the shipped plan's, timed interleaved in the same run (> 1: the variant is slower).\n\n"
        + md_table(
            ["model", "variant", "1 − cosine", "p50 ms", "p50 vs plan", "float p50 ms"], rows
        )
    )
    write_results(
        "plan_choices", {"machine": machine(), "args": vars(args), "results": results}, md
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
