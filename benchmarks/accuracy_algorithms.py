"""Pre-quantization algorithms and the region guard, against the peers, on one machine
in one run: each algorithm alone and all together (``--algorithms``), per backend,
beside ONNX Runtime's ``quantize_static`` (uint8 per-channel MinMax and Entropy), NNCF
(default: FastBiasCorrection on; with bias correction off; the transformer preset,
which turns SmoothQuant on) and AIMET's ONNX package (defaults, CLE, CLE + AdaRound)
run by ``aimet_runner.py`` in AIMET's own environment (``AIMET_RUNNER='PYTHON
benchmarks/aimet_runner.py'``; aimet-onnx 2.42 installs on CPU with torch 2.13.0).

Per candidate: fidelity to fp32 on held-out data (1 − cosine; top-1 agreement for the
classifiers; for the CTC sequence models per-frame argmax agreement and the share of
lines decoded exactly), the time the export took, and p50 latency at batch 1 with all
candidates and every float option timed interleaved. The sequence models (``seqctc``:
a small conv + attention CTC model over digit columns, ``seq_ctc.py``; ``ocrctc``: a
text-line recogniser in the shape of PaddleOCR's PP-OCRv3, ``ocr_ctc.py``) are also
exported with the accuracy guard at 0.005 (the issue's budget) and 0.001 on 1 − cosine.

    python benchmarks/accuracy_algorithms.py [--models mobilenetv2,resnet18,detector320,seqctc,ocrctc]

Results: benchmarks/results/accuracy_algorithms.{json,md}.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    RESULTS,
    WORK,
    candidate_fidelity,
    job_summary,
    machine,
    machine_line,
    md_table,
    parser,
    prepare,
    run_watched,
    write_results,
)

THREADS = 2
CONFIGS = ["none", "cle", "smoothquant", "adaround", "bias-correction",
           "cle,smoothquant,adaround,bias-correction"]  # fmt: skip
PEERS = [  # label, worker arguments after MODEL CALIB OUT, format, models (None: all)
    ("ort minmax u8", ["ort", "minmax", "u8", "{samples}"], "onnx-qdq", None),
    ("ort entropy u8", ["ort", "entropy", "u8", "{samples}"], "onnx-qdq", None),
    ("nncf default", ["nncf", "{samples}", "default"], "openvino-ir", None),
    ("nncf no bias correction", ["nncf", "{samples}", "no-bc"], "openvino-ir", None),
    ("nncf transformer (SmoothQuant)", ["nncf", "{samples}", "transformer"], "openvino-ir",
     {"seqctc", "ocrctc"}),
]  # fmt: skip
AIMET_MODES = ["default", "cle", "cle+adaround"]  # AdaRound at the runner's 1000 iterations
GUARD_BUDGETS = (0.005, 0.001)
GUARD_COLUMNS = ["model", "export", "backend", "all INT8", "all float", "kept", "regions float",
                 "evaluations", "s"]  # fmt: skip


def sequence_module(name: str) -> Any:
    """The module of a CTC sequence model (``prepare``, ``exact``), or None."""
    if name == "seqctc":
        import seq_ctc

        return seq_ctc
    if name == "ocrctc":
        import ocr_ctc

        return ocr_ctc
    return None


def model_paths(name: str, samples: int, held: int) -> dict[str, Path]:
    seq = sequence_module(name)
    if seq is not None:
        return dict(seq.prepare(WORK, samples, max(held, 256)))
    return prepare(name, samples, held)


def exports(name: str, paths: dict[str, Path], d: Path, samples: int) -> dict[str, Any]:
    from quantship import api

    os.environ["QUANTSHIP_CACHE_DIR"] = str(d / "cache")
    runs: dict[str, Any] = {}
    todo: list[tuple[str, float | None]] = [(c, None) for c in CONFIGS]
    if sequence_module(name) is not None:
        todo += [(c, b) for b in GUARD_BUDGETS for c in ("none", CONFIGS[-1])]
    for config, budget in todo:
        tag = config if budget is None else f"{config} guard {budget}"
        out = d / tag.replace(",", "+").replace(" ", "-")
        print(f"[{name}] quantship export --algorithms {config}"
              + (f" --max-drop {budget}" if budget else "") + " ...", flush=True)  # fmt: skip
        t0 = time.perf_counter()
        try:
            res = api.export(
                paths["model"], paths["calib"], out, backends="onnxruntime,openvino",
                samples=samples, held_out=paths["held"], threads=THREADS, bench=False,
                algorithms=config, max_drop=budget,
            )  # fmt: skip
        except Exception as e:  # a failure is a result too
            runs[tag] = {"error": f"{type(e).__name__}: {e}"}
            continue
        runs[tag] = {"out": str(out), "seconds": time.perf_counter() - t0,
                     "manifest": res.manifest}  # fmt: skip
    return runs


def aimet_job(model: Path, calib: Path, out: Path, mode: str, samples: int) -> dict[str, Any]:
    """AIMET runs in its own environment: ``$AIMET_RUNNER`` is 'PYTHON SCRIPT'."""
    runner = os.environ.get("AIMET_RUNNER")
    if not runner:
        return {"ok": False, "error": "AIMET_RUNNER not set (aimet-onnx not installed here)"}
    cmd = [*shlex.split(runner), str(model), str(calib), str(out), "--mode", mode,
           "--samples", str(samples), "--threads", str(THREADS)]  # fmt: skip
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    line = next((x for x in reversed(p.stdout.splitlines()) if x.startswith("{")), "")
    try:
        rep = dict(json.loads(line))
    except ValueError:
        rep = {"ok": False, "error": (p.stderr.strip().splitlines() or ["no output"])[-1]}
    rep["wall_s"] = time.perf_counter() - t0
    return rep


def candidates(runs: dict[str, Any], peers: dict[str, tuple[Path, str]]) -> list[Any]:
    from quantship.backends import registry
    from quantship.backends.base import Artifact
    from quantship.exporter.manifest import artifacts_in, float_artifact
    from quantship.measure.run import Candidate, float_candidates

    ort, ov = registry.get("onnxruntime"), registry.get("openvino")
    first = runs["none"]
    cands = float_candidates(float_artifact(Path(first["out"]), first["manifest"]), [ort, ov])
    for tag, r in runs.items():
        if "error" in r:
            continue
        for a in artifacts_in(Path(r["out"]), r["manifest"]):
            label = f"quantship {a.backend} [{tag}]"
            cands.append(Candidate(label, registry.get(a.backend), a, variant=label))
    for label, (p, fmt) in peers.items():
        b = ov if fmt == "openvino-ir" else ort
        cands.append(Candidate(label, b, Artifact(b.name, fmt, p.parent, (p.name,)), variant=label))
    return cands


def run_model(
    name: str, samples: int, held: int, duration: float, limit_mb: float, aimet_modes: list[str]
) -> dict[str, Any]:
    from quantship.exporter.load import load_model
    from quantship.measure.run import bench_candidates
    from quantship.measure.timing import BenchSettings

    paths = model_paths(name, samples, held)
    d = WORK / "accuracy-algorithms" / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    runs = exports(name, paths, d, samples)
    jobs: dict[str, Any] = {}
    peers: dict[str, tuple[Path, str]] = {}
    for label, args, fmt, only in PEERS:
        if only is not None and name not in only:
            continue
        out = d / (
            label.split(" (")[0].replace(" ", "-") + (".xml" if fmt == "openvino-ir" else ".onnx")
        )
        argv = [args[0], str(paths["model"]), str(paths["calib"]), str(out)]
        argv += [a.format(samples=samples) for a in args[1:]]
        print(f"[{name}] {label} ...", flush=True)
        w = run_watched(argv, limit_mb, 3600)
        jobs[label] = job_summary(w)
        if w.ok:
            peers[label] = (out, fmt)
    for mode in aimet_modes:
        label = f"aimet {mode}"
        out = d / f"aimet-{mode.replace('+', '-')}.onnx"
        print(f"[{name}] {label} ...", flush=True)
        rep = aimet_job(paths["model"], paths["calib"], out, mode, samples)
        jobs[label] = rep
        if rep.get("ok") and out.exists():
            peers[label] = (out, "onnx-qdq")
    cands = candidates(runs, peers)
    fm = load_model(paths["model"])
    print(f"[{name}] fidelity of {len(cands)} candidates ...", flush=True)
    results, outs, ref_outs = candidate_fidelity(paths["model"], paths["held"], cands, THREADS)
    fid: dict[str, dict[str, Any]] = {}
    seq = sequence_module(name)
    labels = np.load(paths["held"])["labels"] if seq is not None else None
    ref_all = np.concatenate(ref_outs)
    for c in cands:
        f = results[c.key]
        row: dict[str, Any] = {"cosine": f.cosine, "top1_agreement": f.top1_agreement}
        if labels is not None:
            got = np.concatenate(outs[c.key])
            row["frame_agreement"] = float(np.mean(got.argmax(-1) == ref_all.argmax(-1)))
            row["exact_lines"] = seq.exact(got, labels[: len(got)])
        fid[c.key] = row
    if labels is not None:
        fid["fp32 reference"] = {"exact_lines": seq.exact(ref_all, labels[: len(ref_all)])}
    print(f"[{name}] latency of {len(cands)} candidates, interleaved, batch 1 ...", flush=True)
    bs = BenchSettings(warmup=5, duration=duration * len(cands), min_iterations=20,
                       min_rounds=10, threads=THREADS, batches=(1,))  # fmt: skip
    lat = bench_candidates(cands, fm.inputs, bs)
    return {
        "model": name,
        "candidates": [
            {
                "key": c.key,
                "label": c.label,
                "backend": c.backend.name,
                "float": c.is_float,
                "bytes": c.artifact.size_bytes(),
            }
            for c in cands
        ],
        "fidelity": fid,
        "p50_ms": {s.key: s.p50_ms for s in lat if s.mode == "latency"},
        "exports": {
            t: {k: v for k, v in r.items() if k != "manifest"}
            | (
                {"artifacts": [_art(a) for a in r["manifest"]["artifacts"]]}
                if "manifest" in r
                else {}
            )
            for t, r in runs.items()
        },
        "jobs": jobs,
    }


def _art(a: dict[str, Any]) -> dict[str, Any]:
    return {k: a.get(k) for k in ("backend", "algorithms", "accuracy_guard", "fidelity",
                                  "size_bytes")}  # fmt: skip


def summarize(res: dict[str, Any]) -> list[list[str]]:
    cands = {c["key"]: c for c in res["candidates"]}
    p50 = res["p50_ms"]
    floats = {k: v for k, v in p50.items() if cands[k]["float"]}
    fastest = min(floats.values())
    fbytes = next(c["bytes"] for c in cands.values() if c["float"])
    rows = []
    for k, c in cands.items():
        f = res["fidelity"].get(k, {})
        task = (f"{f['frame_agreement']:.4f} / {f['exact_lines']:.3f}" if "exact_lines" in f
                else "-" if f.get("top1_agreement") is None else f"{f['top1_agreement']:.4f}")  # fmt: skip
        rows.append([res["model"], c["label"], f"{1 - f['cosine']:.2e}", task,
                     f"{p50[k]:.3f}" if k in p50 else "-",
                     f"{fastest / p50[k]:.2f}x" if k in p50 else "-",
                     f"{c['bytes'] / fbytes:.2f}"])  # fmt: skip
    return rows


def main() -> int:
    ap = parser(__doc__, models="mobilenetv2,resnet18,detector320,seqctc,ocrctc")
    ap.add_argument(
        "--duration",
        type=float,
        default=2.0,
        help="timing seconds per candidate (all candidates interleaved, 10 rounds at least)",
    )
    ap.add_argument("--limit-gb", type=float, default=16.0, help="memory limit of a peer's job")
    ap.add_argument(
        "--aimet-modes",
        default=",".join(AIMET_MODES),
        help="AIMET runs (its AdaRound did not finish in 5 minutes on the CNNs here)",
    )
    ap.add_argument("--append", action="store_true",
                    help="keep the other models' results of the last run (each model is timed "
                    "within its own run)")  # fmt: skip
    args = ap.parse_args()
    m = machine()
    results: list[dict[str, Any]] = []
    if args.append and (RESULTS / "accuracy_algorithms.json").exists():
        old = json.loads((RESULTS / "accuracy_algorithms.json").read_text())
        asked = set(args.models.split(","))
        results = [r for r in old["results"] if r["model"] not in asked]
    modes = [x for x in args.aimet_modes.split(",") if x]
    for name in args.models.split(","):
        results.append(
            run_model(name, args.samples, args.held, args.duration, args.limit_gb * 1024, modes)
        )
        report(args, m, results)  # after each model: a later failure loses nothing
    return 0


def report(args: Any, m: dict[str, Any], results: list[dict[str, Any]]) -> None:
    rows = [r for res in results for r in summarize(res)]
    times = []
    for res in results:
        for tag, e in res["exports"].items():
            algos = {a["backend"]: a.get("algorithms") or {} for a in e.get("artifacts", [])}
            times.append([res["model"], tag, f"{e['seconds']:.1f}" if "seconds" in e else e.get("error", "-"),
                          json.dumps({b: {k: v for k, v in x.items() if k != "names"}
                                      for b, x in algos.items()})[:300]])  # fmt: skip
    guards = []
    for res in results:
        for tag, e in res["exports"].items():
            for a in e.get("artifacts", []):
                g = a.get("accuracy_guard")
                if not g:
                    continue
                floor = g.get("floor")
                guards.append([res["model"], tag, a["backend"], f"{g['before']:.2e}",
                               "-" if floor is None else f"{floor:.2e}", f"{g['after']:.2e}",
                               str(len(g["float_regions"])), str(g["evaluations"]),
                               f"{g['seconds']:.1f}"])  # fmt: skip
    md = (
        "# Pre-quantization algorithms and the region guard\n\n"
        f"Command: `python benchmarks/accuracy_algorithms.py --models "
        f"{','.join(r['model'] for r in results)} --samples "
        f"{args.samples}`\n\nMachine: {machine_line(m)}, {THREADS} threads. Fidelity on held-out "
        "data against the fp32 model (ONNX Runtime); task: top-1 agreement with float "
        "(classifiers), or per-frame argmax agreement / lines decoded exactly (seqctc, ocrctc); "
        "speed: the fastest float option's p50 over the candidate's, all timed interleaved "
        "at batch 1; size: over the float model's file.\n\n"
        + md_table(
            [
                "model",
                "candidate",
                "1 − cosine",
                "task",
                "p50 ms",
                "speed vs fastest float",
                "size",
            ],
            rows,
        )
        + "\n\nExport time (s) and what each algorithm reported, per backend:\n\n"
        + md_table(["model", "algorithms", "export s", "report"], times)
        + "\n\nThe accuracy guard, per export and backend (1 − cosine on the guard's held-out "
        "samples: with every region INT8, with every region float in that runtime, and as "
        "kept):\n\n" + md_table(GUARD_COLUMNS, guards) + "\n"
    )
    write_results("accuracy_algorithms", {"args": vars(args), "machine": m, "results": results}, md)
    print(md)


if __name__ == "__main__":
    raise SystemExit(main())
