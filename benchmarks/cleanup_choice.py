"""Which library cleans up published graphs before calibration: measured, not assumed.

Candidates, each on the graph families of tests/corpus at benchmark scale:
- ``as exported``: no clean-up (what the graph would be without one);
- ``onnxslim``: ``onnxslim.slim`` with its defaults;
- ``onnxscript``: ``onnxscript.optimizer.optimize`` with its defaults;
- ``ort basic``: ONNX Runtime's basic offline optimisation (``ORT_ENABLE_BASIC``,
  ``optimized_model_filepath``): constant folding and redundant-node removal only;
- ``ort quant_pre_process``: ONNX Runtime's pre-processing for its quantizer (symbolic
  shape inference, then the same optimisation);
- ``quantship``: what ``export`` does: onnxslim with weights hidden where folding would
  grow them or load external data (exporter/prepare.py).

For each: nodes left (fewer: more folded), ``Constant``/``Identity``/``Dropout``/
``BatchNormalization`` nodes left, bytes as saved against the user's file, the largest
output difference from the user's model (both run in ONNX Runtime with its own
optimisations off, so only the clean-up differs) and the time taken.

    python benchmarks/cleanup_choice.py [--families a,b,...]
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from common import WORK, machine, machine_line, md_table, write_results

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "corpus"))
import families

FAMILIES = "torch_legacy_cnn,constant_weights,noop_chains,bert_legacy,bert_dynamo,vit,external_data"
Clean = Callable[[onnx.ModelProto, Path], onnx.ModelProto]


def _as_exported(m: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    return m


def _onnxslim(m: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    import onnxslim

    out: onnx.ModelProto = onnxslim.slim(m)
    return out


def _onnxscript(m: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    import onnxscript.optimizer

    out: onnx.ModelProto = onnxscript.optimizer.optimize(m)
    return out


def _ort_basic(m: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as d:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(Path(d) / "o.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return onnx.load(str(Path(d) / "o.onnx"))


def _ort_pre(m: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    import contextlib

    from onnxruntime.quantization.shape_inference import quant_pre_process

    # It writes temporary files (external data, sym_shape_infer_temp.onnx) into the
    # working directory: run it inside a temporary one.
    with tempfile.TemporaryDirectory() as d, contextlib.chdir(d):
        quant_pre_process(str(path), str(Path(d) / "o.onnx"))
        return onnx.load(str(Path(d) / "o.onnx"))


def _quantship(m: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    from quantship.exporter.load import load_model

    fm = load_model(path)
    if fm.weights_dir is not None:
        onnx.external_data_helper.load_external_data_for_model(fm.proto, str(fm.weights_dir))
    return fm.proto


CANDIDATES: dict[str, Clean] = {
    "as exported": _as_exported,
    "onnxslim": _onnxslim,
    "onnxscript": _onnxscript,
    "ort basic": _ort_basic,
    "ort quant_pre_process": _ort_pre,
    "quantship": _quantship,
}


def _saved_bytes(m: onnx.ModelProto) -> int:
    c = copy.deepcopy(m)
    del c.graph.value_info[:]
    return int(c.ByteSize())


def _run(m: onnx.ModelProto, feeds: dict[str, Any]) -> list[Any]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return list(s.run(None, feeds))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default=FAMILIES)
    args = ap.parse_args()
    root = WORK / "cleanup"
    results: list[dict[str, Any]] = []
    pages: list[str] = []
    for name in args.families.split(","):
        print(f"[{name}] building", flush=True)
        fam = families.build(name, root, "bench")
        original = onnx.load(str(fam.model), load_external_data=True)
        size_in = _saved_bytes(original)
        feeds = {k: v[:2] for k, v in np.load(fam.held_out).items()}
        expected = _run(original, feeds)
        rows = []
        for cand, fn in CANDIDATES.items():
            t0 = time.perf_counter()
            try:
                out = fn(copy.deepcopy(original), fam.model)
                err = None
            except Exception as e:
                out, err = None, f"{type(e).__name__}: {str(e).splitlines()[0][:100]}"
            seconds = time.perf_counter() - t0
            entry: dict[str, Any] = {"family": name, "candidate": cand, "seconds": seconds}
            if out is None:
                entry["error"] = err
                rows.append([cand, "failed", "-", "-", "-", "-", err or "", f"{seconds:.2f}"])
                results.append(entry)
                continue
            ops = Counter(n.op_type for n in out.graph.node)
            got = _run(out, feeds)
            diff = max(
                float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
                for a, b in zip(expected, got, strict=True)
            )
            entry.update(
                nodes=len(out.graph.node),
                constant=ops["Constant"],
                identity_dropout=ops["Identity"] + ops["Dropout"],
                batchnorm=ops["BatchNormalization"],
                size_ratio=_saved_bytes(out) / size_in,
                max_abs_diff=diff,
            )
            results.append(entry)
            rows.append(
                [
                    cand,
                    str(len(out.graph.node)),
                    str(ops["Constant"]),
                    str(ops["Identity"] + ops["Dropout"]),
                    str(ops["BatchNormalization"]),
                    f"{entry['size_ratio']:.3f}",
                    f"{diff:.1e}",
                    f"{seconds:.2f}",
                ]
            )
            print(f"  {cand:22s} {rows[-1][1:]}", flush=True)
        headers = ["candidate", "nodes", "Constant", "Identity+Dropout", "BN", "bytes / input"]
        headers += ["max abs diff", "seconds"]
        pages.append(
            f"### {name} ({len(original.graph.node)} nodes, {size_in / 1e6:.1f} MB)\n\n"
            + md_table(headers, rows)
        )
    m = machine()
    md = (
        "# Graph clean-up before calibration: which library\n\n"
        f"`python benchmarks/cleanup_choice.py`, on {machine_line(m)}. Families from "
        "`tests/corpus/families.py` at benchmark scale. Output difference: both models run "
        "in ONNX Runtime with its optimisations off.\n\n" + "\n".join(pages)
    )
    write_results("cleanup_choice", {"machine": m, "results": results}, md)


if __name__ == "__main__":
    main()
