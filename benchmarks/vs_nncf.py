"""quantship's OpenVINO backend vs NNCF's ``nncf.quantize`` (default preset), same
float model and calibration data, compiled and run the same way in OpenVINO.

    python benchmarks/vs_nncf.py                       # the three CNNs, 256 samples
    python benchmarks/vs_nncf.py --models resnet18 --samples 64

Per model: quantship (``--backend openvino``, default method) and NNCF each quantize
in their own memory-watched process from the same .npz (NNCF reads it lazily, as we
do); quantship's ONNX Runtime artifact is also run in OpenVINO, to show what a QDQ
model laid out for another runtime does there. All run in OpenVINO's CPU plugin with
the same settings (latency hint, f32 for float layers, 2 threads, static batch 1),
timed interleaved in one run; throughput mode uses OpenVINO's async queue.
Results: benchmarks/results/vs_nncf.{json,md}.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import job_summary, machine, md_table, parser, prepare, run_watched, write_results


def run_model(
    name: str, samples: int, held: int, threads: int, limit_mb: float, duration: float
) -> dict[str, Any]:
    from quantship.backends import registry
    from quantship.backends.base import Artifact, SessionSettings
    from quantship.bench.fidelity import FidelityMeter
    from quantship.bench.run import Candidate, bench_candidates, throughput_candidates
    from quantship.bench.timing import BenchSettings
    from quantship.calibration.sources import open_data
    from quantship.exporter.load import InputSpec

    paths = prepare(name, samples, held)
    d = paths["model"].parent
    model, calib = str(paths["model"]), str(paths["calib"])
    jobs: dict[str, Any] = {}
    files: dict[str, tuple[Path, str]] = {}

    print(f"[{name}] quantship openvino ...", flush=True)
    out = d / "qs-ov.onnx"
    w = run_watched(
        ["quantship", model, calib, str(out), "percentile", str(samples), "openvino"],
        limit_mb,
        3600,
    )
    jobs["quantship openvino"] = job_summary(w)
    if w.ok:
        files["quantship openvino"] = (Path(out.with_suffix(".path").read_text()), "openvino-ir")
    print(f"[{name}] nncf ...", flush=True)
    out = d / "nncf.xml"
    w = run_watched(["nncf", model, calib, str(out), str(samples)], limit_mb, 3600)
    jobs["nncf"] = job_summary(w)
    if w.ok:
        files["nncf"] = (out, "openvino-ir")
    print(f"[{name}] quantship onnxruntime layout, run in OpenVINO ...", flush=True)
    out = d / "qs-ort-layout.onnx"
    w = run_watched(
        ["quantship", model, calib, str(out), "percentile", str(samples)], limit_mb, 3600
    )
    jobs["quantship ort layout in openvino"] = job_summary(w)
    if w.ok:
        files["quantship ort layout in openvino"] = (out, "onnx-qdq")

    ov = registry.get("openvino")
    import onnx

    inp = onnx.load(model, load_external_data=False).graph.input[0]
    spec = InputSpec(
        inp.name, (None, *[x.dim_value for x in inp.type.tensor_type.shape.dim[1:]]), "float32"
    )
    float_art = Artifact("openvino", "onnx", paths["model"].parent, (paths["model"].name,), "float")
    cands = [Candidate("float (openvino)", ov, float_art)] + [
        Candidate(k, ov, Artifact("openvino", fmt, p.parent, (p.name,)))
        for k, (p, fmt) in files.items()
    ]
    print(f"[{name}] fidelity ...", flush=True)
    settings = SessionSettings(threads=threads)
    ref_s = ov.session(float_art, settings)
    sessions = {c.label: ov.session(c.artifact, settings) for c in cands[1:]}
    outs = [o.name for o in onnx.load(model, load_external_data=False).graph.output]
    meters = {k: FidelityMeter(outs) for k in sessions}
    for feed in open_data(paths["held"], [spec], role="held-out").samples():
        r = ref_s.run(feed)
        for k, s in sessions.items():
            meters[k].update(r, s.run(feed))
    fid = {k: m.result(str(paths["held"])).to_json() for k, m in meters.items()}
    print(f"[{name}] latency, interleaved ...", flush=True)
    bs = BenchSettings(warmup=5, duration=duration, min_iterations=20, threads=threads)
    lat = [s.to_json() for s in bench_candidates(cands, [spec], bs)]
    print(f"[{name}] throughput mode ...", flush=True)
    tput = [t.to_json() for t in throughput_candidates(cands, [spec], bs, 6.0)]
    sizes = {
        k: sum(f.stat().st_size for f in (p, p.with_suffix(".bin")) if f.exists())
        for k, (p, _) in files.items()
    }
    return {
        "model": name,
        "float_bytes": paths["model"].stat().st_size,
        "jobs": jobs,
        "fidelity": fid,
        "latency": lat,
        "throughput": tput,
        "sizes": sizes,
    }


def summarize(res: dict[str, Any]) -> tuple[list[list[str]], dict[str, Any]]:
    p50 = {r["label"]: r["p50_ms"] for r in res["latency"]}
    tp = {r["label"]: r["samples_per_s"] for r in res["throughput"]}
    rows = []
    for lab in ["float (openvino)", *res["jobs"]]:
        job = res["jobs"].get(lab, {})
        fid = res["fidelity"].get(lab)
        rep = job.get("report", {})
        rows.append(
            [
                lab,
                f"{p50[lab]:.2f}" if lab in p50 else "-",
                f"{p50['float (openvino)'] / p50[lab]:.2f}x" if lab in p50 else "-",
                f"{tp[lab]:.1f}" if lab in tp else "-",
                f"{fid['cosine']:.4f}" if fid else ("1" if lab.startswith("float") else "-"),
                f"{res['sizes'][lab] / res['float_bytes']:.3f}" if lab in res["sizes"] else "-",
                f"{rep['quantize_s']:.1f}" if "quantize_s" in rep else "-",
                f"{job['peak_anon_mb'] / 1024:.2f}" if job else "-",
                job.get("killed") or ("" if job.get("ok", True) else "failed"),
            ]
        )
    checks: dict[str, Any] = {}
    q, n = "quantship openvino", "nncf"
    if q in p50 and n in p50:
        checks["p50_ratio_vs_nncf"] = p50[q] / p50[n]
        checks["cosine_quantship_vs_nncf"] = (
            res["fidelity"][q]["cosine"],
            res["fidelity"][n]["cosine"],
        )
        checks["quantize_s_quantship_vs_nncf"] = (
            res["jobs"][q]["report"]["quantize_s"],
            res["jobs"][n]["report"]["quantize_s"],
        )
        checks["throughput_ratio_vs_nncf"] = tp.get(q, 0) / tp[n] if tp.get(n) else None
    return rows, checks


def main() -> int:
    ap = parser(__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit-gb", type=float, default=12.0)
    ap.add_argument("--duration", type=float, default=15.0)
    args = ap.parse_args()
    import nncf
    import openvino

    md = [
        "# quantship (OpenVINO backend) vs NNCF\n",
        f"Command: `python benchmarks/vs_nncf.py --models {args.models} --samples {args.samples}`\n",
        f"Machine: {machine()}, OpenVINO {openvino.get_version()}, NNCF {nncf.__version__}\n",
        "All variants run in OpenVINO's CPU plugin (latency hint, f32 for float layers, "
        f"{args.threads} threads, static batch 1), timed interleaved in one run. Throughput: "
        "OpenVINO's async queue with the THROUGHPUT hint, samples/s. Fidelity: cosine to the "
        f"float model (in OpenVINO) on {args.held} held-out images. Quantize: the whole call "
        "(calibration and writing the IR), own process; memory is anonymous memory.\n",
    ]
    results = []
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
                "samples/s (tput)",
                "cosine",
                "size",
                "quantize s",
                "peak GB",
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
        print(table, checks, sep="\n", flush=True)
    write_results(
        "vs_nncf", {"machine": machine(), "args": vars(args), "results": results}, "".join(md)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
