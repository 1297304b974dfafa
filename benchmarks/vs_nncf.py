"""quantship's OpenVINO backend vs NNCF's ``nncf.quantize`` at its default preset and
its ``MIXED`` preset, same float model and calibration data, all compiled and run the
way a user runs them in OpenVINO: ``compile_model(model, "CPU")`` with the latency hint
and 2 threads, float layers in the plugin's default precision (bf16 on CPUs with
AVX-512 BF16 or AMX).

    python benchmarks/vs_nncf.py                       # the three CNNs, 256 samples
    python benchmarks/vs_nncf.py --models resnet18 --samples 64

Per model: quantship (``--backend openvino``, default method) and NNCF each quantize
in their own memory-watched process from the same .npz (NNCF reads it lazily, as we
do), the whole call timed; quantship's ONNX Runtime artifact is also run in OpenVINO,
to show what a QDQ model laid out for another runtime does there. The float model is
timed at every float precision the plugin has here (its default and fp32), beside
every INT8 model, interleaved in one run; every figure is given against the default
float and the fastest float. Fidelity: cosine to the fp32 model on the held-out
images. Throughput mode uses OpenVINO's async queue.
Results: benchmarks/results/vs_nncf.{json,md}.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    job_summary,
    machine,
    machine_line,
    md_table,
    parser,
    prepare,
    run_watched,
    write_results,
)


def run_model(
    name: str, samples: int, held: int, threads: int, limit_mb: float, duration: float
) -> dict[str, Any]:
    from quantship.backends import registry
    from quantship.backends.base import Artifact, SessionSettings
    from quantship.calibration.sources import open_data
    from quantship.exporter.load import InputSpec
    from quantship.measure.fidelity import FidelityMeter
    from quantship.measure.run import Candidate, ScenarioPlan, bench_candidates, scenario_candidates
    from quantship.measure.timing import BenchSettings

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
    for preset in ("default", "mixed"):
        label = f"nncf {preset}"
        print(f"[{name}] {label} ...", flush=True)
        out = d / f"nncf-{preset}.xml"
        w = run_watched(["nncf", model, calib, str(out), str(samples), preset], limit_mb, 3600)
        jobs[label] = job_summary(w)
        if w.ok:
            files[label] = (out, "openvino-ir")
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

    from quantship.backends.onnxruntime import OrtSession
    from quantship.measure.run import float_candidates

    inp = onnx.load(model, load_external_data=False).graph.input[0]
    spec = InputSpec(
        inp.name, (None, *[x.dim_value for x in inp.type.tensor_type.shape.dim[1:]]), "float32"
    )
    float_art = Artifact("", "onnx", paths["model"].parent, (paths["model"].name,), "float")
    floats = float_candidates(float_art, [ov])
    cands = floats + [
        Candidate(k, ov, Artifact("openvino", fmt, p.parent, (p.name,)), variant=k)
        for k, (p, fmt) in files.items()
    ]
    print(f"[{name}] fidelity against fp32 ...", flush=True)
    settings = SessionSettings(threads=threads)
    outs = [o.name for o in onnx.load(model, load_external_data=False).graph.output]
    meters = {c.label: FidelityMeter(outs) for c in cands}
    with contextlib.ExitStack() as stack:
        ref = stack.enter_context(OrtSession(paths["model"], settings))
        sessions = {
            c.label: stack.enter_context(c.backend.session(c.artifact, c.settings(threads)))
            for c in cands
        }
        for feed in open_data(paths["held"], [spec], role="held-out").samples():
            r = ref.run(feed)
            for k, sess in sessions.items():
                meters[k].update(r, sess.run(feed))
    fid = {k: m.result(str(paths["held"])).to_json() for k, m in meters.items()}
    print(f"[{name}] latency, interleaved ...", flush=True)
    bs = BenchSettings(warmup=5, duration=duration, min_iterations=20, threads=threads)
    lat = [s.to_json(samples=False) for s in bench_candidates(cands, [spec], bs)]
    print(f"[{name}] throughput mode ...", flush=True)
    offline = ScenarioPlan(("offline",), 6.0)
    tput = [t.to_json() for t in scenario_candidates(cands, [spec], bs, offline)]
    sizes = {
        k: sum(f.stat().st_size for f in (p, p.with_suffix(".bin")) if f.exists())
        for k, (p, _) in files.items()
    }
    return {
        "model": name,
        "float_bytes": paths["model"].stat().st_size,
        "floats": [
            {"label": c.label, "precision": c.precision, "default": c.default} for c in floats
        ],
        "jobs": jobs,
        "fidelity": fid,
        "latency": lat,
        "throughput": tput,
        "sizes": sizes,
    }


def summarize(res: dict[str, Any]) -> tuple[list[list[str]], dict[str, Any]]:
    p50 = {r["label"]: r["p50_ms"] for r in res["latency"]}
    tp = {r["label"]: r["samples_per_s"] for r in res["throughput"]}
    floats = [f["label"] for f in res["floats"]]
    default = next(f["label"] for f in res["floats"] if f["default"])
    fastest = min(floats, key=lambda k: p50[k])
    rows = []
    for lab in [*floats, *res["jobs"]]:
        job = res["jobs"].get(lab, {})
        fid = res["fidelity"].get(lab)
        rep = job.get("report", {})
        rows.append(
            [
                lab,
                f"{p50[lab]:.2f}" if lab in p50 else "-",
                f"{p50[default] / p50[lab]:.2f}x" if lab in p50 else "-",
                f"{p50[fastest] / p50[lab]:.2f}x" if lab in p50 else "-",
                f"{tp[lab]:.1f}" if lab in tp else "-",
                f"{fid['cosine']:.4f}" if fid else "-",
                f"{res['sizes'][lab] / res['float_bytes']:.3f}" if lab in res["sizes"] else "1",
                f"{rep['quantize_s']:.1f}" if "quantize_s" in rep else "-",
                f"{job['peak_anon_mb'] / 1024:.2f}" if job else "-",
                job.get("killed") or ("" if job.get("ok", True) else "failed"),
            ]
        )
    checks: dict[str, Any] = {"default_float": default, "fastest_float": fastest}
    q = "quantship openvino"
    if q in p50:
        checks["quantship_vs_fastest_float"] = p50[fastest] / p50[q]
        checks["int8_beats_fastest_float"] = p50[q] < p50[fastest]
        checks["quantship_cosine"] = res["fidelity"][q]["cosine"]
        for n in ("nncf default", "nncf mixed"):
            if n in p50:
                key = n.replace(" ", "_")
                checks[f"p50_ratio_vs_{key}"] = p50[q] / p50[n]
                checks[f"{key}_cosine"] = res["fidelity"][n]["cosine"]
                checks[f"{key}_vs_fastest_float"] = p50[fastest] / p50[n]
                checks[f"quantize_s_vs_{key}"] = (
                    res["jobs"][q]["report"]["quantize_s"],
                    res["jobs"][n]["report"]["quantize_s"],
                )
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
        f"Machine: {machine_line(machine())}, OpenVINO {openvino.get_version()}, "
        f"NNCF {nncf.__version__}\n",
        "All variants run in OpenVINO's CPU plugin as a user compiles them (latency hint, "
        f"{args.threads} threads, static batch 1, float layers in the plugin's default "
        "precision); the float model at each precision the plugin has here. All timed "
        "interleaved in one run; speedups against the default float and the fastest float. "
        "Throughput: OpenVINO's async queue with the THROUGHPUT hint, samples/s. Fidelity: "
        f"cosine to the fp32 model on {args.held} held-out images. Quantize: the whole call "
        "(model in, IR written), own process; memory is anonymous memory.\n",
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
                "vs default float",
                "vs fastest float",
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
