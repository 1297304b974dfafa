"""What each transformer plan choice is worth, on the MiniLM-shaped encoder of
``transformer_encoders.py`` (the same model file and token data), timed side by side:

- the Softmax NaN guard's rewrite (``exporter/softmax_guard.py``): quantship's exports
  with the rewrite switched off (the graph as the user's file has it) against the
  default, for ONNX Runtime and OpenVINO, beside ``quantize_dynamic`` and NNCF's
  transformer preset on the user's file;
- ONNX Runtime's attention products: float (the rule plan) against INT8
  (``--plan attention-int8``);
- SmoothQuant on ONNX Runtime: ``--algorithms auto`` (on for these models) against
  ``none``, with attention products float.

Latency: batch 1 at each of ``--lengths`` tokens, 2 threads, every candidate
interleaved per length. Fidelity on the 64 held-out sentences against fp32 in ONNX
Runtime: 1 − cosine of ``last_hidden_state``, sentence-embedding cosine (mean pooling)
and nearest-neighbour agreement.

    python benchmarks/transformer_plans.py [--lengths 16,128,384]

Results: benchmarks/results/transformer_plans.{json,md}.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "corpus"))

from common import WORK, candidate_fidelity, machine, machine_line, md_table, write_results
from transformer_encoders import feeds, nncf_transformer, ort_dynamic, prepare

THREADS = 2
# label → (backend, export options, guard rewrite on)
EXPORTS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "quantship openvino": ("openvino", {}, True),
    "quantship openvino, guard kept": ("openvino", {}, False),
    "quantship onnxruntime": ("onnxruntime", {}, True),
    "quantship onnxruntime, guard kept": ("onnxruntime", {}, False),
    "quantship onnxruntime, attention-int8": ("onnxruntime", {"plan": "attention-int8"}, True),
    "quantship onnxruntime, --algorithms none": ("onnxruntime", {"algorithms": "none"}, True),
}


def export(
    label: str, backend: str, extra: dict[str, Any], guard: bool, paths: Any, d: Path
) -> Any:
    import quantship.exporter.prepare as prep
    from quantship import api
    from quantship.ui import UI

    names = vars(prep)  # prepare() calls the rewrite by this module-level name
    saved = names["rewrite_softmax_guards"]
    if not guard:
        names["rewrite_softmax_guards"] = lambda model: 0
    try:
        print(f"{label} ...", flush=True)
        return api.export(paths["model"], paths["calib"], d, backends=backend, samples=256,
                          held_out=paths["held"],
                          threads=THREADS, bench=False, ui=UI(quiet=True), **extra)  # fmt: skip
    finally:
        names["rewrite_softmax_guards"] = saved


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--lengths", default="16,128,384")
    ap.add_argument("--duration", type=float, default=2.0, help="seconds per candidate a round")
    args = ap.parse_args()
    lengths = tuple(int(v) for v in args.lengths.split(","))

    from quantship.backends import registry
    from quantship.backends.base import Artifact
    from quantship.exporter.load import load_model
    from quantship.exporter.manifest import artifacts_in
    from quantship.measure.run import Candidate, bench_candidates, float_candidates
    from quantship.measure.timing import BenchSettings

    paths = prepare("minilm", 128, 256, 64)
    root = WORK / "transformer-plans"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    ort, ov = registry.get("onnxruntime"), registry.get("openvino")
    user = Artifact("", "onnx", paths["model"].parent, (paths["model"].name,), "float")
    cands = [c for c in float_candidates(user, [ort, ov]) if c.default]
    prepared: Path | None = None
    for i, (label, (backend, extra, guard)) in enumerate(EXPORTS.items()):
        d = root / f"q{i}"
        res = export(label, backend, extra, guard, paths, d)
        for a in artifacts_in(d, res.manifest):
            cands.append(Candidate(label, registry.get(a.backend), a, variant=f"q{i}"))
        if guard and prepared is None:
            prepared = d / "float" / "model.onnx"
    assert prepared is not None
    art = Artifact("", "onnx", prepared.parent, (prepared.name,), "float")
    cands += [
        Candidate(c.label + " [prepared float]", c.backend, art, c.precision, variant="prepared")
        for c in float_candidates(art, [ov])
        if c.default
    ]
    print("ort quantize_dynamic, nncf transformer ...", flush=True)
    qd, nn = root / "ort-dynamic.onnx", root / "nncf-transformer.xml"
    ort_dynamic(paths["model"], qd)
    nncf_transformer(paths["model"], paths["calib"], nn)
    cands += [
        Candidate("ort quantize_dynamic", ort, Artifact("onnxruntime", "onnx", root, (qd.name,)),
                  variant="qd"),
        Candidate("nncf transformer", ov, Artifact("openvino", "openvino-ir", root,
                  (nn.name, nn.with_suffix(".bin").name)), variant="nncf"),
    ]  # fmt: skip
    print(f"fidelity of {len(cands)} candidates ...", flush=True)
    fid, _, _ = candidate_fidelity(paths["model"], paths["held"], cands, THREADS, pooling="mean")
    print(f"latency at {lengths} tokens, interleaved ...", flush=True)
    fm = load_model(paths["model"])
    bs = BenchSettings(warmup=3, duration=args.duration * len(cands), min_iterations=5,
                       min_rounds=10, threads=THREADS, batches=(1,), lengths=lengths)  # fmt: skip
    p50: dict[tuple[str, int], float] = {}
    for st in bench_candidates(cands, fm.inputs, bs, sample=feeds(paths["held"])[0]):
        if st.mode == "latency" and st.length is not None:
            p50[(st.key, st.length)] = st.p50_ms
    rows, results = [], []
    for c in cands:
        f = fid[c.key]
        s = f.sentence
        assert s is not None
        r = {"label": c.label, "key": c.key, "cosine": f.cosine, "sentence_cosine": s.cosine,
             "same_nearest": s.same_nearest,
             "p50_ms": {str(n): p50[(c.key, n)] for n in lengths}}  # fmt: skip
        results.append(r)
        rows.append([c.label] + [f"{p50[(c.key, n)]:.2f}" for n in lengths]
                    + [f"{1 - f.cosine:.2e}", f"{s.same_nearest:.3f}"])  # fmt: skip
    m = machine()
    md = (
        "# Transformer plan choices, measured\n\n"
        f"Command: `python benchmarks/transformer_plans.py --lengths {args.lengths}`\n\n"
        f"Machine: {machine_line(m)}. MiniLM-shaped encoder (6 × 384, 12 heads, random "
        "weights), batch 1, 2 threads, p50 ms, every candidate timed interleaved at each "
        "length. Fidelity on 64 held-out sentences against fp32 (ONNX Runtime). 'guard "
        "kept': the export with the Softmax NaN guard's rewrite switched off (the graph "
        "as the user's file has it). Peers run on the user's file.\n\n"
        + md_table(
            ["candidate"] + [f"{n} tokens" for n in lengths] + ["1 − cosine", "same nearest"], rows
        )
        + "\n"
    )
    write_results("transformer_plans", {"machine": m, "args": vars(args), "results": results}, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
