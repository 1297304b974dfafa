"""Scale-out: calibration sharded over Ray workers, the merge cost per number of
shards, the accuracy guard's evaluations serial vs parallel, the server scenario's
achieved rate against the asked one, and the runtime-only install's import time.

    python benchmarks/scale_out.py [--models detector320] [--samples 256]

What this machine can show: it has 2 cores, so 2 workers is the ceiling of any speedup
here and 4 workers on 2 cores measure the cost of oversubscription, not scaling. The
extrapolation to N machines uses what is measured: per-worker throughput, the driver's
serial work (hashing the data in order, shipping the model) and the merge time at that
many shards (Amdahl: T(N) = serial + T_calib / N + merge(N)).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import WORK, machine, machine_line, md_table, parser, prepare, write_results


def _table_bytes(table: Any) -> bytes:
    return str(table.to_text()).encode()


def calibration_scaling(name: str, samples: int, held: int) -> dict[str, Any]:
    import ray

    from quantship.calibration.runner import calibrate
    from quantship.calibration.sources import open_data
    from quantship.exporter.load import load_model
    from quantship.fleet import calibrate_sharded, data_sha256, local_cluster

    paths = prepare(name, samples, held)
    fm = load_model(paths["model"])
    data = open_data(paths["calib"], fm.inputs, role="calibration")
    print(f"[{name}] single process, {samples} samples", flush=True)
    t0 = time.perf_counter()
    local = calibrate(fm, data, samples=samples)
    t_local = time.perf_counter() - t0
    t0 = time.perf_counter()
    data_sha256(data, samples)
    t_hash = time.perf_counter() - t0
    rows = [{"workers": 0, "shards": 1, "seconds": round(t_local, 2),
             "samples_per_s": round(samples / t_local, 2), "identical": True}]  # fmt: skip
    for workers in (1, 2, 4):
        # A one-node cluster of `workers` CPUs on this machine, started and stopped here.
        with local_cluster([{}], cpus_per_node=workers) as address:
            try:
                print(f"[{name}] Ray, {workers} worker(s)", flush=True)
                t0 = time.perf_counter()
                table, sharding = calibrate_sharded(
                    fm, data, samples=samples, histograms=True, address=address, shards=workers
                )
                secs = time.perf_counter() - t0
            finally:
                ray.shutdown()
        rows.append({"workers": workers, "shards": sharding.shards, "seconds": round(secs, 2),
                     "samples_per_s": round(samples / secs, 2),
                     "identical": _table_bytes(table) == _table_bytes(local)})  # fmt: skip
    # Merge cost: the pass split into k shards in this process (the same work as one
    # pass), then only the merge timed.
    merges = []
    for k in (2, 4, 8, 16, 32, 64):
        per = samples // k
        tables = [calibrate(fm, data, samples=per, start=i * per) for i in range(k)]
        t0 = time.perf_counter()
        merged = tables[0]
        for t in tables[1:]:
            merged = merged.merge(t)
        merges.append({"shards": k, "merge_s": round(time.perf_counter() - t0, 4),
                       "tensors": len(merged)})  # fmt: skip
        print(f"[{name}] merge of {k} shards: {merges[-1]['merge_s']} s", flush=True)
    per_worker = rows[1]["samples_per_s"]  # one Ray worker: the cluster's overhead included
    t_calib = samples / per_worker
    merge_at = {m["shards"]: m["merge_s"] for m in merges}
    extrapolated = []
    for n in (2, 4, 8, 16, 64):
        merge = merge_at.get(n, merges[-1]["merge_s"] * n / merges[-1]["shards"])
        total = t_hash + t_calib / n + merge
        extrapolated.append({"machines": n, "seconds": round(total, 2),
                             "samples_per_s": round(samples / total, 1),
                             "speedup": round((t_hash + t_calib) / total, 2)})  # fmt: skip
    return {"model": name, "samples": samples, "local": rows[0], "ray": rows[1:],
            "hash_s": round(t_hash, 3), "merges": merges, "extrapolated": extrapolated}  # fmt: skip


def guard_parallel(name: str, samples: int, held: int, budget: float) -> dict[str, Any]:
    """The same guarded export in one process and with its evaluations on a local Ray
    cluster of 2 single-CPU nodes (this machine's 2 cores)."""
    from quantship.fleet import local_cluster

    paths = prepare(name, samples, held)
    out: dict[str, Any] = {"model": name, "budget": budget}
    # ONNX Runtime's float kernels round differently at another thread count, and a
    # guard whose regions' errors are close ranks them differently: the Ray tasks run
    # one thread each, so the one-thread serial run is the one they must equal.
    for mode in ("serial", "serial --threads 1", "ray --threads 1"):
        with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
            cmd = [sys.executable, "-m", "quantship", "export", str(paths["model"]), "--calib",
                   str(paths["calib"]), "--held-out", str(paths["held"]), "--max-drop",
                   str(budget), "--no-bench", "-q", "--out", str(Path(tmp) / "o"),
                   "--backend", "onnxruntime"]  # fmt: skip
            if "--threads 1" in mode:
                cmd += ["--threads", "1"]
            if mode.startswith("ray"):
                cmd += ["--ray", stack.enter_context(local_cluster([{}, {}]))]
            env = dict(os.environ, QUANTSHIP_CACHE_DIR=str(Path(tmp) / "cache"))
            print(f"[{name}] guarded export, {mode}", flush=True)
            t0 = time.perf_counter()
            p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=7200)
            secs = time.perf_counter() - t0
            if p.returncode != 0:
                raise SystemExit(p.stderr[-2000:])
            m = json.loads((Path(tmp) / "o" / "manifest.json").read_text())
            g = m["artifacts"][0]["accuracy_guard"]
            out[mode] = {"export_s": round(secs, 1), "guard_s": g["seconds"],
                         "evaluations": g["evaluations"], "float_nodes": len(g["float_nodes"]),
                         "after": g["after"], "float_node_names": sorted(g["float_nodes"])}  # fmt: skip
    out["errors"] = same_errors(paths, 12)
    out["identical_decision"] = (out["serial --threads 1"]["float_node_names"]
                                 == out["ray --threads 1"]["float_node_names"])  # fmt: skip
    return out


