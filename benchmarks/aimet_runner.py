#!/usr/bin/env python
"""Quantize an ONNX model with Qualcomm AIMET (aimet-onnx) and write a QDQ ONNX model.

Usage:
    python aimet_runner.py MODEL.onnx CALIB.npz OUT.onnx \
        --mode {default,cle,cle+adaround} [--samples N] [--adaround-iters K]

CALIB.npz holds one array per model input (matched by name, or by position
when the names differ); the first axis indexes calibration samples.

Quantization: AIMET's defaults (config "default" = per-channel symmetric int8
weights for Conv/ConvTranspose/Gemm/MatMul/PRelu, asymmetric 8-bit
activations, min-max calibration, bias left in float).

Stdout carries exactly one JSON line: {"ok": true, "seconds": ..., "mode": ...}
or {"ok": false, "error": "..."}; AIMET's own logging goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # Only for annotations: the heavy imports stay inside the functions, and this
    # script runs in AIMET's own virtualenv, not in the project's.
    import numpy.typing as npt
    import onnx

    # One feed for the model: input name -> array.
    Feed = dict[str, npt.NDArray[Any]]

MODES = ("default", "cle", "cle+adaround")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("model", help="float ONNX model")
    p.add_argument("calib", help=".npz with one array per model input, first axis = samples")
    p.add_argument("out", help="output QDQ ONNX path")
    p.add_argument("--mode", choices=MODES, default="default")
    p.add_argument(
        "--samples",
        type=int,
        default=None,
        help="use only the first N calibration samples (default: all)",
    )
    p.add_argument(
        "--adaround-iters",
        type=int,
        default=1000,
        help="AdaRound optimisation steps per layer (AIMET's own default is 10000)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="samples per forward pass when the model's batch dim is dynamic (default 1)",
    )
    p.add_argument(
        "--float-weights",
        action="store_true",
        help="keep weights as float initializers followed by QuantizeLinear/DequantizeLinear "
        "(default: store int8 weights followed by DequantizeLinear)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for torch (AdaRound) and the ONNX Runtime sessions (default 1; "
        "0 = library defaults). Oversubscribed torch threads slow AdaRound down badly "
        "on a busy 2-core machine",
    )
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[int]:
    """Send everything written to fd 1 (Python and native code) to stderr."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    old = sys.stdout
    sys.stdout = sys.stderr
    try:
        yield saved
    finally:
        sys.stdout.flush()
        sys.stdout = old
        os.dup2(saved, 1)
        os.close(saved)


_NP_OF_ONNX = {
    1: "float32",
    10: "float16",
    11: "float64",
    2: "uint8",
    3: "int8",
    5: "int16",
    6: "int32",
    7: "int64",
    9: "bool",
}


def model_inputs(model: onnx.ModelProto) -> list[tuple[str, int, int | None, int | None]]:
    """[(name, onnx elem type, first-dim value or None, rank)] of real graph inputs."""
    inits = {i.name for i in model.graph.initializer}
    res: list[tuple[str, int, int | None, int | None]] = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = list(tt.shape.dim) if tt.HasField("shape") else []
        first = dims[0].dim_value if dims and dims[0].HasField("dim_value") else None
        res.append((vi.name, tt.elem_type, first, len(dims) if tt.HasField("shape") else None))
    return res


