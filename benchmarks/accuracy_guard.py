"""The accuracy guard on models where plain INT8 misses the budget: a BERT-like
encoder (4 layers, sequence length 128) and the YOLOv8n-sized detector (at 320×320,
to keep the search's evaluations affordable on 2 cores). Both keep random weights on
purpose (the detector with BatchNorm statistics from real images), unlike the other
benchmarks' trained CNNs (pretrain.py): a random BatchNorm network amplifies
quantization noise, which makes it a model that plain INT8 hurts, the case the guard is
for. The trained detector loses only 1 − cosine ≈ 0.0006 to INT8, with nothing to guard.

    python benchmarks/accuracy_guard.py

Per model: quantship export without and with ``--max-drop`` (measure 1 − cosine to
float, on the held-out samples: ``--held 100`` by default, as many as the guard
measures on) for ONNX Runtime and OpenVINO; latency of float, plain INT8 and guarded
INT8 measured in one run; the search's evaluations and time. Every export starts from
an empty decision cache. For OpenVINO, NNCF's ``quantize_with_accuracy_control`` with
the same measure and budget runs in a watched process. Results:
benchmarks/results/accuracy_guard.{json,md}.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import WORK, machine, md_table, parser, run_watched, write_results

BUDGETS = {"bert": 0.002, "detector320": 0.05}


def prepare(name: str, n_calib: int, n_held: int) -> dict[str, Path]:
    import numpy as np

    from quantship import examples

    d = WORK / f"guard-{name}"
    d.mkdir(parents=True, exist_ok=True)
    paths = {"model": d / "float.onnx", "calib": d / "calib.npz", "held": d / "held.npz"}
    if all(p.exists() for p in paths.values()):
        return paths
    if name == "bert":
        net: Any = examples.BertLike().eval()
        from quantship.exporter.torch_export import export_module

        paths["model"].write_bytes(
            export_module(net, {"hidden": (1, 128, 256)}).SerializeToString()
        )
        np.savez(paths["calib"], hidden=examples.token_embeddings(n_calib, seed=1))
        np.savez(paths["held"], hidden=examples.token_embeddings(n_held, seed=2))
    else:
        net = examples.build("detector640", examples.sample_images(32, 320, seed=1))
        examples.to_onnx(net, 320, str(paths["model"]))
        np.savez(paths["calib"], images=examples.sample_images(n_calib, 320, seed=2))
        np.savez(paths["held"], images=examples.sample_images(n_held, 320, seed=3))
    return paths


def fresh_cache(d: Path) -> None:
    """Each export decides afresh: a plan or guard decision cached by an earlier run (or
    by the export before it) would report that run's search, not this one's."""
    shutil.rmtree(d, ignore_errors=True)
    os.environ["QUANTSHIP_CACHE_DIR"] = str(d)


def main() -> int:
    from quantship import api
    from quantship.ui import UI

    ap = parser(__doc__, models="bert,detector320", samples=128, held=100)
    args = ap.parse_args()
    quiet = UI(quiet=True)
    rows, results = [], []
    for name in args.models.split(","):
        paths = prepare(name, args.samples, args.held)
        budget = BUDGETS[name]
        for backend in ("onnxruntime", "openvino"):
            print(f"[{name}] {backend}: plain INT8 ...", flush=True)
            cache = WORK / f"guard-{name}" / "cache"
            fresh_cache(cache)
            plain = api.export(
                paths["model"],
                paths["calib"],
                WORK / f"guard-{name}" / f"plain-{backend}",
                backends=backend,
                held_out=paths["held"],
                samples=args.samples,
                threads=2,
                ui=quiet,
            )
            print(f"[{name}] {backend}: guarded, --max-drop {budget} ...", flush=True)
            fresh_cache(cache)
            t0 = time.perf_counter()
            guarded = api.export(
                paths["model"],
                paths["calib"],
                WORK / f"guard-{name}" / f"guarded-{backend}",
                backends=backend,
                held_out=paths["held"],
                samples=args.samples,
                max_drop=budget,
                threads=2,
                ui=quiet,
            )
            wall = time.perf_counter() - t0
            # The whole run without the latency measurement, the scope NNCF's figure has:
            # load, calibrate, guard search, write, fidelity.
            fresh_cache(cache)
            t0 = time.perf_counter()
            api.export(
                paths["model"], paths["calib"], WORK / f"guard-{name}" / f"whole-{backend}",
                backends=backend, held_out=paths["held"], samples=args.samples,
                max_drop=budget, threads=2, bench=False, ui=quiet,
            )  # fmt: skip
            whole = time.perf_counter() - t0
            pa, ga = plain.manifest["artifacts"][0], guarded.manifest["artifacts"][0]
            g = ga["accuracy_guard"]
            float_p50 = next(
                b["p50_ms"]
                for b in guarded.manifest["baselines"]
                if b["backend"] == backend and b["default"]
            )
            r: dict[str, Any] = {
                "model": name,
                "backend": backend,
                "budget": budget,
                "plain_error": 1 - pa["fidelity"]["cosine"],
                "guarded_error": 1 - ga["fidelity"]["cosine"],
                "guard": g,
                "float_p50_ms": float_p50,
                "export_wall_s": wall,
                "whole_run_s": whole,
            }
            results.append(r)
            rows.append(
                [
                    name,
                    backend,
                    f"{budget:g}",
                    f"{r['plain_error']:.4f}",
                    f"{r['guarded_error']:.4f}",
                    f"{len(g['float_regions'])} ({len(g['float_nodes'])})",
                    f"{float_p50:.2f}",
                    f"{g.get('p50_ms_all_int8', pa['latency'][0]['p50_ms']):.2f}",
                    f"{g.get('p50_ms_guarded', ga['latency'][0]['p50_ms']):.2f}",
                    f"{g['evaluations']} / {g['seconds']:.0f} s",
                    f"{whole:.0f} s",
                ]
            )
            print(rows[-1], flush=True)
        print(f"[{name}] NNCF quantize_with_accuracy_control ...", flush=True)
        out = WORK / f"guard-{name}" / "nncf-ac.xml"
        w = run_watched(
            [
                "nncf_ac",
                str(paths["model"]),
                str(paths["calib"]),
                str(paths["held"]),
                str(out),
                str(args.samples),
                str(budget),
            ],
            12 * 1024,
            1800,
        )
        nn: dict[str, Any] = {
            "model": name,
            "nncf_ac": {
                "ok": w.ok,
                "killed": w.killed,
                "report": w.report,
                "error": None if w.ok else w.stderr_tail[-800:],
            },
        }
        if w.ok:
            from quantship.backends import registry
            from quantship.backends.base import Artifact, SessionSettings
            from quantship.calibration.sources import open_data
            from quantship.exporter.load import load_model
            from quantship.measure.fidelity import FidelityMeter

            fm = (
                load_model(paths["model"], data_shapes=None)
                if name != "bert"
                else load_model(paths["model"], input_shapes={"hidden": (1, 128, 256)})
            )
            ov = registry.get("openvino")
            # The reference is the fp32 model, as the guard's own measure is.
            ref = ov.session(
                Artifact("", "onnx", paths["model"].parent, (paths["model"].name,), "float"),
                SessionSettings(threads=2, precision="fp32"),
            )
            sess = ov.session(
                Artifact("openvino", "openvino-ir", out.parent, (out.name,)),
                SessionSettings(threads=2),
            )
            meter = FidelityMeter(fm.outputs)
            for feed in open_data(paths["held"], fm.inputs, role="held-out").samples():
                meter.update(ref.run(feed), sess.run(feed))
            nn["nncf_ac"]["error_after"] = 1 - meter.result("held").cosine
            rows.append(
                [
                    name,
                    "NNCF AC (openvino)",
                    f"{budget:g}",
                    "-",
                    f"{nn['nncf_ac']['error_after']:.4f}",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    f"{w.report['quantize_s']:.0f} s",
                ]
            )
        else:
            rows.append(
                [
                    name,
                    "NNCF AC (openvino)",
                    f"{budget:g}",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    w.killed or "failed",
                ]
            )
        results.append(nn)
        print(rows[-1], flush=True)
    md = (
        "# Accuracy guard\n\n"
        f"Command: `python benchmarks/accuracy_guard.py --models {args.models}`\n\n"
        f"Machine: {machine()}. Error: 1 − cosine to float on {args.held} held-out samples. Latency: p50 ms, "
        "batch 1, 2 threads, float / all-INT8 / guarded INT8 timed interleaved in the guarded export's run. "
        "p50 float: the runtime's default float precision. Search: evaluations / seconds of the "
        "guard's search. Whole run: model in, guarded artifact written and measured for "
        "fidelity (quantship: `export --max-drop` without the latency measurement; NNCF: "
        "convert_model, quantize_with_accuracy_control, save_model), the same scope for both.\n\n"
        + md_table(
            [
                "model",
                "backend",
                "budget",
                "error INT8",
                "error guarded",
                "float regions (nodes)",
                "p50 float",
                "p50 INT8",
                "p50 guarded",
                "search",
                "whole run",
            ],
            rows,
        )
    )
    write_results(
        "accuracy_guard", {"machine": machine(), "args": vars(args), "results": results}, md
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
