"""Plans chosen on the target: quantship's plan search (``export --plan search``) against
its rule plan, NNCF (default and MIXED presets) in OpenVINO, ONNX Runtime's
``quantize_static`` (uint8 per-channel MinMax and Entropy, the tuned recipe; int8
MinMax) and every float option each runtime has here — fidelity to fp32 on held-out
images, latency of all of them interleaved in one run at batch 1 and 8, each
candidate's per-layer profile (the runtime's own), and the time the search costs.

    python benchmarks/plan_search.py [--models detector320,resnet18,mobilenetv2]

Results: benchmarks/results/plan_search.{json,md}, per-layer profiles in
benchmarks/results/plan_search_profiles.json.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

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
BATCHES = (1, 8)
PEERS = [  # label, worker arguments after MODEL CALIB OUT (see worker.py), format
    ("nncf default", ["nncf", "{samples}", "default"], "openvino-ir"),
    ("nncf mixed", ["nncf", "{samples}", "mixed"], "openvino-ir"),
    ("ort minmax u8", ["ort", "minmax", "u8", "{samples}"], "onnx-qdq"),
    ("ort entropy u8", ["ort", "entropy", "u8", "{samples}"], "onnx-qdq"),
    ("ort minmax s8", ["ort", "minmax", "s8", "{samples}"], "onnx-qdq"),
]


def exports(
    paths: dict[str, Path], d: Path, samples: int
) -> tuple[dict[str, Any], dict[str, float]]:
    """quantship's rule plan, the search, and the search again (its cache): manifests
    and the wall time of each whole export."""
    from quantship import api

    os.environ["QUANTSHIP_CACHE_DIR"] = str(d / "cache")
    manifests: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    for label, plan in (("rules", "rules"), ("search", "search"), ("search, cached", "search")):
        out = d / label.replace(", ", "-")
        print(f"[{d.name}] quantship export --plan {plan} ({label}) ...", flush=True)
        t0 = time.perf_counter()
        res = api.export(
            paths["model"], paths["calib"], out, backends="onnxruntime,openvino",
            samples=samples, held_out=paths["held"], threads=THREADS, bench=False, plan=plan,
        )  # fmt: skip
        seconds[label] = time.perf_counter() - t0
        manifests[label] = res.manifest
    return manifests, seconds


def candidates(d: Path, manifests: dict[str, Any], peers: dict[str, tuple[Path, str]]) -> list[Any]:
    from quantship.backends import registry
    from quantship.backends.base import Artifact
    from quantship.exporter.manifest import artifacts_in, float_artifact
    from quantship.measure.run import Candidate, float_candidates

    ort, ov = registry.get("onnxruntime"), registry.get("openvino")
    rules_dir, search_dir = d / "rules", d / "search"
    cands = float_candidates(float_artifact(rules_dir, manifests["rules"]), [ort, ov])
    chosen = {a["backend"]: a["plan_variant"] for a in manifests["search"]["artifacts"]}
    for root, tag in ((rules_dir, "rules"), (search_dir, "search")):
        for a in artifacts_in(root, manifests[tag]):
            b = registry.get(a.backend)
            if tag == "search" and chosen[a.backend] == "rules":
                continue  # the same artifact as the rule plan's: timed once
            label = f"quantship {a.backend} " + (
                "rule plan" if tag == "rules" else f"search: {chosen[a.backend]}"
            )
            cands.append(Candidate(label, b, a, variant=label))
    for label, (p, fmt) in peers.items():
        b = ov if fmt == "openvino-ir" else ort
        cands.append(Candidate(label, b, Artifact(b.name, fmt, p.parent, (p.name,)), variant=label))
    return cands


def run_model(
    name: str, samples: int, held: int, duration: float, limit_mb: float
) -> dict[str, Any]:
    from quantship.backends.base import SessionSettings
    from quantship.exporter.load import load_model
    from quantship.measure.profile import Profile
    from quantship.measure.run import bench_candidates, make_feeds
    from quantship.measure.timing import BenchSettings

    paths = prepare(name, samples, held)
    d = WORK / "plan-search" / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    manifests, seconds = exports(paths, d, samples)
    jobs: dict[str, Any] = {}
    peers: dict[str, tuple[Path, str]] = {}
    for label, args, fmt in PEERS:
        out = d / (label.replace(" ", "-") + (".xml" if fmt == "openvino-ir" else ".onnx"))
        argv = [args[0], str(paths["model"]), str(paths["calib"]), str(out)]
        argv += [a.format(samples=samples) for a in args[1:]]
        print(f"[{name}] {label} ...", flush=True)
        w = run_watched(argv, limit_mb, 3600)
        jobs[label] = job_summary(w)
        if w.ok:
            peers[label] = (out, fmt)
    cands = candidates(d, manifests, peers)
    fm = load_model(paths["model"])
    settings = SessionSettings(threads=THREADS)
    print(f"[{name}] fidelity of {len(cands)} candidates ...", flush=True)
    results, _, _ = candidate_fidelity(paths["model"], paths["held"], cands, THREADS)
    fid = {k: f.cosine for k, f in results.items()}
    print(
        f"[{name}] latency of {len(cands)} candidates, interleaved, batch {BATCHES} ...", flush=True
    )
    bs = BenchSettings(
        warmup=5, duration=duration, min_iterations=20, threads=THREADS, batches=BATCHES
    )
    lat = bench_candidates(cands, fm.inputs, bs)
    print(f"[{name}] per-layer profiles ...", flush=True)
    profiles = []
    feed = make_feeds(fm.inputs, 1)
    for c in cands:
        with c.backend.session(c.artifact, settings) as s:
            profiles.append(Profile(c.key, c.label, 1, 20, tuple(s.profile(feed, 20))).to_json())
    searched = {a["backend"]: a["plan_search"] for a in manifests["search"]["artifacts"]}
    return {
        "model": name,
        "candidates": [
            {
                "key": c.key,
                "label": c.label,
                "backend": c.backend.name,
                "float": c.is_float,
                "precision": c.precision,
            }
            for c in cands
        ],
        "cosine": fid,
        "latency": [s.to_json() for s in lat],
        "export_seconds": seconds,
        "search": searched,
        "jobs": jobs,
        "profiles": profiles,
    }


def summarize(res: dict[str, Any]) -> tuple[list[list[str]], list[str]]:
    """Rows per batch, and the targets' lines."""
    cands = {c["key"]: c for c in res["candidates"]}
    rows, lines = [], []
    for b in BATCHES:
        p50 = {
            s["key"]: s["p50_ms"]
            for s in res["latency"]
            if s["batch"] == b and s["mode"] == "latency"
        }
        floats = {k: v for k, v in p50.items() if cands[k]["float"]}
        fastest = min(floats, key=floats.__getitem__)
        for k, v in p50.items():
            c = cands[k]
            rows.append([res["model"], str(b), c["label"], f"{1 - res['cosine'][k]:.2e}",
                         f"{v:.3f}", f"{v / floats[fastest]:.2f}"])  # fmt: skip
        if b != 1:
            continue

        def key_of(label: str) -> str | None:
            return next((k for k, c in cands.items() if c["label"] == label), None)

        for backend, peer in (("openvino", "nncf default"), ("onnxruntime", None)):
            ours = [
                k for k, c in cands.items() if c["label"].startswith(f"quantship {backend} search")
            ]
            ours = ours or [
                k for k, c in cands.items() if c["label"] == f"quantship {backend} rule plan"
            ]
            own_float = [k for k in floats if cands[k]["backend"] == backend]
            fast_own = min(own_float, key=floats.__getitem__)
            o = ours[0]
            line = (f"{res['model']} {backend}: chosen plan {p50[o]:.3f} ms = "
                    f"{p50[o] / floats[fast_own]:.2f}x its runtime's fastest float "
                    f"({cands[fast_own]['label']}), {p50[o] / floats[fastest]:.2f}x the fastest float here")  # fmt: skip
            if peer is not None and key_of(peer) in p50:
                pk = key_of(peer)
                assert pk is not None
                line += f"; {p50[o] / p50[pk]:.2f}x {peer} (1-cos ours {1 - res['cosine'][o]:.2e}, theirs {1 - res['cosine'][pk]:.2e})"
            if backend == "onnxruntime":
                tuned = [k for k in (key_of("ort minmax u8"), key_of("ort entropy u8")) if k in p50]
                if tuned:
                    best = min(tuned, key=p50.__getitem__)
                    line += (f"; {p50[o] / p50[best]:.2f}x the best ORT quantize_static ({cands[best]['label']}, "
                             f"1-cos {1 - res['cosine'][best]:.2e} vs ours {1 - res['cosine'][o]:.2e})")  # fmt: skip
            s = res["search"].get(backend) or {}
            line += f"; search {s.get('seconds', '-')} s, chose {s.get('chosen')!r}"
            lines.append(line)
    sec = res["export_seconds"]
    lines.append(
        f"{res['model']}: export {sec['rules']:.1f} s (rule plans), {sec['search']:.1f} s (search), "
        f"{sec['search, cached']:.1f} s (search, cached: {sec['search, cached'] / sec['rules']:.2f}x the plain export)"
    )
    return rows, lines