def same_errors(paths: dict[str, Path], n: int) -> dict[str, Any]:
    """The guard's region-by-region errors (each region alone in INT8) for the first
    ``n`` regions, in this process and as Ray tasks, both on one thread: the values the
    ranking is made of, compared exactly."""
    from dataclasses import replace

    from quantship.backends import registry
    from quantship.backends.base import PlanOptions
    from quantship.calibration.runner import calibrate
    from quantship.calibration.sources import open_data
    from quantship.exporter.load import load_model
    from quantship.fleet import local_cluster
    from quantship.guard import Evaluator, held_feeds, quantizable_nodes
    from quantship.guard_regions import guard_regions

    fm = load_model(paths["model"])
    table = calibrate(fm, open_data(paths["calib"], fm.inputs, role="calibration"), samples=64)
    held = open_data(paths["held"], fm.inputs, role="held-out")
    feeds = held_feeds(held, 0, None, 16, fm.fixed_batch)
    b = registry.get("onnxruntime")
    options = PlanOptions()
    regions = guard_regions(fm, quantizable_nodes(fm, table, b, options))[:n]
    every = frozenset(x for r in regions for x in r)
    plans = [replace(options, float_nodes=every - set(r)) for r in regions]
    serial = Evaluator(fm, table, b, feeds, threads=1).errors(plans)
    with local_cluster([{}, {}]) as address:
        import ray

        try:
            parallel = Evaluator(fm, table, b, feeds, threads=1, ray=address).errors(plans)
        finally:
            ray.shutdown()
    return {"regions": len(plans), "identical": serial == parallel,
            "max_abs_diff": max(abs(a - c) for a, c in zip(serial, parallel, strict=True))}  # fmt: skip


