"""Transformer encoders to INT8 against what a user would run without us: ONNX Runtime
and OpenVINO float at their default precision (OpenVINO: bf16 where the CPU has it)
and fp32, ONNX Runtime's ``quantize_dynamic`` (per-channel int8 weights: the recipe
sentence-transformers ships for CPUs) and ``quantize_static`` (QDQ, per-channel,
uint8 activations), NNCF with ``model_type=TRANSFORMER``, and quantship's ONNX Runtime
and OpenVINO artifacts. All from the same model file and the same token data.

Models (Hugging Face ``BertModel`` built from a config, random weights, exported with
the legacy exporter, ``last_hidden_state`` out; nothing is downloaded):
- ``minilm``: the shape of a small published sentence encoder (MiniLM-L6: 6 layers of
  384, 12 heads);
- ``bert-base``: 12 layers of 768.

Data: random token ids with an attention mask (the second half of each sentence
padded at random lengths), ``--length`` tokens, 256 calibration sentences, 64 held out.
Fidelity, against the fp32 model in ONNX Runtime on the held-out sentences: 1 − cosine
of ``last_hidden_state``, the cosine of mean-pooled sentence embeddings (the mask
applied), and how often each held-out sentence keeps its nearest neighbour among the
others. Latency: batch 1 at ``--length`` tokens, 2 threads, every candidate timed
interleaved in one run; then, for ``--sweep-models``, every candidate at each of
``--lengths`` × ``--batches`` (the held-out sentence cut or repeated to the length, as
``bench --lengths`` does), interleaved per point. Export time: quantship's whole export (load, clean-up,
calibration, both backends' artifacts, fidelity) without the latency measurement.

    python benchmarks/transformer_encoders.py [--models minilm,bert-base] [--length 128]

Results: benchmarks/results/transformer_encoders.{json,md}. (Not ``transformers.py``: a
file of that name in this folder would shadow Hugging Face's package for every script
here that builds a model with it, and for mypy.)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "corpus"))

from common import WORK, candidate_fidelity, machine, machine_line, md_table, write_results

THREADS = 2
NAMES = ("input_ids", "attention_mask", "token_type_ids")


def bert_config(name: str) -> Any:
    from transformers import BertConfig

    if name == "minilm":
        return BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6,
                          num_attention_heads=12, intermediate_size=1536)  # fmt: skip
    if name == "bert-base":
        return BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                          num_attention_heads=12, intermediate_size=3072)  # fmt: skip
    raise SystemExit(f"unknown model {name!r}: minilm or bert-base")


def prepare(name: str, length: int, n_calib: int, n_held: int) -> dict[str, Path]:
    import torch
    from families import bert_encoder, tokens

    d = WORK / f"transformers-{name}-{length}"
    paths = {"model": d / "model.onnx", "calib": d / "calib.npz", "held": d / "held.npz"}
    if all(p.exists() for p in paths.values()):
        return paths
    d.mkdir(parents=True, exist_ok=True)
    cfg = bert_config(name)
    ex = tokens(2, 16, cfg.vocab_size, 0)  # ids 1000 … vocab, padded tails, two segments
    dyn = {n: {0: "batch", 1: "sequence"} for n in (*NAMES, "last_hidden_state")}
    torch.onnx.export(
        bert_encoder(cfg), tuple(torch.from_numpy(ex[n]) for n in NAMES), str(paths["model"]),
        input_names=list(NAMES), output_names=["last_hidden_state"], dynamic_axes=dyn,
        opset_version=17, dynamo=False,
    )  # fmt: skip
    np.savez(paths["calib"], allow_pickle=False, **tokens(n_calib, length, cfg.vocab_size, 1))
    np.savez(paths["held"], allow_pickle=False, **tokens(n_held, length, cfg.vocab_size, 2))
    return paths


def feeds(path: Path) -> list[dict[str, npt.NDArray[np.int64]]]:
    with np.load(path) as z:
        arrays = {n: z[n] for n in NAMES}
    return [{n: a[i : i + 1] for n, a in arrays.items()} for i in range(len(arrays[NAMES[0]]))]


def ort_dynamic(model: Path, out: Path) -> float:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    t0 = time.perf_counter()
    quantize_dynamic(model, out, per_channel=True, weight_type=QuantType.QInt8)
    return time.perf_counter() - t0


def ort_optimized_dynamic(model: Path, out: Path, cfg: Any) -> float:
    """ONNX Runtime's transformer optimizer (fused Attention, SkipLayerNormalization,
    FastGelu where it recognises the pattern), then ``quantize_dynamic`` as above: the
    recipe ORT's transformer quantization notebooks follow."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer

    t0 = time.perf_counter()
    opt = optimizer.optimize_model(str(model), model_type="bert", num_heads=cfg.num_attention_heads,
                                   hidden_size=cfg.hidden_size)  # fmt: skip
    fused = out.with_name("ort-optimized.onnx")
    opt.save_model_to_file(str(fused))
    # The optimizer's contrib ops carry no shape-inferred types; without a default type
    # quantize_dynamic stops ("Unable to find data type for weight_name").
    quantize_dynamic(fused, out, per_channel=True, weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})  # fmt: skip
    return time.perf_counter() - t0


