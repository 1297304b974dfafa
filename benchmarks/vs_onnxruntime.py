"""quantship vs ONNX Runtime's own ``quantize_static``, same float model and data.

    python benchmarks/vs_onnxruntime.py                    # all three models, 256 samples
    python benchmarks/vs_onnxruntime.py --models resnet18 --samples 64

For each model (ResNet-18-like and MobileNetV2-like at 224, a YOLOv8n-sized detector
at 640; trained briefly on proxy tasks from real images): quantship (minmax,
percentile, entropy) and ORT ``quantize_static`` (QDQ, per-channel) at its defaults
(MinMax and Entropy, int8 activations) and at its documented best for x86 (uint8
activations, with and without ``quant_pre_process``, which its docs recommend) each
quantize in their own memory-watched process, the whole call timed (model in,
quantized model written). Then every INT8 model and the float model are timed
interleaved in one run (2 threads, batch 1) and compared with float on the held-out
images. The float baseline is ONNX Runtime's CPU provider in fp32: its default and its
only (so fastest) float precision for a float32 model. Results:
benchmarks/results/vs_onnxruntime.{json,md}.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    fidelity,
    job_summary,
    latency,
    machine,
    machine_line,
    md_table,
    parser,
    prepare,
    run_watched,
    write_results,
)

QUANTSHIP = ["minmax", "percentile", "entropy"]
ORT = [  # label, method, activation type, options (see worker.py)
    ("ort minmax s8", "minmax", "s8", ""),
    ("ort entropy s8", "entropy", "s8", ""),
    ("ort minmax u8", "minmax", "u8", ""),
    ("ort minmax u8 + pre_process", "minmax", "u8", "pre"),
]
# ORT's bounded-memory MinMax (CalibMaxIntermediateOutputs=16) is left out: with ORT
# 1.32 it fails with "No data is collected." whenever the sample count is a multiple of
# 16 (the last flush leaves nothing to collect), as with 256 samples here.
DEFAULT_METHOD = "percentile"


def run_model(
    name: str, samples: int, held: int, threads: int, limit_mb: float, duration: float
) -> dict[str, Any]:
    paths = prepare(name, samples, held)
    d = paths["model"].parent
    model, calib = str(paths["model"]), str(paths["calib"])
    jobs: dict[str, Any] = {}
    files: dict[str, Path] = {}
    for m in QUANTSHIP:
        out = d / f"quantship-{m}.onnx"
        label = f"quantship {m}"
        print(f"[{name}] {label} ...", flush=True)
        w = run_watched(["quantship", model, calib, str(out), m, str(samples)], limit_mb, 3600)
        jobs[label] = job_summary(w)
        if w.ok:
            files[label] = out
    for label, method, act, opts in ORT:
        out = d / (label.replace(" + ", "-").replace(" ", "-") + ".onnx")
        print(f"[{name}] {label} ...", flush=True)
        args = ["ort", model, calib, str(out), method, act, str(samples)] + ([opts] if opts else [])
        w = run_watched(args, limit_mb, 3600)
        jobs[label] = job_summary(w)
        if w.ok:
            files[label] = out
    print(f"[{name}] fidelity on {held} held-out images ...", flush=True)
    fid = fidelity(paths["model"], files, paths["held"], threads)
    print(f"[{name}] latency, interleaved ...", flush=True)
    lat = latency(paths["model"], files, threads, duration)
    sizes = {k: p.stat().st_size for k, p in files.items()}
    return {
        "model": name,
        "float_bytes": paths["model"].stat().st_size,
        "jobs": jobs,
        "fidelity": fid,
        "latency": lat,
        "sizes": sizes,
    }


def summarize(res: dict[str, Any]) -> tuple[list[list[str]], dict[str, Any]]:
    p50 = {r["label"]: r["p50_ms"] for r in res["latency"]}
    rows = []
    labels = ["float", *list(res["jobs"])]
    for lab in labels:
        job = res["jobs"].get(lab, {})
        fid = res["fidelity"].get(lab, {})
        size = res["sizes"].get(lab)
        rep = job.get("report", {})
        rows.append(
            [
                lab,
                f"{p50[lab]:.2f}" if lab in p50 else "-",
                f"{p50['float'] / p50[lab]:.2f}x" if lab in p50 else "-",
                f"{fid['cosine']:.4f}" if fid else ("1" if lab == "float" else "-"),
                f"{fid['top1_agreement']:.3f}"
                if fid and fid.get("top1_agreement") is not None
                else "-",
                f"{size / res['float_bytes']:.3f}" if size else ("1" if lab == "float" else "-"),
                f"{rep['quantize_s']:.1f}" if "quantize_s" in rep else "-",
                f"{job['peak_anon_mb'] / 1024:.2f}" if job else "-",
                f"{job['peak_rss_mb'] / 1024:.2f}" if job else "-",
                job.get("killed") or ("" if job.get("ok", True) else "failed"),
            ]
        )
    ours = f"quantship {DEFAULT_METHOD}"
    ort_ok = [k for k in res["latency"] if k["label"].startswith("ort")]
    best_ort = min(ort_ok, key=lambda r: r["p50_ms"]) if ort_ok else None
    default_ort = [k for k in ort_ok if k["label"] in ("ort minmax s8", "ort entropy s8")]
    best_default = min(default_ort, key=lambda r: r["p50_ms"]) if default_ort else None
    checks: dict[str, Any] = {}
    if ours in p50:
        checks["speedup_vs_float"] = p50["float"] / p50[ours]
        if best_default:
            checks["p50_ratio_vs_best_ort_default"] = p50[ours] / best_default["p50_ms"]
            checks["best_ort_default"] = best_default["label"]
            checks["cosine_vs_that_ort"] = (
                res["fidelity"][ours]["cosine"],
                res["fidelity"][best_default["label"]]["cosine"],
            )
        if best_ort:
            checks["p50_ratio_vs_best_ort_any"] = p50[ours] / best_ort["p50_ms"]
            checks["best_ort_any"] = best_ort["label"]
            checks["cosine_vs_best_ort_any"] = (
                res["fidelity"][ours]["cosine"],
                res["fidelity"][best_ort["label"]]["cosine"],
            )
        checks["size_ratio"] = res["sizes"][ours] / res["float_bytes"]
        checks["calib_peak_anon_gb"] = res["jobs"][ours]["peak_anon_mb"] / 1024
        checks["calib_peak_rss_gb"] = res["jobs"][ours]["peak_rss_mb"] / 1024
        checks["quantize_s"] = res["jobs"][ours]["report"].get("quantize_s")
        for key, lab in (("ort_minmax", "ort minmax s8"), ("ort_entropy", "ort entropy s8")):
            job = res["jobs"].get(lab, {})
            checks[f"{key}_quantize_s"] = job.get("report", {}).get("quantize_s")
            checks[f"{key}_peak_anon_gb"] = job.get("peak_anon_mb", 0) / 1024
            checks[f"{key}_killed"] = job.get("killed")
        checks["int8_beats_fastest_float"] = p50[ours] < p50["float"]
    return rows, checks


def main() -> int:
    ap = parser(__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--limit-gb", type=float, default=12.0, help="kill a quantizer past this much memory"
    )
    ap.add_argument(
        "--duration", type=float, default=20.0, help="seconds of interleaved timing per model"
    )
    args = ap.parse_args()
    results = []
    md = [
        "# quantship vs ONNX Runtime quantize_static\n",
        f"Command: `python benchmarks/vs_onnxruntime.py --models {args.models} --samples {args.samples}`\n",
        f"Machine: {machine_line(machine())}\n",
        "Latency: p50 of batch-1 runs, all models of a row group timed interleaved in one run, "
        f"{args.threads} threads; `vs float` against ONNX Runtime's CPU provider in fp32 (its "
        "default and fastest float precision). Fidelity: cosine to float on "
        f"{args.held} held-out images. Size: artifact bytes / float model bytes. Quantize time "
        "and peak memory: the whole call (model in, quantized model written) in its own "
        "process; anonymous memory is what the process holds, RSS (its own VmHWM) also counts "
        "pages of the calibration file it read.\n",
    ]
    for name in args.models.split(","):
        res = run_model(
            name, args.samples, args.held, args.threads, args.limit_gb * 1024, args.duration
        )
        rows, checks = summarize(res)
        res["checks"] = checks
        results.append(res)
        table = md_table(
            [
                "variant",
                "p50 ms",
                "vs float",
                "cosine",
                "top-1 agree",
                "size",
                "quantize s",
                "peak anon GB",
                "peak RSS GB",
                "note",
            ],
            rows,
        )
        md.append(
            f"\n## {name}\n\n"
            + table
            + "\nChecks: `"
            + str({k: (round(v, 4) if isinstance(v, float) else v) for k, v in checks.items()})
            + "`\n"
        )
        print(table, flush=True)
        print(checks, flush=True)
    write_results(
        "vs_onnxruntime",
        {"machine": machine(), "args": vars(args), "results": results},
        "".join(md),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