def build_inputs(
    model: onnx.ModelProto, calib_path: str, samples: int | None, batch_size: int
) -> tuple[list[Feed], int]:
    import numpy as np

    ins = model_inputs(model)
    npz = np.load(calib_path)
    keys = list(npz.files)
    names = [n for n, *_ in ins]
    if set(names) <= set(keys):
        arrays: dict[str, npt.NDArray[Any]] = {n: npz[n] for n in names}
    elif len(keys) == len(names):
        arrays = {n: npz[k] for n, k in zip(names, keys, strict=True)}  # positional fallback
    else:
        raise ValueError(f"calibration arrays {keys} do not match model inputs {names}")

    counts = {n: a.shape[0] for n, a in arrays.items()}
    n_total = min(counts.values())
    if len(set(counts.values())) != 1:
        print(
            f"warning: calibration arrays have different sample counts {counts}; using {n_total}",
            file=sys.stderr,
        )
    if samples is not None:
        n_total = min(n_total, samples)
    if n_total <= 0:
        raise ValueError("no calibration samples")

    # Decide how one "sample" maps to a model feed.
    per_input: dict[str, str] = {}
    chunk: int | None = None
    for name, elem, first, rank in ins:
        a = arrays[name]
        dtype = _NP_OF_ONNX.get(elem)
        if dtype is not None and a.dtype != dtype:
            a = a.astype(dtype)
        arrays[name] = a
        if rank is not None and a.ndim == rank + 1:
            per_input[name] = "index"  # each sample already carries the batch dim
        else:
            per_input[name] = "slice"  # sample = one row of the batch
            if first is not None and first > 0:
                chunk = first if chunk is None else chunk
    if chunk is None:
        chunk = max(1, batch_size)

    feeds: list[Feed] = []
    if all(v == "index" for v in per_input.values()):
        for i in range(n_total):
            feeds.append({n: arrays[n][i] for n in names})
    else:
        usable = (n_total // chunk) * chunk
        if usable == 0:
            raise ValueError(f"model has fixed batch {chunk} but only {n_total} samples were given")
        for s in range(0, usable, chunk):
            feeds.append(
                {
                    n: (
                        arrays[n][s // chunk]
                        if per_input[n] == "index"
                        else arrays[n][s : s + chunk]
                    )
                    for n in names
                }
            )
        n_total = usable
    return feeds, n_total


def name_unnamed_nodes(model: onnx.ModelProto) -> int:
    """Give every unnamed node a unique name.

    aimet-onnx 2.42's BatchNorm folding and cross-layer equalization silently
    do nothing on unnamed nodes (QuantizationSimModel names them itself, but
    only later).
    """
    used = {n.name for n in model.graph.node if n.name}
    count = 0
    for i, node in enumerate(model.graph.node):
        if node.name:
            continue
        base = f"{node.op_type}_{i}"
        name, k = base, 0
        while name in used:
            k += 1
            name = f"{base}_{k}"
        node.name = name
        used.add(name)
        count += 1
    return count


def add_default_conv_groups(model: onnx.ModelProto) -> int:
    """Write ONNX's default group=1 explicitly on Conv/ConvTranspose nodes that omit it.

    aimet-onnx 2.42 reads `group` straight from the node attributes; when it is
    absent it gets None and cross-layer scaling silently skips the layer
    ("Layer ... is not supported. Ignoring for cls"). Semantics are unchanged.
    """
    from onnx import helper

    count = 0
    for node in model.graph.node:
        if (
            node.op_type in ("Conv", "ConvTranspose")
            and node.domain in ("", "ai.onnx")
            and not any(a.name == "group" for a in node.attribute)
        ):
            node.attribute.append(helper.make_attribute("group", 1))
            count += 1
    return count


def save_model(model: onnx.ModelProto, path: str) -> None:
    import onnx

    try:
        small = model.ByteSize() < 1_800_000_000
    except Exception:  # protobuf refuses > 2 GiB
        small = False
    if small:
        onnx.save(model, path)
    else:
        onnx.save(
            model,
            path,
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=Path(path).name + ".data",
        )


def run(args: argparse.Namespace) -> tuple[int, float]:
    import numpy as np
    import onnx
    import onnxruntime as ort

    np.random.seed(args.seed)
    import torch

    torch.manual_seed(args.seed)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    ort_opts: dict[str, int] = {"intra_op_num_threads": args.threads} if args.threads > 0 else {}

    from aimet_onnx import apply_adaround
    from aimet_onnx.batch_norm_fold import fold_all_batch_norms_to_weight
    from aimet_onnx.cross_layer_equalization import equalize_model
    from aimet_onnx.quantsim import QuantizationSimModel

    t_start = time.perf_counter()
    model = onnx.load(args.model)
    feeds, n_used = build_inputs(model, args.calib, args.samples, args.batch_size)

    name_unnamed_nodes(model)
    add_default_conv_groups(model)
    if args.mode in ("cle", "cle+adaround"):
        equalize_model(model)  # folds BN, replaces ReLU6 with ReLU, CLS + high-bias fold, in place
    elif any(n.op_type == "BatchNormalization" for n in model.graph.node):
        fold_all_batch_norms_to_weight(model)  # AIMET recommends this before building a sim

    with tempfile.TemporaryDirectory(prefix="aimet_sim_") as tmp:
        sim = QuantizationSimModel(
            model,
            param_type="int8",
            activation_type="int8",
            quant_scheme="min_max",
            config_file="default",
            path=tmp,
            session_options_kwargs=ort_opts,
        )
        if args.mode == "cle+adaround":
            apply_adaround(sim, feeds, num_iterations=args.adaround_iters)
        sim.compute_encodings(feeds)
        qdq = sim.to_onnx_qdq(prequantize_constants=not args.float_weights)

    Path(args.out).resolve().parent.mkdir(parents=True, exist_ok=True)
    save_model(qdq, args.out)

    # Check that ONNX Runtime (CPU) can load and run the result.
    so = ort.SessionOptions()
    if args.threads > 0:
        so.intra_op_num_threads = args.threads
    sess = ort.InferenceSession(args.out, so, providers=["CPUExecutionProvider"])
    sess.run(None, feeds[0])
    return n_used, time.perf_counter() - t_start


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    res: dict[str, Any]
    try:
        with stdout_to_stderr():
            n_used, q_secs = run(args)
        res = {
            "ok": True,
            "seconds": round(time.perf_counter() - t0, 3),
            "mode": args.mode,
            "quant_seconds": round(q_secs, 3),
            "samples": n_used,
            "out": args.out,
        }
        if args.mode == "cle+adaround":
            res["adaround_iters"] = args.adaround_iters
        rc = 0
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt):
            raise
        traceback.print_exc(file=sys.stderr)
        msg = f"{type(e).__name__}: {e}".strip().splitlines()
        res = {"ok": False, "error": msg[0][:2000] if msg else type(e).__name__, "mode": args.mode}
        rc = 1
    print(json.dumps(res), flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