def server_rate(name: str, samples: int, held: int) -> dict[str, Any]:
    """The server scenario at half and at 90 % of the INT8 model's offline throughput:
    the rate achieved against the rate asked."""
    paths = prepare(name, samples, held)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "o"
        subprocess.run([sys.executable, "-m", "quantship", "export", str(paths["model"]),
                        "--calib", str(paths["calib"]), "--no-bench", "-q", "--out", str(out),
                        "--backend", "onnxruntime"], check=True, timeout=3600)  # fmt: skip
        js = Path(tmp) / "off.json"
        subprocess.run([sys.executable, "-m", "quantship", "bench", str(out), "-q",
                        "--scenario", "offline", "--scenario-seconds", "6", "--json", str(js)],
                       check=True, timeout=600)  # fmt: skip
        off = {r["key"]: r["qps"] for r in json.loads(js.read_text())["results"]}
        rows = []
        for share in (0.5, 0.9):
            qps = round(off["onnxruntime:int8"] * share, 1)
            subprocess.run([sys.executable, "-m", "quantship", "bench", str(out), "-q",
                            "--scenario", "server", "--qps", str(qps), "--scenario-seconds", "20",
                            "--json", str(js)], check=True, timeout=600)  # fmt: skip
            for r in json.loads(js.read_text())["results"]:
                rows.append({"key": r["key"], "share_of_offline": share, "asked": r["target_qps"],
                             "achieved": r["qps"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
                             "ratio": round(r["qps"] / r["target_qps"], 4)})  # fmt: skip
    return {"model": name, "offline_qps": off, "rows": rows}


def import_time() -> dict[str, Any]:
    """A fresh venv with the wheel, numpy and onnxruntime only: how long importing what
    ``quantship bench`` imports takes (median of 7 fresh interpreters), the runtime's own
    import apart."""
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                        "-q", "-w", tmp, str(root)], check=True)  # fmt: skip
        wheel = next(Path(tmp).glob("quantship-*.whl"))
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        py = venv / "bin" / "python"
        subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel), "numpy", "onnxruntime"],
                       check=True)  # fmt: skip
        code = ("import time; t=time.perf_counter(); import quantship.cli, quantship.measure.command, "
                "quantship.measure.targets, quantship.backends.onnxruntime; t1=time.perf_counter(); "
                "import onnxruntime; t2=time.perf_counter(); print(t1-t, t2-t1)")  # fmt: skip
        ours, rt = [], []
        for _ in range(7):
            a, b = subprocess.run([str(py), "-c", code], capture_output=True, text=True,
                                  check=True).stdout.split()  # fmt: skip
            ours.append(float(a))
            rt.append(float(b))
    ours.sort()
    rt.sort()
    return {"quantship_s": round(ours[3], 3), "onnxruntime_s": round(rt[3], 3)}


def main() -> None:
    ap = parser(__doc__, models="detector320")
    ap.add_argument("--guard-model", default="detector320")
    ap.add_argument("--budget", type=float, default=0.0001)
    ap.add_argument("--server-model", default="resnet18")
    ap.add_argument(
        "--skip", default="", help="comma list of parts to skip: calib,guard,server,import"
    )
    args = ap.parse_args()
    skip = set(args.skip.split(","))
    res: dict[str, Any] = {"machine": machine(), "work": str(WORK)}
    from common import RESULTS

    earlier = RESULTS / "scale_out.json"
    if skip - {""} and earlier.exists():  # parts not rerun keep their earlier figures
        res.update({k: v for k, v in json.loads(earlier.read_text()).items()
                    if k in ("calibration", "guard", "server", "import")})  # fmt: skip
    if "calib" not in skip:
        res["calibration"] = [calibration_scaling(m, args.samples, args.held)
                              for m in args.models.split(",")]  # fmt: skip
    if "guard" not in skip:
        res["guard"] = guard_parallel(args.guard_model, args.samples, args.held, args.budget)
    if "server" not in skip:
        res["server"] = server_rate(args.server_model, args.samples, args.held)
    if "import" not in skip:
        res["import"] = import_time()
    write_results("scale_out", res, markdown(res))