def ort_static(model: Path, calib: Path, out: Path) -> float:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.it = iter(feeds(calib))

        def get_next(self) -> dict[str, Any] | None:
            return next(self.it, None)

    t0 = time.perf_counter()
    quantize_static(model, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)  # fmt: skip
    return time.perf_counter() - t0


def nncf_transformer(model: Path, calib: Path, out: Path) -> float:
    import nncf
    import openvino as ov

    t0 = time.perf_counter()
    data = feeds(calib)
    q = nncf.quantize(ov.convert_model(model), nncf.Dataset(data), subset_size=len(data),
                      model_type=nncf.ModelType.TRANSFORMER)  # fmt: skip
    ov.save_model(q, out, compress_to_fp16=False)
    return time.perf_counter() - t0


PREPARED = " [prepared float]"


def quantized_candidates(
    paths: dict[str, Path], d: Path, cfg: Any, tag: str = "", decompose: bool = False
) -> tuple[list[Any], dict[str, float], Any]:
    """From one model file and one calibration set: the float model in ONNX Runtime and
    OpenVINO at each float precision, quantship's export for both, and every peer's
    quantization, as candidates to measure side by side; with the seconds each
    quantization took, and quantship's export result. With ``decompose``, also the
    float model quantship prepared (its graph clean-up and rewrites, before any
    quantization) at each runtime's default precision, and ``quantize_dynamic`` and
    NNCF run on it: what of quantship's lead is its float graph, and what its INT8
    plan (labelled ``[prepared float]``; the user's float stays the baseline)."""
    from quantship import api
    from quantship.backends import registry
    from quantship.backends.base import Artifact
    from quantship.exporter.manifest import artifacts_in
    from quantship.measure.run import Candidate, float_candidates
    from quantship.ui import UI

    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    seconds: dict[str, float] = {}
    print(f"{tag}quantship export (onnxruntime, openvino) ...", flush=True)
    t0 = time.perf_counter()
    res = api.export(paths["model"], paths["calib"], d / "quantship", backends="onnxruntime,openvino",
                     held_out=paths["held"], samples=256, threads=THREADS, bench=False,
                     ui=UI(quiet=True))  # fmt: skip
    seconds["quantship"] = time.perf_counter() - t0
    ort, ov = registry.get("onnxruntime"), registry.get("openvino")
    user_float = Artifact("", "onnx", paths["model"].parent, (paths["model"].name,), "float")
    cands = float_candidates(user_float, [ort, ov])
    for a in artifacts_in(d / "quantship", res.manifest):
        label = f"quantship {a.backend}"
        cands.append(Candidate(label, registry.get(a.backend), a, variant="quantship"))
    model, calib = paths["model"], paths["calib"]
    peers: dict[str, tuple[Path, str, Any, Callable[[Path], float]]] = {
        "ort quantize_dynamic": (d / "ort-dynamic.onnx", "onnx", ort,
                                 lambda o: ort_dynamic(model, o)),
        "ort optimizer + quantize_dynamic": (d / "ort-optimized-dynamic.onnx", "onnx", ort,
                                             lambda o: ort_optimized_dynamic(model, o, cfg)),
        "ort quantize_static": (d / "ort-static.onnx", "onnx-qdq", ort,
                                lambda o: ort_static(model, calib, o)),
        "nncf transformer": (d / "nncf-transformer.xml", "openvino-ir", ov,
                             lambda o: nncf_transformer(model, calib, o)),
    }  # fmt: skip
    if decompose:
        prepared = d / "quantship" / "float" / "model.onnx"
        art = Artifact("", "onnx", prepared.parent, (prepared.name,), "float")
        for c in float_candidates(art, [ort, ov]):
            if c.default:
                cands.append(
                    replace(c, label=c.label + PREPARED, default=False, variant="prepared")
                )
        peers |= {
            "ort quantize_dynamic" + PREPARED: (d / "ort-dynamic-prepared.onnx", "onnx", ort,
                                                lambda o: ort_dynamic(prepared, o)),
            "nncf transformer" + PREPARED: (d / "nncf-transformer-prepared.xml", "openvino-ir", ov,
                                            lambda o: nncf_transformer(prepared, calib, o)),
        }  # fmt: skip
    for label, (out, fmt, b, make) in peers.items():
        print(f"{tag}{label} ...", flush=True)
        seconds[label] = make(out)
        files = (out.name, out.with_suffix(".bin").name) if fmt == "openvino-ir" else (out.name,)
        variant = label.replace(PREPARED, "-prepared").replace(" + ", "-").replace(" ", "-")
        cands.append(Candidate(label, b, Artifact(b.name, fmt, out.parent, files), variant=variant))
    return cands, seconds, res


