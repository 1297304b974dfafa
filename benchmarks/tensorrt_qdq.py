"""The TensorRT-ready QDQ model, verified where TensorRT is not installed: it passes
every TensorRT explicit-quantization rule, and its numbers (symmetric INT8, run in
ONNX Runtime on the CPU) stay close to float on the core benchmark's CNNs. For contrast,
the validator is also run on ONNX Runtime's own quantize_static output at its defaults
(int8, asymmetric), with uint8 activations, and with the options ORT documents for
TensorRT (``ActivationSymmetric``, ``WeightSymmetric``, ``DedicatedQDQPair``). Each of
those is made here; one that fails to be made fails the benchmark.

    python benchmarks/tensorrt_qdq.py [--models resnet18,mobilenetv2,detector640] [--samples 256]

Results: benchmarks/results/tensorrt_qdq.{json,md}. Where TensorRT and a GPU exist, the
export also builds the engine and this script reports its GPU latency.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, machine_line, md_table, parser, prepare, run_watched, write_results

ORT_VARIANTS = {  # label → method, activations, options (worker.py)
    "s8": ("minmax", "s8", ""),
    "u8": ("minmax", "u8", ""),
    "trt": ("minmax", "s8", "trt"),
}


def main() -> int:
    import onnx

    from quantship import api
    from quantship.backends.tensorrt_check import check_tensorrt
    from quantship.backends.tensorrt_engine import engine_unavailable
    from quantship.ui import UI

    ap = parser(__doc__)
    args = ap.parse_args()
    rows, results = [], []
    for name in args.models.split(","):
        paths = prepare(name, args.samples, args.held)
        out = paths["model"].parent / "trt-export"
        print(f"[{name}] export --backend tensorrt ...", flush=True)
        res = api.export(
            paths["model"],
            paths["calib"],
            out,
            backends="onnxruntime,tensorrt",
            held_out=paths["held"],
            samples=args.samples,
            bench=False,
            ui=UI(quiet=True),
        )
        arts = {a["backend"]: a for a in res.manifest["artifacts"]}
        trt_findings = check_tensorrt(onnx.load(str(out / arts["tensorrt"]["path"])))
        broken: dict[str, list[str]] = {}
        for variant, (method, act, opts) in ORT_VARIANTS.items():
            f = paths["model"].parent / f"ort-for-trt-{variant}.onnx"
            print(f"[{name}] ORT quantize_static ({variant}) ...", flush=True)
            job = run_watched(
                ["ort", str(paths["model"]), str(paths["calib"]), str(f), method, act,
                 str(args.samples)] + ([opts] if opts else []),
                12 * 1024,
                3600,
            )  # fmt: skip
            if not job.ok or not f.exists():
                raise SystemExit(
                    f"[{name}] ORT quantize_static ({variant}) failed: "
                    f"{job.killed or job.stderr_tail[-300:]}"
                )
            findings = check_tensorrt(onnx.load(str(f)))
            broken[variant] = sorted({x.rule for x in findings if x.severity == "error"})
        r: dict[str, Any] = {
            "model": name,
            "tensorrt_qdq_cosine_in_onnxruntime": arts["tensorrt"]["fidelity"]["cosine"],
            "onnxruntime_plan_cosine": arts["onnxruntime"]["fidelity"]["cosine"],
            "tensorrt_qdq_findings": [str(f) for f in trt_findings],
            "ort_quantize_static_s8_errors": broken["s8"],
            "ort_quantize_static_u8_errors": broken["u8"],
            "ort_quantize_static_trt_options_errors": broken["trt"],
            "engine": arts["tensorrt"]["metadata"]["engine"],
        }
        results.append(r)
        rows.append(
            [
                name,
                f"{r['tensorrt_qdq_cosine_in_onnxruntime']:.4f}",
                f"{r['onnxruntime_plan_cosine']:.4f}",
                str(len(trt_findings)),
                ", ".join(r["ort_quantize_static_s8_errors"]) or "-",
                ", ".join(r["ort_quantize_static_u8_errors"]) or "-",
                ", ".join(r["ort_quantize_static_trt_options_errors"]) or "-",
                "built" if r["engine"]["built"] else "not built",
            ]
        )
        print(rows[-1], flush=True)
    reason = engine_unavailable()
    md = (
        "# TensorRT-ready QDQ models\n\n"
        + (
            f"Command: `python benchmarks/tensorrt_qdq.py --models {args.models} --samples {args.samples}`\n\n"
            f"Machine: {machine_line(machine())}. Engine: {reason or 'built where listed'}.\n\n"
            "Cosine: the symmetric-INT8 QDQ model run in ONNX Runtime (CPU) against float, on "
            f"{args.held} held-out images; beside it, quantship's ONNX Runtime plan (asymmetric uint8). "
            "Findings: rules of TensorRT's explicit quantization the model breaks (quantship's "
            "validator); for ORT's own quantize_static outputs, the rules broken.\n\n"
        )
        + md_table(
            [
                "model",
                "TRT QDQ cosine (ORT CPU)",
                "ORT plan cosine",
                "TRT findings",
                "ORT quantize_static s8 breaks",
                "ORT quantize_static u8 breaks",
                "ORT with its TensorRT options breaks",
                "engine",
            ],
            rows,
        )
    )
    write_results("tensorrt_qdq", {"machine": machine(), "engine": reason, "results": results}, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