def markdown(res: dict[str, Any]) -> str:
    out = ["# Scale-out\n", f"Machine: {machine_line(res['machine'])}. Command: "
           "`python benchmarks/scale_out.py`.\n"]  # fmt: skip
    for c in res.get("calibration", []):
        out.append(f"\n## Calibration of {c['model']}, {c['samples']} samples\n")
        rows = [["single process", "1", f"{c['local']['seconds']}", f"{c['local']['samples_per_s']}",
                 "-"]]  # fmt: skip
        rows += [[f"Ray, {r['workers']} worker(s)", str(r["shards"]), f"{r['seconds']}",
                  f"{r['samples_per_s']}", "yes" if r["identical"] else "NO"] for r in c["ray"]]  # fmt: skip
        out.append(md_table(["run", "shards", "s", "samples/s", "table identical"], rows))
        out.append(f"\nThe driver hashes the data in order (for the table's data_sha256): "
                   f"{c['hash_s']} s, serial.\n\nMerge time by number of shards:\n")  # fmt: skip
        out.append(md_table(["shards", "merge s"], [[str(m["shards"]), f"{m['merge_s']}"]
                                                    for m in c["merges"]]))  # fmt: skip
        out.append("\nExtrapolated to N machines (one worker each, this machine's per-worker "
                   "throughput, the measured merge and hashing):\n")  # fmt: skip
        out.append(md_table(["machines", "s", "samples/s", "speedup"],
                            [[str(e["machines"]), f"{e['seconds']}", f"{e['samples_per_s']}",
                              f"{e['speedup']}x"] for e in c["extrapolated"]]))  # fmt: skip
    g = res.get("guard")
    if g:
        out.append(f"\n## Accuracy guard on {g['model']} (--max-drop {g['budget']})\n")
        out.append(md_table(["run", "export s", "guard s", "evaluations", "float nodes", "1 - cos after"],
                            [[k, str(g[k]["export_s"]), str(g[k]["guard_s"]), str(g[k]["evaluations"]),
                              str(g[k]["float_nodes"]), f"{g[k]['after']:.3g}"]
                             for k in ("serial", "serial --threads 1", "ray --threads 1")]))  # fmt: skip
        e = g["errors"]
        out.append(
            f"\nThe regions' errors (each region alone in INT8; the first {e['regions']}), in one "
            f"process and as Ray tasks, one thread each: "
            f"{'identical' if e['identical'] else 'max difference ' + format(e['max_abs_diff'], '.3g')}. "
            "The regions kept float are not the same from run to run even in one process "
            f"(serial runs above: {g['serial']['float_nodes']} and "
            f"{g['serial --threads 1']['float_nodes']} nodes): the ranking divides each "
            "region's error by its measured latency cost, and those timings vary.\n"
        )
    s = res.get("server")
    if s:
        out.append(f"\n## Server scenario on {s['model']} (20 s per model, Poisson arrivals)\n")
        out.append(md_table(["model", "share of offline", "asked qps", "achieved qps", "ratio", "p50 ms", "p99 ms"],
                            [[r["key"], f"{r['share_of_offline']}", f"{r['asked']}", f"{r['achieved']}",
                              f"{r['ratio']}", f"{r['p50_ms']}", f"{r['p99_ms']}"] for r in s["rows"]]))  # fmt: skip
    i = res.get("import")
    if i:
        out.append(f"\n## Runtime-only install\n\nImporting what `quantship bench` imports "
                   f"(numpy included): {i['quantship_s']} s; onnxruntime itself then "
                   f"{i['onnxruntime_s']} s (median of 7 fresh interpreters).\n")  # fmt: skip
    return "".join(out)


if __name__ == "__main__":
    main()