def main() -> int:
    ap = parser(__doc__, models="detector320,resnet18,mobilenetv2")
    ap.add_argument(
        "--duration", type=float, default=30.0, help="timed seconds per batch size, all candidates"
    )
    ap.add_argument("--limit-gb", type=float, default=16.0)
    args = ap.parse_args()
    results, rows, lines = [], [], []
    for name in args.models.split(","):
        res = run_model(name, args.samples, args.held, args.duration, args.limit_gb * 1024)
        results.append(res)
        got, said = summarize(res)
        rows += got
        lines += said
        for x in said:
            print(x, flush=True)
    m = machine()
    md = (
        "# Plans chosen on the target\n\n"
        f"Command: `python benchmarks/plan_search.py --models {args.models} --samples {args.samples}`\n\n"
        f"Machine: {machine_line(m)}, {THREADS} threads. Every candidate of a model timed interleaved "
        "in one run (batch 1, then 8); fidelity: 1 − cosine to the fp32 model (ONNX Runtime) on "
        f"{args.held} held-out images. ×fastest float: p50 over the fastest float option of any "
        "runtime here at that batch. Per-layer profiles: plan_search_profiles.json.\n\n"
        + md_table(["model", "batch", "candidate", "1 − cosine", "p50 ms", "× fastest float"], rows)
        + "\n"
        + "\n".join(f"- {x}" for x in lines)
        + "\n"
    )
    profiles = {r["model"]: r.pop("profiles") for r in results}
    write_results("plan_search", {"machine": m, "args": vars(args), "results": results}, md)
    (RESULTS / "plan_search_profiles.json").write_text(
        json.dumps(profiles, indent=1, sort_keys=True) + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