def run_model(
    name: str,
    length: int,
    duration: float,
    lengths: tuple[int, ...] = (),
    batches: tuple[int, ...] = (1,),
    sweep_s: float = 1.0,
) -> dict[str, Any]:
    from quantship.exporter.load import load_model
    from quantship.measure.run import bench_candidates
    from quantship.measure.timing import BenchSettings

    paths = prepare(name, length, 256, 64)
    cands, seconds, res = quantized_candidates(
        paths,
        WORK / f"transformers-{name}-{length}" / "runs",
        bert_config(name),
        f"[{name}] ",
        decompose=True,
    )
    print(f"[{name}] fidelity of {len(cands)} candidates ...", flush=True)
    fid, _, _ = candidate_fidelity(paths["model"], paths["held"], cands, THREADS, pooling="mean")
    rows: dict[str, dict[str, Any]] = {}
    for c in cands:
        s = fid[c.key].sentence
        assert s is not None
        # "float": a float the user runs without us (the baseline speeds are against).
        rows[c.key] = {"label": c.label, "float": c.is_float and PREPARED not in c.label,
                       "cosine": fid[c.key].cosine,
                       "sentence_cosine": s.cosine, "same_nearest": s.same_nearest,
                       "bytes": c.artifact.size_bytes()}  # fmt: skip
    print(f"[{name}] latency of {len(cands)} candidates, interleaved, batch 1 ...", flush=True)
    fm = load_model(paths["model"])
    bs = BenchSettings(warmup=5, duration=duration * len(cands), min_iterations=20,
                       min_rounds=20, threads=THREADS, batches=(1,))  # fmt: skip
    # Timed on a held-out sentence (random ids would index past the vocabulary).
    for st in bench_candidates(cands, fm.inputs, bs, sample=feeds(paths["held"])[0]):
        if st.mode == "latency":
            rows[st.key]["p50_ms"] = st.p50_ms
    sweep: list[dict[str, Any]] = []
    if lengths:
        print(
            f"[{name}] latency at lengths {lengths}, batch {batches}, interleaved ...", flush=True
        )
        sw = BenchSettings(warmup=3, duration=sweep_s * len(cands), min_iterations=5,
                           min_rounds=8, threads=THREADS, batches=batches, lengths=lengths)  # fmt: skip
        # The held-out sentence cut, or repeated, to each length (bench --lengths does so).
        for st in bench_candidates(cands, fm.inputs, sw, sample=feeds(paths["held"])[0]):
            if st.mode == "latency":
                sweep.append({"key": st.key, "label": st.label, "float": rows[st.key]["float"],
                              "batch": st.batch, "length": st.length, "p50_ms": st.p50_ms})  # fmt: skip
    return {"model": name, "length": length, "export_s": seconds, "candidates": rows,
            "sweep": sweep,
            "plans": {a["backend"]: a.get("plan") for a in res.manifest["artifacts"]}}  # fmt: skip


