"""How much each benchmark CNN amplifies a perturbation the size of 8-bit rounding,
with random weights (BatchNorm statistics from real images) and after the proxy
training of pretrain.py: the cosine between the float model's outputs on held-out
images with and without uniform noise of ±½ of an 8-bit step (of the input's range)
on the input. A model far below 1 here cannot keep its outputs through any 8-bit
quantization; it is why the benchmarks train their models first.

    python benchmarks/model_conditioning.py [--models resnet18,mobilenetv2,detector640]

Results: benchmarks/results/model_conditioning.{json,md}.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from common import WORK, machine, md_table, parser, prepare, write_results


def noise_cosine(model: Path, x: Any, seed: int = 0) -> float:
    """Cosine over all held-out samples between outputs on ``x`` and on ``x`` plus
    uniform noise of ±½ of (range of x) / 255."""
    import onnx

    from quantship.calibration.runner import ort_session

    s = ort_session(onnx.load(str(model)))
    name = s.get_inputs()[0].name
    step = float(x.max() - x.min()) / 255
    noise = np.random.default_rng(seed).uniform(-step / 2, step / 2, x.shape).astype(np.float32)
    dot = ref_sq = got_sq = 0.0
    for i in range(len(x)):
        ref = s.run(None, {name: x[i : i + 1]})
        got = s.run(None, {name: x[i : i + 1] + noise[i : i + 1]})
        for r, g in zip(ref, got, strict=True):
            r64, g64 = r.ravel().astype(np.float64), g.ravel().astype(np.float64)
            dot += float(r64 @ g64)
            ref_sq += float(r64 @ r64)
            got_sq += float(g64 @ g64)
    return dot / float(np.sqrt(ref_sq * got_sq))


def main() -> int:
    from quantship import examples

    args = parser(__doc__).parse_args()
    rows, results = [], []
    for name in args.models.split(","):
        paths = prepare(name, args.samples, args.held)
        with np.load(paths["held"]) as z:
            x = z[z.files[0]]
        size = examples.MODELS[name][1]
        random_model = WORK / f"{name}-random.onnx"
        if not random_model.exists():
            bn_images = examples.sample_images(64 if size <= 256 else 32, size, seed=1)
            examples.to_onnx(examples.build(name, bn_images), size, str(random_model))
        r = {
            "model": name,
            "random_weights": noise_cosine(random_model, x),
            "trained": noise_cosine(paths["model"], x),
        }
        results.append(r)
        rows.append([name, f"{r['random_weights']:.5f}", f"{r['trained']:.5f}"])
        print(rows[-1], flush=True)
    md = (
        "# Model conditioning: float outputs under 8-bit-sized input noise\n\n"
        f"Command: `python benchmarks/model_conditioning.py --models {args.models}`\n\n"
        f"Machine: {machine()}. Cosine between the float model's outputs on {args.held} held-out "
        "images with and without uniform input noise of ±½ of an 8-bit step.\n\n"
        + md_table(["model", "random weights (BN from images)", "trained (pretrain.py)"], rows)
    )
    write_results("model_conditioning", {"machine": machine(), "results": results}, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
