"""A model over 2 GB (weights in external data) through ``quantship export``, with the
export process's peak memory beside the size of its weights.

The model: ``--layers`` blocks of MatMul(4096×4096, float32) → Add(bias) → Relu, 64 MB
of weights each (36 blocks: 2.4 GB), written straight to its external data file a
layer at a time, so the benchmark itself never holds it. Protobuf cannot hold a
message over 2 GB, so the model can only exist with external data, and an exporter that
loads it whole, or twice, needs that much memory again.

Export runs as a user would run it, in its own process watched every 20 ms
(``common.run_watched``): peak resident and anonymous memory, wall time.

    python benchmarks/large_model.py [--layers 36] [--backends onnxruntime,openvino]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from typing import Any

import numpy as np
import onnx
from common import WORK, machine, machine_line, md_table, run_watched, write_results
from onnx import TensorProto, helper

WIDTH = 4096


def build(folder: Any, layers: int) -> tuple[Any, Any, int]:
    """Write model.onnx + model.weights (and calibration/held-out data); returns the
    paths and the bytes of weights."""
    folder.mkdir(parents=True, exist_ok=True)
    path, data = folder / "model.onnx", folder / "model.weights"
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    offset = 0
    with data.open("wb") as f:
        x = "x"
        for i in range(layers):
            # He initialisation keeps activations at a steady scale through the ReLUs.
            w = rng.standard_normal((WIDTH, WIDTH), dtype=np.float32) * np.float32(
                np.sqrt(2 / WIDTH)
            )
            b = rng.uniform(-0.05, 0.05, WIDTH).astype(np.float32)
            for name, arr in ((f"w{i}", w), (f"b{i}", b)):
                raw = arr.tobytes()
                f.write(raw)
                t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(arr.shape))
                t.data_location = TensorProto.EXTERNAL
                for k, v in (("location", data.name), ("offset", str(offset)),
                             ("length", str(len(raw)))):  # fmt: skip
                    e = t.external_data.add()
                    e.key, e.value = k, v
                inits.append(t)
                offset += len(raw)
            del w
            nodes += [
                helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"fc{i}"),
                helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"], name=f"bias{i}"),
                helper.make_node("Relu", [f"a{i}"], [f"r{i}"], name=f"relu{i}"),
            ]
            x = f"r{i}"
    graph = helper.make_graph(
        nodes, "large_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", WIDTH])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", WIDTH])],
        inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    r = np.random.default_rng(1)
    np.savez(folder / "calib.npz", x=r.standard_normal((64, WIDTH)).astype(np.float32))
    np.savez(folder / "held.npz", x=r.standard_normal((16, WIDTH)).astype(np.float32))
    return path, folder, offset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=36)
    ap.add_argument("--backends", default="onnxruntime,openvino")
    ap.add_argument("--limit-gb", type=float, default=20.0)
    ap.add_argument("--repeat", type=int, default=3, help="exports run (peak memory varies)")
    args = ap.parse_args()
    folder = WORK / f"large_model_{args.layers}"
    if not (folder / "model.onnx").exists():
        print(f"writing a {args.layers}-layer model ({args.layers * 64} MB of weights)", flush=True)
    path, folder, weight_bytes = build(folder, args.layers)
    onnx.checker.check_model(str(path))
    out = folder / "out"
    cmd = [sys.executable, "-m", "quantship", "export", str(path), "--calib",
           str(folder / "calib.npz"), "--held-out", str(folder / "held.npz"),
           "--backend", args.backends, "--out", str(out), "--no-bench"]  # fmt: skip
    runs = []
    for k in range(args.repeat):
        shutil.rmtree(out, ignore_errors=True)
        print(f"exporting ({k + 1}/{args.repeat}): " + " ".join(cmd[2:]), flush=True)
        runs.append(run_watched([], args.limit_gb * 1024, 3600, command=cmd))
        if not runs[-1].ok:
            break
    job = runs[-1]
    anon = sorted(r.peak_anon_mb for r in runs)
    rss = sorted(r.peak_rss_mb for r in runs)
    result: dict[str, Any] = {
        "layers": args.layers,
        "weights_bytes": weight_bytes,
        "ok": all(r.ok for r in runs),
        "runs": [
            {"wall_s": round(r.wall_s, 1), "peak_rss_mb": round(r.peak_rss_mb, 1),
             "peak_anon_mb": round(r.peak_anon_mb, 1), "killed": r.killed}
            for r in runs
        ],
    }  # fmt: skip
    rows = []
    if result["ok"]:
        m = json.loads((out / "manifest.json").read_text())
        result["float_bytes"] = m["float_model"]["size_bytes"]
        result["artifacts"] = {
            a["backend"]: {
                "bytes": a["size_bytes"],
                "cosine": (a.get("fidelity") or {}).get("cosine"),
            }
            for a in m["artifacts"]
        }
        for b, a in result["artifacts"].items():
            rows.append([b, f"{a['bytes'] / 1e9:.2f}", f"{a['bytes'] / weight_bytes:.3f}",
                         f"{a['cosine']:.4f}"])  # fmt: skip
    else:
        result["error"] = job.stderr_tail[-600:]
    mach = machine()
    gb = weight_bytes / 1e9

    def spread(v: list[float]) -> str:
        g = [x / 1024 for x in v]
        r = [x * 2**20 / weight_bytes for x in v]
        return f"{g[0]:.2f}–{g[-1]:.2f} GB ({r[0]:.2f}–{r[-1]:.2f}× the weights)"

    walls = sorted(r.wall_s for r in runs)
    md = (
        "# A model over 2 GB through `quantship export`\n\n"
        f"`python benchmarks/large_model.py --layers {args.layers}`, on {machine_line(mach)}. "
        f"{args.layers} blocks of MatMul 4096×4096 + bias + Relu, float32 weights in external "
        f"data: {gb:.2f} GB. Export to {args.backends}, no latency measured; {len(runs)} "
        "runs, watched every 20 ms (the spread is run to run).\n\n"
        f"- export: {'ok' if result['ok'] else 'FAILED: ' + str(job.killed or '')} in "
        f"{walls[0]:.0f}–{walls[-1]:.0f} s\n"
        f"- peak anonymous memory {spread(anon)}; peak resident {spread(rss)} (resident "
        "memory also counts pages of the weight files the runtimes read)\n\n"
        + (md_table(["artifact", "GB", "size / float", "cosine"], rows) if rows else "")
    )
    write_results("large_model", {"machine": mach, "result": result}, md)


if __name__ == "__main__":
    main()