def sweep_table(results: list[dict[str, Any]]) -> str:
    """p50 at each length and batch, and the speed against the fastest float there."""
    out = ""
    for r in results:
        if not r["sweep"]:
            continue
        points = sorted({(x["batch"], x["length"]) for x in r["sweep"]})
        labels = list(dict.fromkeys(x["label"] for x in r["sweep"]))
        by = {(x["label"], x["batch"], x["length"]): x["p50_ms"] for x in r["sweep"]}
        fastest = {
            pt: min(
                x["p50_ms"] for x in r["sweep"] if x["float"] and (x["batch"], x["length"]) == pt
            )
            for pt in points
        }
        rows = [
            [lab] + [f"{by[(lab, *pt)]:.2f} ({fastest[pt] / by[(lab, *pt)]:.2f}x)" for pt in points]
            for lab in labels
        ]
        out += (
            f"\n\n## {r['model']}: p50 ms (speed against the fastest float there) by batch × "
            "length, interleaved, at least 8 rounds\n\n"
            + md_table(["candidate"] + [f"b{b} × {n}" for b, n in points], rows)
        )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", default="minilm")
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--duration", type=float, default=5.0, help="timed seconds per candidate")
    ap.add_argument("--lengths", default="16,64,128,384", help="the latency sweep's lengths")
    ap.add_argument("--batches", default="1,8", help="the latency sweep's batch sizes")
    ap.add_argument("--sweep-models", default="minilm", help="models given the sweep ('' none)")
    args = ap.parse_args()
    lengths = tuple(int(v) for v in args.lengths.split(",") if v)
    batches = tuple(int(v) for v in args.batches.split(",") if v)
    sweep = set(args.sweep_models.split(","))
    results = [
        run_model(m, args.length, args.duration, lengths if m in sweep else (), batches)
        for m in args.models.split(",")
    ]
    m = machine()
    table = []
    for r in results:
        fastest = min(v["p50_ms"] for v in r["candidates"].values() if v["float"])
        for v in r["candidates"].values():
            table.append([r["model"], v["label"], f"{v['p50_ms']:.2f}", f"{fastest / v['p50_ms']:.2f}x",
                          f"{1 - v['cosine']:.2e}", f"{v['sentence_cosine']:.4f}",
                          f"{v['same_nearest']:.3f}", f"{v['bytes'] / 1e6:.1f}"])  # fmt: skip
    md = (
        "# Transformer encoders to INT8\n\n"
        f"Command: `python benchmarks/transformer_encoders.py --models {args.models} --length {args.length}`\n\n"
        f"Machine: {machine_line(m)}. Batch 1, {args.length} tokens, {THREADS} threads, every "
        "candidate timed interleaved; speed: the fastest float's p50 over the candidate's. "
        "Fidelity against fp32 (ONNX Runtime) on 64 held-out sentences: 1 − cosine of "
        "last_hidden_state, cosine of mean-pooled sentence embeddings, share of sentences "
        "keeping their nearest neighbour. Random weights (built from a config). Rows marked "
        "[prepared float] start from the float model quantship prepared (graph clean-up, the "
        "Softmax NaN guard rewritten; no quantization) instead of the user's file: they show "
        "how much of a lead is that float graph, which every float here could have, and how "
        "much the INT8 plan. Speeds are against the fastest float the user runs without us "
        "(the user's file); the prepared float's rows are not counted in it.\n\n"
        + md_table(
            [
                "model",
                "candidate",
                "p50 ms",
                "speed vs fastest float",
                "1 − cosine",
                "sentence cosine",
                "same nearest",
                "MB",
            ],
            table,
        )
        + sweep_table(results)
        + "\n\nExport / quantization time (s): "
        + "; ".join(
            f"{r['model']}: " + ", ".join(f"{k} {v:.1f}" for k, v in r["export_s"].items())
            for r in results
        )
        + "\n"
    )
    write_results(
        "transformer_encoders", {"machine": m, "args": vars(args), "results": results}, md
    )
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
