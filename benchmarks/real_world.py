"""Published-style graphs through ``quantship export``: every graph family of
tests/corpus at benchmark scale, each exported for ONNX Runtime, OpenVINO and TensorRT
in its own watched process, as a user would run it.

For each family: the prepared float model's size against the user's file and its
largest output difference from it, each INT8 artifact's size against the user's file
and its fidelity (cosine to float on held-out data, in the backend's own runtime; the
TensorRT QDQ model runs in ONNX Runtime on the CPU, no engine here), the export's wall
time and peak memory.

    python benchmarks/real_world.py [--families a,b,...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from common import WORK, machine, machine_line, md_table, run_watched, write_results

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "corpus"))
import families

BACKENDS = "onnxruntime,openvino,tensorrt"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default=",".join(sorted(families.BUILDERS)))
    ap.add_argument("--limit-gb", type=float, default=16.0)
    args = ap.parse_args()
    root = WORK / "real_world"
    results: list[dict[str, Any]] = []
    rows: list[list[str]] = []
    for name in args.families.split(","):
        print(f"[{name}] building", flush=True)
        fam = families.build(name, root, "bench")
        out = root / name / "out"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "quantship", "export", str(fam.model), "--calib",
               str(fam.calib), "--held-out", str(fam.held_out), "--backend", BACKENDS,
               "--out", str(out), "--no-bench", "--quiet"]  # fmt: skip
        job = run_watched([], args.limit_gb * 1024, 1800, command=cmd)
        entry: dict[str, Any] = {
            "family": name,
            "ok": job.ok,
            "wall_s": round(job.wall_s, 2),
            "peak_rss_mb": round(job.peak_rss_mb, 1),
            "peak_anon_mb": round(job.peak_anon_mb, 1),
        }
        if not job.ok:
            entry["error"] = job.killed or job.stderr_tail[-400:]
            results.append(entry)
            rows.append([name, "failed", "", "", "", "", "", ""])
            print(f"  failed: {entry['error']}", flush=True)
            continue
        m = json.loads((out / "manifest.json").read_text())
        size_in = m["input_model"]["size_bytes"]
        drift = [d for d in m["float_model"]["max_abs_diff_vs_input"].values() if d is not None]
        entry.update(
            input_bytes=size_in,
            float_ratio=m["float_model"]["size_bytes"] / size_in,
            max_abs_diff=max(drift, default=0.0),
            notes=m["input_model"]["notes"],
            artifacts={
                a["backend"]: {
                    "size_ratio": a["size_bytes"] / size_in,
                    "cosine": (a.get("fidelity") or {}).get("cosine"),
                    "int8_nodes": a["plan"]["quantized_nodes"],
                    "float_nodes": len(a["plan"]["float_nodes"]),
                    "runtime_config": a["metadata"].get("runtime_config"),
                }
                for a in m["artifacts"]
            },
        )
        results.append(entry)
        arts = entry["artifacts"]
        cells = [
            f"{arts[b]['size_ratio']:.3f} / {arts[b]['cosine']:.4f}" for b in BACKENDS.split(",")
        ]
        rows.append(
            [
                name,
                f"{size_in / 1e6:.1f}",
                f"{entry['float_ratio']:.3f}",
                f"{entry['max_abs_diff']:.1e}",
                *cells,
                f"{job.wall_s:.1f}",
                f"{job.peak_anon_mb:.0f}",
            ]
        )
        print(f"  {rows[-1][1:]}", flush=True)
    m = machine()
    headers = ["family", "input MB", "prepared / input", "max abs diff"]
    headers += [f"{b}: size / input, cosine" for b in BACKENDS.split(",")]
    headers += ["export s", "peak MB"]
    md = (
        "# Published-style graphs through `quantship export`\n\n"
        f"`python benchmarks/real_world.py`, on {machine_line(m)}. Families from "
        "`tests/corpus/families.py` at benchmark scale (random weights; the BERT and ViT "
        "shapes of a small published encoder). Sizes against the user's file, external data "
        "included. Cosine: INT8 against the float model on held-out samples, in each "
        "backend's runtime (TensorRT: its QDQ model in ONNX Runtime, no engine). Export: "
        "load, clean-up, one calibration pass, three backends, fidelity; no latency "
        "measured. Peak MB: anonymous memory of the export process.\n\n" + md_table(headers, rows)
    )
    write_results("real_world", {"machine": m, "results": results}, md)


if __name__ == "__main__":
    main()
